"""Running new cases through the model: training's evaluation dataset and test-time views, then per case the
output its inputs allow (:func:`predict`)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.info import META_INPUT
from skinlesion.errors import ConfigError, DataError
from skinlesion.predict.cases import (Cases, cases_from_csv, cases_from_images, cases_from_root, check_images,
                                      collect_images, encode_metadata, note_repeated_ids)
from skinlesion.predict.model import Predictor, load_predictor

log = logging.getLogger("skinlesion.predict")


def _evaluation_dataset(pred: Predictor, cases: Cases, meta: np.ndarray, cache_dir: str | None):
    """The cases as training's evaluation dataset (:class:`skinlesion.data.datamodule.CaseDataset`, no augmentation):
    one resize path for training, evaluation and prediction. Where the run evaluated pre-resized cache copies, the
    new images get theirs the same way (:class:`skinlesion.data.images.ImageCache`, under ``cache_dir``). An absent
    image (None) is a blank stand-in that the branches reading it ignore."""
    from skinlesion.data.datamodule import CaseDataset
    from skinlesion.data.images import ImageCache

    keys = pred.image_keys
    cached = None
    if pred.payload.get("pre_resize") and keys and cache_dir is not None:
        given = [p for k in keys for p in cases.table.images[k] if p is not None]
        cached = ImageCache(cache_dir, int(pred.payload["pre_resize"])).build(given, progress=False)
    return CaseDataset(cases.table, np.arange(len(cases.ids)), keys, meta, int(pred.payload["image_size"]), False,
                       {}, cached)


def _autocast(precision, device: str):
    """The run's mixed precision on a GPU (bf16-mixed, 16-mixed); float32 otherwise."""
    import contextlib

    import torch

    precision = str(precision or "")
    if device.startswith("cuda") and precision.startswith("bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.startswith("cuda") and precision.startswith("16"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _branch_outputs(pred: Predictor, data, device: str, batch_size: int, tta,
                    workers: int = 0, absent: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Per branch and task, the TTA-averaged probabilities and logits of every case (module.tta_outputs). ``absent``:
    per input, the cases without it; the network sees those inputs as training's input dropout showed them."""
    import torch
    from torch.utils.data import DataLoader

    from skinlesion.data.transforms import tta_views

    module = pred.module
    module.eval_views = tta_views(tta) if tta is not None else tuple(pred.payload["tta"])
    precision = (pred.payload["config"].get("trainer") or {}).get("precision")
    probs: dict = {}
    logits: dict = {}
    with torch.inference_mode(), _autocast(precision, device):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.startswith("cuda"))
        for batch in loader:
            batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
            batch = module.on_after_batch_transfer(batch, 0)
            if absent:
                rows = batch["index"].cpu().numpy()
                batch = module.blank_absent(batch, {x: torch.as_tensor(m[rows], device=device)
                                                    for x, m in absent.items()})
            p, z, _ = module.tta_outputs(batch)
            for acc, part in ((probs, p), (logits, z)):
                for b, per_task in part.items():
                    for t, v in per_task.items():
                        acc.setdefault(b, {}).setdefault(t, []).append(v.float().cpu())
    cat = lambda d: {b: {t: torch.cat(v) for t, v in per_task.items()} for b, per_task in d.items()}  # noqa: E731
    return cat(probs), cat(logits)


def predict(checkpoint: str | Path | Predictor, images: Sequence[str | Path] = (), metadata: str | Path | None = None,
            root: str | Path | None = None, split: str | None = None, tta: str | None = None,
            device: str | None = None, batch_size: int = 32, which: str = "best",
            skip_unusable: bool = False, num_workers: int = 0, cases: Cases | None = None) -> pd.DataFrame:
    """One row per case: ``case_id``, ``inputs`` (what the row was predicted from), ``prob/<output>/<task>/<class>``
    for every branch of the network (empty where the branch needs an input the case lacks) and for the run's
    reported output (the searched weighting of chapter-5/6 runs), with the saved predictions' names and class
    order; ``missing`` and ``notes`` explain. Cases come from ``root`` (a directory in the dataset's official
    layout; ``split``: one official split of it) or from ``images`` and ``metadata``. ``which`` picks the run's
    checkpoint (best, last, swa or a file), ``tta`` overrides its test-time views; ``skip_unusable`` leaves out
    cases that no output can predict instead of stopping (their number is ``frame.attrs["skipped"]``)."""
    import torch

    from skinlesion.fusionm4net.predict import is_fusionm4net_run

    if not isinstance(checkpoint, Predictor) and is_fusionm4net_run(checkpoint):
        if root is None or images or metadata is not None:
            raise ConfigError(f"{checkpoint}: a FusionM4Net run predicts the cases of a derm7pt folder: pass --root")
        from skinlesion.fusionm4net.predict import predict as predict_fusionm4net
        return predict_fusionm4net(checkpoint, root, split, tta=tta, device=device, batch_size=batch_size,
                                   skip_unusable=skip_unusable, num_workers=num_workers)
    if int(batch_size) < 1 or int(num_workers) < 0:
        raise ConfigError(f"batch_size={batch_size}, num_workers={num_workers}: expected batch_size >= 1 and "
                          "num_workers >= 0")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if root is not None and (images or metadata is not None):
        raise ConfigError("--root reads the cases from a directory in the official layout; leave out --images and "
                          "--metadata")
    if split is not None and root is None:
        raise ConfigError("--split selects an official split of --root; pass --root")
    files = collect_images(images)   # a bad path fails before the model is loaded
    pred = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device, which)
    pred.module.to(device)
    for note in pred.notes:
        log.warning("%s", note)
    if cases is None:   # else already read by the caller (FusionM4Net's stage 2 needs their metadata too)
        cases = _read_cases(pred, root, split, metadata, files)
    frame, _ = predict_cases(pred, cases, device, batch_size, tta, num_workers, skip_unusable)
    return frame


def _read_cases(pred: Predictor, root: str | Path | None, split: str | None, metadata: str | Path | None,
                files: list[tuple[Path, str, bool]]) -> Cases:
    if root is not None:
        cases = cases_from_root(pred, root, split)
    elif metadata is not None:
        cases = cases_from_csv(pred, Path(metadata), files)
    elif not pred.payload["image_keys"]:
        raise ConfigError("the model reads metadata only: pass --root or --metadata with the dataset's CSV")
    else:
        cases = cases_from_images(pred, files)
    repeated = note_repeated_ids(cases)
    if repeated:
        log.warning("%s: %d case id(s) are listed more than once; each row is predicted (the notes column names "
                    "the other lines)", cases.source, repeated)
    return cases


def predict_cases(pred: Predictor, cases: Cases, device: str = "cpu", batch_size: int = 32, tta: str | None = None,
                  num_workers: int = 0, skip_unusable: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """:func:`predict` on cases already read: the frame and, per task, the reported output's probabilities of
    every row (also where the reported branch could not answer and the row fell back to the others)."""
    import tempfile

    meta = encode_metadata(pred, cases)
    plan = _plan(pred, cases, skip_unusable)
    keep = [i for i, usable in enumerate(plan) if usable != []]
    skipped = len(plan) - len(keep)
    if skipped:
        cases, meta, plan = cases.subset(keep), meta[keep], [plan[i] for i in keep]
    check_images(pred, cases)
    with tempfile.TemporaryDirectory(prefix="skinlesion-predict-") as tmp:   # the new images' cache copies
        data = _evaluation_dataset(pred, cases, meta, tmp)
        absent = {x: np.array([x in m for m in cases.missing]) for x in pred.reads}
        probs, logits = _branch_outputs(pred, data, device, batch_size, tta, num_workers,
                                        {x: m for x, m in absent.items() if m.any()})
    frame, reported = _frame(pred, cases, plan, probs, logits)
    frame.attrs["skipped"] = skipped
    return frame, reported


def answering_branches(pred: Predictor, missing: set[str]) -> list[str]:
    """The branches that can answer without the ``missing`` inputs."""
    tolerated = set(pred.payload.get("input_dropout") or {})
    return [b for b, need in pred.branch_inputs.items() if not (set(need) & missing) - tolerated and set(need) - missing]


def _plan(pred: Predictor, cases: Cases, skip_unusable: bool = False) -> list[list[str] | None]:
    """Per case, the branches to combine (None: all inputs present, the reported output; []: none can predict it,
    kept only with ``skip_unusable``); fails for a case that no branch can predict. A branch can answer when it reads
    none of the missing inputs or, for an input the run was trained to do without (``model.input_dropout``), when
    it still has another input."""
    inputs = pred.branch_inputs
    for m in cases.missing:   # an input no branch reads is not missing for this model
        for key in [k for k in m if k not in pred.reads]:
            del m[key]
    plan: list[list[str] | None] = [answering_branches(pred, set(m)) if m else None for m in cases.missing]
    bad = [i for i, u in enumerate(plan) if u == []]
    if bad and not skip_unusable:
        i = bad[0]
        where = cases.where(i)
        what = "; ".join(f"{k}: {why}" for k, why in cases.missing[i].items())
        fields = (f" (metadata fields {pred.vectorizer.field_names})"
                  if META_INPUT in cases.missing[i] and pred.vectorizer is not None else "")
        needs = "; ".join(f"{b} needs {'+'.join(need)}" for b, need in inputs.items())
        raise DataError(f"{where}: missing input ({what}); no output of this model can do without it ({needs})"
                        f"{fields}; {len(bad)} case(s) affected (--skip-unusable leaves them out)")
    return plan


def _frame(pred: Predictor, cases: Cases, plan, probs: dict, logits: dict
           ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    from skinlesion.evaluation.search import fuse

    module, tasks = pred.module, pred.payload["tasks"]
    inputs_of = pred.branch_inputs
    branches = list(inputs_of)
    n = len(cases.ids)
    reported = {t: np.zeros((n, len(cls))) for t, cls in tasks.items()}
    used: list[str] = [""] * n
    groups: dict[tuple | None, list[int]] = {}
    for i, usable in enumerate(plan):
        groups.setdefault(None if usable is None else tuple(usable), []).append(i)
    for usable, rows in groups.items():
        p = {b: {t: v[rows] for t, v in per_task.items()} for b, per_task in probs.items()}
        z = {b: {t: v[rows] for t, v in per_task.items()} for b, per_task in logits.items()}
        if usable is None and pred.weights:   # the searched weighting of the run, with its saved weights
            combined = fuse([p[b] for b in pred.weights], list(pred.weights.values()))
        elif usable is None:
            combined = module.combined_probs(p, z, pred.output)
        elif pred.output in usable:   # the reported branch still answers (trained with input dropout)
            combined = p[pred.output]
        else:   # what the usable branches say: their mean, as the 'all' output
            combined = module.combined_probs({b: p[b] for b in usable}, {b: z[b] for b in usable}, "all")
        for t in tasks:
            reported[t][rows] = np.asarray(combined[t], dtype=np.float64)
        read = {x for b in (usable or branches) for x in inputs_of[b]}
        for i in rows:   # a branch trained to do without an input answers without it (model.input_dropout)
            used[i] = "+".join(sorted(read - set(cases.missing[i])))
    cols: dict = {"case_id": cases.ids, "inputs": used}
    for b in branches:
        ok = np.array([u is None or b in u for u in plan], dtype=bool)
        for t, cls in tasks.items():
            v = probs[b][t].double().numpy() if n else np.zeros((0, len(cls)))
            for j, c in enumerate(cls):
                cols[f"prob/{b}/{t}/{c}"] = np.where(ok, v[:, j], np.nan)
    if pred.output not in branches:
        for t, cls in tasks.items():
            for j, c in enumerate(cls):
                cols[f"prob/{pred.output}/{t}/{c}"] = reported[t][:, j]
    for t, cls in tasks.items():   # the reported output's class (its arg-max), by the dataset's class code
        cols[f"pred/{t}"] = [cls[j] for j in reported[t].argmax(axis=1)] if n else []
    cols["missing"] = ["; ".join(f"{k} ({why})" for k, why in m.items()) for m in cases.missing]
    cols["notes"] = ["; ".join(x) for x in cases.notes]
    return pd.DataFrame(cols), reported
