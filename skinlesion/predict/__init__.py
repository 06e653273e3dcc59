"""Predict new cases with a trained run: ``python predict.py RUN_DIR --root DIR [--split NAME] [--out FILE]``.

Every checkpoint written during training carries an *inference payload* (:func:`inference_payload`, saved by
``MultiTaskModule.on_save_checkpoint``): the resolved config, tasks and classes, the image keys the network reads,
image size, normalisation, test-time views, the fitted metadata vectorizer and the inputs each branch needs. A
prediction therefore needs the run directory (or a checkpoint) and the new files only; nothing is refitted, and the
training data may be gone.

Input convention (one case = one row of the output):

* ``--root DIR``: every case of a directory in the official layout of the run's dataset (PAD-UFES-20
  ``metadata.csv`` + ``images/``; ISIC-2019 ``ISIC_2019_Training_Metadata.csv`` + ``ISIC_2019_Training_Input/``;
  derm7pt ``meta/meta.csv`` + ``images/``); label columns and index files are optional. ``--split`` keeps one
  official split (derm7pt's index files; for PAD-UFES-20 and ISIC-2019 the run's own partition in its folds.csv).
  Without a metadata file, PAD-UFES-20 and ISIC-2019 give one case per image file.
* or ``--metadata CSV`` with the dataset's official columns and ``--images`` files or directories: images are
  matched to rows by the dataset's image-id column (PAD-UFES-20 ``img_id``, ISIC-2019 ``image``, derm7pt ``derm``
  and ``clinic``); every image named on the command line must match a row; without ``--metadata``, one case per
  image (one-image models). Case ids: ``img_id``, ``image``, derm7pt ``case_num``.

The output has ``case_id``, ``inputs`` (what the row was predicted from, e.g. ``clinic+meta``), the
``prob/<output>/<task>/<class>`` columns of every branch of the network and of the run's reported output (for
chapter-5/6 runs the searched weighting, with the run's saved weights), named and ordered as the run's
``predictions/*.parquet``, then ``pred/<task>`` (the reported output's class code), ``missing`` and ``notes``; one
row per case, in the order of the metadata file (or of the image files).

A case that lacks an input (a metadata column absent, or in a row an empty field the training split never left
empty; an image not there) is predicted from the branches that do not need it (the reported column is then the mean
of their probabilities, as the ``all`` output is; the other branches' columns are empty), and ``inputs`` and
``missing`` say so; a case no branch can predict stops the run with one line naming the file, row and field, or is
left out with ``--skip-unusable`` (counted). Empty fields that were also empty in training rows are encoded as in
training (that is what the model learned). A category outside the fitted vocabulary is encoded as an all-zero block,
as during training, with a warning and a ``notes`` entry.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.data.info import META_INPUT
from skinlesion.errors import ConfigError, DataError, SkinLesionError
from skinlesion.payload import PAYLOAD_KEY, PAYLOAD_VERSION, inference_payload  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# The dataset's own column naming each image of a case, and the case id column.
IMAGE_ID_COLUMNS = {"pad_ufes": {"clinic": "img_id"}, "isic2019": {"derm": "image"},
                    "derm7pt": {"derm": "derm", "clinic": "clinic"}}
CASE_ID_COLUMNS = {"pad_ufes": "img_id", "isic2019": "image", "derm7pt": "case_num"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class Predictor:
    """A trained model ready for new cases: the module (eval mode), its payload and what the run reported."""
    module: object
    payload: dict
    checkpoint: Path
    vectorizer: object | None
    output: str                                  # the reported output: a branch, all, all_logits or searched
    weights: dict[str, float] | None = None      # searched branch weights (output == "searched")
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None                  # the run the checkpoint belongs to (its folds.csv, metrics.json)

    @property
    def dataset(self) -> str:
        return self.payload["dataset"]

    @property
    def branch_inputs(self) -> dict[str, list[str]]:
        return self.payload["branch_inputs"]

    @property
    def reads(self) -> set[str]:
        """The inputs some branch of the network reads: only these can be missing."""
        return {x for need in self.branch_inputs.values() for x in need}


def _resolve_checkpoint(path: Path, which: str = "best") -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None). A directory is a run: its ``which`` checkpoint (``best``: the
    one its evaluation used, ``last``, ``swa``, or a file)."""
    from skinlesion.checkpoints import resolve

    if path.is_dir():
        if not (path / "checkpoints").is_dir():
            raise ConfigError(f"{path}: not a run directory (no checkpoints/) and not a checkpoint file")
        return resolve(path, which), path
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r}: no such file or run directory")
    run_dir = path.parent.parent
    return path, run_dir if path.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file() else None


def _searched_weights(run_dir: Path | None, ckpt: Path) -> dict[str, float] | None:
    """The run's searched branch weights when it reports them and they were found for this checkpoint."""
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluated = metrics.get("evaluated_checkpoint") or metrics.get("best_checkpoint")
    if metrics.get("reported") != "searched" or not evaluated or Path(evaluated).name != ckpt.name:
        return None
    return {str(b): float(w) for b, w in metrics["search"]["weights"].items()}


def load_predictor(checkpoint: str | Path, device: str = "cpu", which: str = "best") -> Predictor:
    """Rebuild the trained module from a checkpoint file or a run directory (its ``which`` checkpoint)."""
    import torch
    from omegaconf import OmegaConf

    import skinlesion.config  # noqa: F401  (resolvers, in case the saved config still names one)
    from skinlesion.data.info import DataInfo
    from skinlesion.data.metadata import MetadataVectorizer
    from skinlesion.build import build_module
    from skinlesion.data.tasks import Task

    ckpt, run_dir = _resolve_checkpoint(Path(checkpoint), which)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, truncated, or pickled objects beyond plain values
        raise ConfigError(f"{ckpt}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    payload = state.get(PAYLOAD_KEY)
    if payload is None:
        payload = _payload_from_run(ckpt, run_dir)
    if payload.get("version") != PAYLOAD_VERSION:
        raise ConfigError(f"{ckpt}: inference payload version {payload.get('version')!r}; this version reads "
                          f"{PAYLOAD_VERSION}")
    cfg = OmegaConf.create(payload["config"])
    tasks = tuple(Task(name, tuple(classes)) for name, classes in payload["tasks"].items())
    info = DataInfo(payload["dataset"], tasks, tuple(payload["dataset_image_keys"]), int(payload["meta_dim"]))
    vec = None if payload["metadata"] is None else MetadataVectorizer.from_state(payload["metadata"])
    # build_module reads these from a DataModule; this stand-in carries them (and the payload itself)
    data = SimpleNamespace(info=info, normalize=payload["normalize"], table=SimpleNamespace(case_ids=None),
                           class_counts=lambda: [np.ones(t.num_classes) for t in tasks], vectorizer=vec,
                           inference_payload=payload)
    module = build_module(cfg, data, pretrained=False)   # the checkpoint has the weights
    module.load_state_dict(state["state_dict"])
    module = module.to(device).eval()
    weights = _searched_weights(run_dir, ckpt)
    notes = []
    if weights is None and payload.get("search") and run_dir is None:
        notes.append(f"the run reports a searched weighting of its branches, which lives in its metrics.json, not "
                     f"in the checkpoint; predicting its '{payload['report']}' output (pass the run directory to "
                     f"use the searched weights)")
    elif weights is None and payload.get("search") and (run_dir / "metrics.json").is_file():
        evaluated = json.loads((run_dir / "metrics.json").read_text()).get("evaluated_checkpoint") or "?"
        notes.append(f"the run's searched branch weights were found for {Path(evaluated).name}, not for "
                     f"{ckpt.name}: they do not carry over to other weights, so this predicts {ckpt.name}'s "
                     f"'{payload['report']}' output (--checkpoint best gives the searched output)")
    return Predictor(module, payload, ckpt, vec, "searched" if weights else payload["report"], weights, notes,
                     run_dir)


def _payload_from_run(ckpt: Path, run_dir: Path | None) -> dict:
    """A checkpoint written before checkpoints carried the payload: rebuilt from its run (config + dataset)."""
    if run_dir is None:
        raise ConfigError(f"{ckpt}: the checkpoint carries no inference payload (written by an older version); pass "
                          "the run directory it belongs to, with its dataset reachable, to rebuild it")
    from omegaconf import OmegaConf

    from skinlesion.build import build_module, prepare_data

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return build_module(cfg, prepare_data(cfg), pretrained=False).inference_payload


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class _Cases:
    ids: list[str]
    lines: list[int | None]                      # CSV line of each case (None: one case per image)
    images: dict[str, list[Path | None]]         # per image key, the file of each case (None: not given)
    frame: pd.DataFrame | None                   # the metadata rows (CSV columns)
    source: str                                  # for error messages: the CSV, or "--images"
    missing: list[dict[str, str]]                # per case, input -> why it is missing
    notes: list[list[str]]


def _collect_images(images: Sequence[str | Path], allow_empty: bool = False) -> list[tuple[Path, str, bool]]:
    """(file, key relative to the given directory or its name, named explicitly) for every given file and image
    under a given directory."""
    found: list[tuple[Path, str, bool]] = []
    for arg in images:
        p = Path(arg).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files and not allow_empty:
                raise DataError(f"--images {arg}: the directory holds no image files ({sorted(IMAGE_SUFFIXES)})")
            found += [(f, f.relative_to(p).as_posix(), False) for f in files]
        elif p.is_file():
            found.append((p, p.name, True))
        else:
            raise DataError(f"--images {arg}: no such file or directory")
    unique: dict[Path, tuple[Path, str, bool]] = {}
    for f, rel, named in found:   # a file given twice (itself and through its directory) counts once
        first = unique.setdefault(f.resolve(), (f, rel, named))
        if named and not first[2]:
            unique[f.resolve()] = (first[0], first[1], True)
    return list(unique.values())


def _case_id_of_file(dataset: str, rel: str) -> str:
    """What the dataset's id column holds for an image file (PAD: file name; ISIC: stem; derm7pt: relative path)."""
    if dataset == "isic2019":
        return Path(rel).stem
    return Path(rel).name if dataset == "pad_ufes" else rel


def _matcher(dataset: str, files: list[tuple[Path, str, bool]]):
    by_rel: dict[str, list[Path]] = {}
    by_name: dict[str, list[Path]] = {}
    for f, rel, _ in files:
        by_rel.setdefault(rel, []).append(f)
        by_name.setdefault(f.stem if dataset == "isic2019" else f.name, []).append(f)

    def match(value: str) -> list[Path]:
        value = value.strip().replace("\\", "/")
        if value in by_rel:
            return by_rel[value]
        return by_name.get(Path(value).stem if dataset == "isic2019" else Path(value).name, [])
    return match


def _cases_from_csv(pred: Predictor, csv: Path, files: list[tuple[Path, str, bool]], searched: str) -> _Cases:
    from skinlesion.data.metadata import _norm_value

    dataset, keys = pred.dataset, pred.payload["image_keys"]
    from skinlesion.data.table import read_csv

    df = read_csv(csv, [], "--metadata")
    id_cols = IMAGE_ID_COLUMNS[dataset]
    absent = [id_cols[k] for k in keys if id_cols[k] not in df.columns]
    if absent:
        raise DataError(f"{csv}, line 1 (header): no column {absent}; the {dataset} model reads image(s) {keys}, "
                        f"matched to rows by the dataset's column(s) {[id_cols[k] for k in keys]}")
    n = len(df)
    lines = [int(i) + 2 for i in range(n)]
    id_col = CASE_ID_COLUMNS[dataset]
    ids = ([str(_norm_value(v)) for v in df[id_col]] if id_col in df.columns
           else [f"line {line}" for line in lines])
    match = _matcher(dataset, files)
    images: dict[str, list[Path | None]] = {k: [None] * n for k in keys}
    missing: list[dict[str, str]] = [{} for _ in range(n)]
    used: set[Path] = set()
    for k in keys:
        col = id_cols[k]
        for r, v in enumerate(df[col].tolist()):
            value = _norm_value(v)
            if value is None:
                missing[r][k] = f"empty '{col}'"
                continue
            hits = sorted(set(match(value)))
            if len(hits) > 1:
                raise DataError(f"{csv}, line {lines[r]}, column '{col}': {value!r} matches several files "
                                f"{[str(h) for h in hits]}; give one of them")
            if not hits:
                missing[r][k] = f"{col} {value!r}: no such image file under {searched}"
                continue
            images[k][r] = hits[0]
            used.add(hits[0])
    # a file named on the command line must be predicted; other images in a given directory may be left over
    unmatched = [f for f, _, named in files if named and f not in used]
    if unmatched:
        raise DataError(f"--images {unmatched[0]}: matches no row of {csv} (column(s) "
                        f"{[id_cols[k] for k in keys]}; {len(unmatched)} named image(s) unmatched); every image "
                        "file given by name must be named by its case's row")
    return _Cases(ids, lines, images, df, str(csv), missing, [[] for _ in range(n)])


def _cases_from_images(pred: Predictor, files: list[tuple[Path, str, bool]]) -> _Cases:
    keys = pred.payload["image_keys"]
    if len(keys) != 1:
        id_cols = IMAGE_ID_COLUMNS[pred.dataset]
        raise ConfigError(f"the model reads {len(keys)} images per case ({keys}): pass --metadata with the "
                          f"{pred.dataset} CSV whose column(s) {[id_cols[k] for k in keys]} pair them")
    if not files:
        raise ConfigError("nothing to predict: pass --images (files or directories) and/or --metadata CSV")
    ids = [_case_id_of_file(pred.dataset, rel) for _, rel, _ in files]
    return _Cases(ids, [None] * len(files), {keys[0]: [f for f, _, _ in files]}, None, "--images",
                  [{} for _ in files], [[] for _ in files])


# Per dataset, the official layout: the metadata file (relative to the root) and the image folders searched.
def _layout(module) -> tuple[str, tuple[str, ...]]:
    return module.METADATA, ("{image_dir}",) if hasattr(module, "IMAGE_DIR") else ("images",)


ROOT_LAYOUT = {m.NAME: _layout(m) for m in (pad_ufes, isic2019, derm7pt)}   # the readers' own constants


def cases_from_root(pred: Predictor, root: str | Path, split: str | None = None) -> _Cases:
    """Every case of a directory in the run's dataset's official layout (label columns and index files optional),
    or those of the official split ``split``: derm7pt's index files in the directory, for PAD-UFES-20 and ISIC-2019
    the partition of that name in the run's folds.csv. A case keeps what it lacks in ``missing``."""
    dataset = pred.dataset
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"--root {root}: not a directory")
    meta_rel, folders = ROOT_LAYOUT[dataset]
    image_dir = (pred.payload["config"].get("data") or {}).get("image_dir") or "ISIC_2019_Training_Input"
    dirs = [root / f.format(image_dir=image_dir) for f in folders]
    files = [f for d in dirs if d.is_dir() for f in _collect_images([d], allow_empty=True)] \
        if pred.payload["image_keys"] else []
    csv = root / meta_rel
    if not csv.is_file():
        other = next((d for d, (rel, _) in ROOT_LAYOUT.items() if d != dataset and (root / rel).is_file()), None)
        if other is not None:
            raise DataError(f"--root {root} is a {other} folder ({ROOT_LAYOUT[other][0]}); the run's model was trained "
                            f"on {dataset}, whose folders hold {meta_rel}")
    if csv.is_file():
        cases = _cases_from_csv(pred, csv, files, " or ".join(str(d) for d in dirs))
    elif dataset == "derm7pt":
        raise DataError(f"{csv}: not found; derm7pt cases are defined by meta/meta.csv (it says which file is the "
                        "clinical and which the dermoscopic image of each case)")
    elif not pred.payload["image_keys"]:
        raise DataError(f"{csv}: not found; the model reads metadata only")
    else:
        if not files:
            raise DataError(f"--root {root}: neither {meta_rel} nor any image under {[str(d) for d in dirs]}")
        cases = _cases_from_images(pred, files)
        for m in cases.missing:
            if pred.vectorizer is not None:
                m[META_INPUT] = f"no {meta_rel}"
    return cases if split is None else _select_split(pred, cases, root, split)


def _select_split(pred: Predictor, cases: _Cases, root: Path, split: str) -> _Cases:
    if pred.dataset == "derm7pt":
        from skinlesion.data.derm7pt import INDEX_FILES, index_rows

        part = {"valid": "val", "validation": "val"}.get(split, split)
        if part not in INDEX_FILES:
            raise ConfigError(f"--split {split}: expected one of {sorted(INDEX_FILES)} (derm7pt's index files)")
        rows = index_rows(root, part)
        bad = rows[(rows < 0) | (rows >= len(cases.ids))]
        if bad.size:
            raise DataError(f"{root / 'meta' / INDEX_FILES[part]}: row {int(bad[0])} outside meta/meta.csv "
                            f"({len(cases.ids)} rows)")
        return _subset(cases, sorted(rows.tolist()))   # meta.csv order, as the saved predictions
    folds = None if pred.run_dir is None else pred.run_dir / "folds.csv"
    if folds is None or not folds.is_file():
        raise ConfigError(f"--split {split}: the {pred.dataset} partitions are the run's own (folds.csv); pass "
                          "the run directory rather than a checkpoint file")
    table = pd.read_csv(folds, dtype={"case_id": str})
    wanted = table.loc[table["partition"] == split, "case_id"].tolist()
    if not wanted:
        raise ConfigError(f"--split {split}: no such partition in {folds} (it has "
                          f"{sorted(table['partition'].unique())})")
    position = {c: i for i, c in enumerate(cases.ids)}
    absent = [c for c in wanted if c not in position]
    if absent:
        raise DataError(f"--split {split}: {len(absent)} case(s) of the run's {split} partition are not in "
                        f"{cases.source}, first: {absent[0]!r}")
    return _subset(cases, [position[c] for c in wanted])


def _subset(cases: _Cases, rows: list[int]) -> _Cases:
    return _Cases([cases.ids[i] for i in rows], [cases.lines[i] for i in rows],
                  {k: [v[i] for i in rows] for k, v in cases.images.items()},
                  None if cases.frame is None else cases.frame.iloc[rows], cases.source,   # index = CSV row
                  [cases.missing[i] for i in rows], [cases.notes[i] for i in rows])


def _encode_metadata(pred: Predictor, cases: _Cases) -> np.ndarray:
    """The metadata matrix of the cases, with what is missing recorded per case (meta -> which fields)."""
    from skinlesion.data.metadata import _norm_value

    vec = pred.vectorizer
    n = len(cases.ids)
    if vec is None:
        return np.zeros((n, 0), dtype=np.float32)
    if META_INPUT not in pred.reads:   # the dataset has metadata, the network reads none: nothing can be missing
        return np.zeros((n, vec.dim), dtype=np.float32)
    if cases.frame is None:
        for m in cases.missing:
            m[META_INPUT] = "no --metadata"
        return np.zeros((n, vec.dim), dtype=np.float32)
    df = cases.frame.copy()
    vec.source = cases.source   # errors name the user's CSV
    absent = [f for f in vec.field_names if f not in df.columns]
    empty_ok = vec.empty_in_fit or {}
    for r in range(n):
        row = df.iloc[r]
        empty = [f for f in vec.field_names if f not in absent and _norm_value(row[f]) is None
                 and not empty_ok.get(f)]
        if absent or empty:
            parts = ([f"no column {absent}"] if absent else []) + ([f"empty {empty}"] if empty else [])
            cases.missing[r][META_INPUT] = "; ".join(parts)
        for f in vec.fields:
            v = None if f.numeric or f.name in absent else _norm_value(row[f.name])
            if v is not None and v not in f.vocab:
                cases.notes[r].append(f"{f.name}={v!r} outside the training vocabulary: encoded as all zeros")
    for f in absent:
        df[f] = None   # encoded as empty; the branches that read the metadata are not used for these cases
    # an unseen category warns (UnseenCategoryWarning, naming the user's CSV) and encodes as zeros, as in training
    return vec.transform(df)


# ---------------------------------------------------------------------------------------------- running
def _evaluation_dataset(pred: Predictor, cases: _Cases, meta: np.ndarray, cache_dir: str | None):
    """The cases as training's evaluation dataset (:class:`skinlesion.data.datamodule.CaseDataset`, no augmentation):
    one resize path for training, evaluation and prediction. Where the run evaluated pre-resized cache copies, the
    new images get theirs the same way (:class:`skinlesion.data.images.ImageCache`, under ``cache_dir``)."""
    from skinlesion.data.datamodule import CaseDataset
    from skinlesion.data.images import ImageCache
    from skinlesion.data.table import CaseTable
    from skinlesion.data.tasks import Task

    n = len(cases.ids)
    tasks = tuple(Task(name, tuple(classes)) for name, classes in pred.payload["tasks"].items())
    frame = cases.frame if cases.frame is not None else pd.DataFrame(index=pd.RangeIndex(n))
    table = CaseTable(pred.dataset, Path(cases.source), frame, np.asarray(cases.ids, dtype=str), tasks,
                      np.zeros((n, len(tasks)), dtype=np.int64), dict(cases.images))
    keys = tuple(cases.images)
    cached = None
    if pred.payload.get("pre_resize") and keys and cache_dir is not None:
        given = [p for k in keys for p in cases.images[k] if p is not None]
        cached = ImageCache(cache_dir, int(pred.payload["pre_resize"])).build(given, progress=False)
    return CaseDataset(table, np.arange(n), keys, meta, int(pred.payload["image_size"]), False, {}, cached)


def _check_images(cases: _Cases) -> None:
    """Every given image must open (header and end checked), before any is run through the model."""
    from skinlesion.data.images import check_images

    for k, paths in cases.images.items():
        given = [(i, p) for i, p in enumerate(paths) if p is not None]
        for (i, p), problem in zip(given, check_images([p for _, p in given], progress=False)):
            if problem is not None:
                where = f"case {cases.ids[i]}" + (f", {Path(cases.source).name} line {cases.lines[i]}"
                                                  if cases.lines[i] else "")
                raise DataError(f"{p}: cannot read the {k} image ({where}): {problem}")


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
                    workers: int = 0) -> tuple[dict, dict]:
    """Per branch and task, the TTA-averaged probabilities and logits of every case (module.tta_outputs)."""
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
            skip_unusable: bool = False, num_workers: int = 0, cases: _Cases | None = None) -> pd.DataFrame:
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
    files = _collect_images(images)   # a bad path fails before the model is loaded
    pred = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device, which)
    pred.module.to(device)
    for note in pred.notes:
        log.warning("%s", note)
    if cases is not None:   # already read by the caller (FusionM4Net's stage 2 needs their metadata too)
        pass
    elif root is not None:
        cases = cases_from_root(pred, root, split)
    elif metadata is not None:
        searched = " or ".join(map(str, images)) or "(no --images)"
        cases = _cases_from_csv(pred, Path(metadata), files, searched)
    elif not pred.payload["image_keys"]:
        raise ConfigError("the model reads metadata only: pass --root or --metadata with the dataset's CSV")
    else:
        cases = _cases_from_images(pred, files)
    meta = _encode_metadata(pred, cases)
    plan = _plan(pred, cases, skip_unusable)
    keep = [i for i, usable in enumerate(plan) if usable != []]
    skipped = len(plan) - len(keep)
    if skipped:
        cases, meta, plan = _subset(cases, keep), meta[keep], [plan[i] for i in keep]
    _check_images(cases)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="skinlesion-predict-") as tmp:   # the new images' cache copies
        data = _evaluation_dataset(pred, cases, meta, tmp)
        probs, logits = _branch_outputs(pred, data, device, batch_size, tta, num_workers)
    frame = _frame(pred, cases, plan, probs, logits)
    frame.attrs["skipped"] = skipped
    return frame


def _plan(pred: Predictor, cases: _Cases, skip_unusable: bool = False) -> list[list[str] | None]:
    """Per case, the branches to combine (None: all inputs present, the reported output; []: none can predict it,
    kept only with ``skip_unusable``); fails for a case that no branch can predict."""
    inputs = pred.branch_inputs
    for m in cases.missing:   # an input no branch reads is not missing for this model
        for key in [k for k in m if k not in pred.reads]:
            del m[key]

    def usable(miss: dict) -> list[str]:
        return [b for b, need in inputs.items() if not set(need) & set(miss)]

    plan: list[list[str] | None] = [usable(m) if m else None for m in cases.missing]
    bad = [i for i, u in enumerate(plan) if u == []]
    if bad and not skip_unusable:
        i = bad[0]
        where = (f"{cases.source}, line {cases.lines[i]} (case {cases.ids[i]})" if cases.lines[i]
                 else f"{cases.source} case {cases.ids[i]}")
        what = "; ".join(f"{k}: {why}" for k, why in cases.missing[i].items())
        fields = (f" (metadata fields {pred.vectorizer.field_names})"
                  if META_INPUT in cases.missing[i] and pred.vectorizer is not None else "")
        needs = "; ".join(f"{b} needs {'+'.join(need)}" for b, need in inputs.items())
        raise DataError(f"{where}: missing input ({what}); no output of this model can do without it ({needs})"
                        f"{fields}; {len(bad)} case(s) affected (--skip-unusable leaves them out)")
    return plan


def _frame(pred: Predictor, cases: _Cases, plan, probs: dict, logits: dict) -> pd.DataFrame:
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
        else:   # what the usable branches say: their mean, as the 'all' output
            combined = module.combined_probs({b: p[b] for b in usable}, {b: z[b] for b in usable}, "all")
        for t in tasks:
            reported[t][rows] = np.asarray(combined[t], dtype=np.float64)
        names = "+".join(sorted({x for b in (usable or branches) for x in inputs_of[b]}))
        for i in rows:
            used[i] = names
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
    return pd.DataFrame(cols)


# ---------------------------------------------------------------------------------------------- CLI
def check_out(out: str | Path | None) -> None:
    """``--out`` names a format this writes (checked before any work)."""
    if out is not None and Path(out).suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: expected a .csv or .parquet file name")


def write(frame: pd.DataFrame, out: str | Path | None) -> None:
    """``.csv`` or ``.parquet`` by suffix; None: CSV on standard output."""
    if out is None:
        frame.to_csv(sys.stdout, index=False)
        return
    from skinlesion.provenance import write_csv, write_parquet

    check_out(out)
    out = Path(out)
    (write_parquet if out.suffix == ".parquet" else write_csv)(out, frame)


def class_counts(frame: pd.DataFrame) -> list[str]:
    """One line per task: how many cases each class was predicted for (the ``pred/<task>`` columns)."""
    return [f"{c.removeprefix('pred/')}: " + ", ".join(f"{k} {v}" for k, v in frame[c].value_counts().items())
            for c in frame.columns if c.startswith("pred/")]


def _count(least: int):
    """An argparse type: a whole number >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
        return value
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python predict.py", description="Predict new cases with a trained run (or one of its checkpoints).",
        epilog="--root DIR: every case of DIR, a directory in the official layout of the run's dataset (PAD-UFES-20 "
               "metadata.csv + images/; ISIC-2019 ISIC_2019_Training_Metadata.csv + ISIC_2019_Training_Input/; "
               "derm7pt meta/meta.csv + images/); label columns and index files are optional. A case without an "
               "input (its image, or the metadata the model reads) is predicted from the outputs that do not need "
               "it; the 'inputs' column says what each row used.")
    ap.add_argument("run", help="a run directory, or a .ckpt written by training")
    ap.add_argument("--root", default=None, help="a directory in the dataset's official layout")
    ap.add_argument("--split", default=None,
                    help="only this official split of --root (derm7pt: train/valid/test index files; PAD-UFES-20 "
                         "and ISIC-2019: the run's own partitions, e.g. test or val)")
    ap.add_argument("--checkpoint", default="best", help="best (default: the one the run evaluated), last, swa, or a "
                                                         "checkpoint file")
    ap.add_argument("--out", default=None, help="FILE.csv or FILE.parquet (default: CSV on standard output)")
    ap.add_argument("--skip-unusable", action="store_true",
                    help="leave out cases that no output can predict (counted) instead of stopping")
    ap.add_argument("--images", nargs="*", default=[],
                    help="instead of --root: image files and/or directories (matched to --metadata rows by the "
                         "dataset's image-id column; without --metadata one case per image, one-image models)")
    ap.add_argument("--metadata", default=None, help="instead of --root: a CSV with the dataset's official columns")
    ap.add_argument("--tta", choices=("none", "flips", "six"), default=None,
                    help="test-time views (default: the run's own)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--batch-size", type=_count(1), default=32)
    ap.add_argument("--num-workers", type=_count(0), default=default_workers(),
                    help="image loading processes (default: one per core, at most 8)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        check_out(args.out)
        frame = predict(args.run, args.images, args.metadata, root=args.root, split=args.split, tta=args.tta,
                        device=args.device, batch_size=args.batch_size, which=args.checkpoint,
                        skip_unusable=args.skip_unusable, num_workers=args.num_workers)
        write(frame, args.out)
    except SkinLesionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fallback = int((frame["missing"] != "").sum())
    skipped = frame.attrs.get("skipped", 0)
    print(f"{len(frame)} case(s) -> {args.out or 'standard output'}"
          + (f"; {fallback} predicted with an input missing (see 'inputs' and 'missing')" if fallback else "")
          + (f"; {skipped} skipped: no output can predict them" if skipped else ""), file=sys.stderr)
    for line in class_counts(frame):
        print(f"predicted {line}", file=sys.stderr)
    return 0


def default_workers() -> int:
    import os

    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
