"""Simulated run artefacts — prediction frames, run directories and whole Hydra-like sweeps — in the
training side's schema, for tests, benchmarks and dry runs of the report (no images, no training).
Probabilities are random but informative: the true class gets a logit boost of ``signal``. Sweeps can also carry
the subgroup attributes (``subgroups.csv``) and the predictions with an input withheld (``robustness/``)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.tasks import DATASET_TASKS

from . import predictions as P
from .stats import NO_BACKBONE

DEFAULT_BRANCHES = {"image_only": ["image"], "jf": ["fusion"], "jif": ["image", "meta", "fusion"],
                    "two_image": ["derm", "clinic", "fusion"]}


def dataset_classes(dataset: str) -> dict[str, list[str]]:
    return {t.name: list(t.classes) for t in DATASET_TASKS[dataset]}


def random_logits(rng: np.random.Generator, y: np.ndarray, k: int, signal: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += signal
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_probs(rng: np.random.Generator, y: np.ndarray, k: int, signal: float) -> np.ndarray:
    return softmax(random_logits(rng, y, k, signal))


def make_predictions(classes: Mapping[str, Sequence[str]], n: int, branches: Sequence[str],
                     rng: np.random.Generator, signal: float | Mapping[str, float] = 1.5,
                     y: Mapping[str, np.ndarray] | None = None, prefix: str = "case",
                     logits: bool = False) -> pd.DataFrame:
    """A predictions frame; ``signal`` may differ per branch. With ``logits`` the ``logit/`` columns are saved too
    (the same random stream either way)."""
    if y is None:
        y = {t: rng.integers(0, len(c), size=n) for t, c in classes.items()}
    sig = signal if isinstance(signal, Mapping) else {b: signal for b in branches}
    z = {b: {t: random_logits(rng, np.asarray(y[t]), len(c), sig[b]) for t, c in classes.items()} for b in branches}
    probs = {b: {t: softmax(v) for t, v in per_task.items()} for b, per_task in z.items()}
    return P.to_frame([f"{prefix}{i:04d}" for i in range(n)], y, probs, {t: list(c) for t, c in classes.items()},
                      z if logits else None)


def write_run(run_dir: str | Path, info: Mapping, val: pd.DataFrame | None, test: pd.DataFrame | None = None,
              features: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``run.json`` and ``predictions/{val,test}.parquet`` (+ optional ``test_features.npz``)."""
    run_dir = Path(run_dir)
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(dict(info), indent=2))
    if val is not None:
        val.to_parquet(run_dir / "predictions" / "val.parquet", index=False)
    if test is not None:
        test.to_parquet(run_dir / "predictions" / "test.parquet", index=False)
    if features is not None:
        np.savez(run_dir / "predictions" / "test_features.npz", **features)
    return run_dir


# attribute -> (values, probabilities), in the saved (banded, normalised) form of skinlesion.evaluation.subgroups
SIMULATED_ATTRIBUTES = {
    "pad_ufes": {"fitzpatrick": (("1", "2", "3", "4", "5", "6", "unknown"), (.1, .3, .2, .04, .01, .01, .34)),
                 "age": (("<40", "40-59", "60-79", ">=80"), (.1, .35, .42, .13)),
                 "sex": (("female", "male", "unknown"), (.45, .4, .15)),
                 "region": (("face", "chest", "back", "arm", "forearm", "nose", "hand", "neck", "ear", "thigh",
                             "unknown"), (.2, .12, .12, .1, .1, .08, .07, .06, .05, .02, .08))},
    "isic2019": {"age": (("<40", "40-59", "60-79", ">=80", "unknown"), (.28, .34, .28, .08, .02)),
                 "sex": (("female", "male", "unknown"), (.46, .52, .02)),
                 "site": (("anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
                           "palms/soles", "posterior torso", "upper extremity", "unknown"),
                          (.27, .18, .01, .2, .005, .015, .12, .1, .1))},
    "derm7pt": {"sex": (("female", "male"), (.5, .5)),
                "location": (("back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral",
                              "buttocks", "genital areas"), (.3, .2, .1, .1, .1, .08, .06, .04, .02))},
}


def simulated_attributes(dataset: str, case_ids: Sequence[str], rng: np.random.Generator) -> pd.DataFrame:
    """A ``subgroups.csv`` frame (``case_id`` + the dataset's attributes) with values drawn independently."""
    out = {"case_id": [str(c) for c in case_ids]}
    for attr, (values, p) in SIMULATED_ATTRIBUTES[dataset].items():
        out[attr] = rng.choice(values, size=len(case_ids), p=np.asarray(p) / np.sum(p))
    return pd.DataFrame(out)


def write_robustness(run_dir: str | Path, test: pd.DataFrame, reported: str, condition: str,
                     probs: Mapping[str, np.ndarray]) -> Path:
    """``robustness/test_<condition>.parquet``: the reported output's probabilities with an input withheld."""
    classes = P.task_classes(test)
    path = P.robustness_file(run_dir, "test", condition)
    path.parent.mkdir(parents=True, exist_ok=True)
    P.to_frame(test["case_id"], P.targets(test), {reported: probs}, classes).to_parquet(path, index=False)
    return path


# model preset -> the withheld inputs its reported output can still be computed without, and how (the JIF image
# branch answers without metadata; an image-only model reads no metadata; fusion-only and meta-only models cannot)
ANSWERS_WITHOUT = {"image_only": {"no_meta": "same"}, **{f"jif_{k}": {"no_meta": "image"} for k in
                                                         ("cat", "metablock", "metanet", "mutual_attention", "mmfa")}}


def run_info(dataset: str, model: str, method: str, backbone: str, fold: int | None, seed: int,
             branches: Sequence[str], status: str = "completed", main_metric: str | None = None,
             reported: str | None = None, **extra) -> dict:
    classes = dataset_classes(dataset)
    return {"status": status, "error": None, "dataset": dataset, "model": model, "method": method,
            "backbone": backbone, "fold": fold, "seed": seed, "experiment": None,
            "reported": reported or ("all" if len(branches) > 1 else branches[0]),
            "main_metric": main_metric or ("avg_acc" if dataset == "derm7pt" and len(classes) > 1 else "bac"),
            "branches": list(branches), "tasks": classes,
            "params": {"total": 1000, "thesis_count": 1100, "trainable": 900}, "overrides": [], **extra}


# model preset -> (display name, branches, logit boost of the true class); the chapter-4 presets
_FUSION = {"cat": ("CAT", 1.2), "metablock": ("MB", 1.1), "metanet": ("MN", 0.9), "mutual_attention": ("MA", 1.3),
           "mmfa": ("MMFA", 1.4)}
DEFAULT_MODELS = {"image_only": ("Image", ["image"], 0.8),
                  **{f"jf_{k}": (f"JF-{abbr}", ["fusion"], sig) for k, (abbr, sig) in _FUSION.items()},
                  **{f"jif_{k}": (f"JIF-{abbr}", ["image", "meta", "fusion"], sig + 0.1)
                     for k, (abbr, sig) in _FUSION.items()}}
CHAPTER4_MODELS = tuple(DEFAULT_MODELS)
DEFAULT_MODELS["meta_only"] = ("Meta", ["meta"], 0.6)   # no image backbone: its runs record NO_BACKBONE
CHAPTER4_BACKBONES = ("mobilenetv2_100", "efficientnet_b3", "resnet50", "densenet121", "xception")


def make_sweep(root: str | Path, dataset: str, models: Sequence[str] = ("image_only", "jif_mmfa"),
               backbones: Sequence[str] = ("densenet121.tv_in1k",), runs: Sequence[int] = (0, 1),
               n_val: int = 80, n_test: int = 60, skip: Sequence[int] = (), fail: Sequence[int] = (),
               no_run_json: Sequence[int] = (), features: bool = False, tasks: Sequence[str] | None = None,
               main_metric: str | None = None, seed: int = 0, sweeper_params: bool = False,
               experiment: str | None = None, logits: bool = True, subgroups: bool = True,
               robustness: Sequence[str] = ()) -> Path:
    """A Hydra-like multirun directory: ``multirun.yaml`` plus numbered job directories with
    ``.hydra/overrides.yaml``, ``run.json`` and predictions. ``runs`` are folds (PAD/ISIC) or seeds
    (derm7pt). Job numbers in ``skip`` get no directory, in ``no_run_json`` no run.json, in ``fail``
    a failed status. With ``sweeper_params`` the sweep is declared like an experiment preset;
    ``experiment`` is recorded as the runs' experiment (their W&B group). ``logits`` saves the ``logit/``
    columns, ``subgroups`` a ``subgroups.csv`` per run (the same attributes for a case in every run), and
    ``robustness`` (conditions such as ``no_meta``) the test predictions with that input withheld, for the models
    of :data:`ANSWERS_WITHOUT` that can answer without it. These draw from their own random streams, so the
    predictions do not depend on them."""
    import yaml

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    run_key = "seed" if dataset == "derm7pt" else "data.fold"
    sweep = {"model": ",".join(models), "backbone": ",".join(backbones), run_key: ",".join(map(str, runs))}
    hydra = {"overrides": {"task": [f"dataset={dataset}"] + ([] if sweeper_params else [f"{k}={v}" for k, v in sweep.items()])},
             "sweeper": {"params": sweep if sweeper_params else None}}
    if sweeper_params or experiment:
        hydra["overrides"]["task"].append(f"experiment={experiment or 'simulated'}")
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}, sort_keys=False))
    classes = dataset_classes(dataset)
    if tasks:
        classes = {t: classes[t] for t in tasks}
    extra_rng = np.random.default_rng([seed, 1])   # attributes and withheld-input predictions
    attributes = None
    if subgroups:
        ids = [f"v{i:04d}" for i in range(n_val)] + [f"t{i:04d}" for i in range(n_test)]
        attributes = simulated_attributes(dataset, ids, extra_rng)
    job = 0
    for model in models:
        method, branches, signal = DEFAULT_MODELS[model]
        for bb in ((NO_BACKBONE,) if model == "meta_only" else backbones):
            for r in runs:
                num, job = job, job + 1
                if num in skip:
                    continue
                overrides = [f"dataset={dataset}", f"model={model}", f"backbone={bb}", f"{run_key}={r}"]
                d = root / str(num)
                (d / ".hydra").mkdir(parents=True, exist_ok=True)
                (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
                if num in no_run_json:
                    continue
                info = run_info(dataset, model, method, bb, None if dataset == "derm7pt" else r, r, branches,
                                status="failed" if num in fail else "completed", main_metric=main_metric,
                                overrides=overrides)
                info["experiment"] = experiment
                if num in fail:
                    info["error"] = "RuntimeError: synthetic failure"
                    write_run(d, info, None)
                    continue
                sig = {b: signal + (0.4 if b == "fusion" else 0.0) for b in branches}
                val = make_predictions(classes, n_val, branches, rng, sig, prefix="v", logits=logits)
                test = None if dataset == "isic2019" else make_predictions(classes, n_test, branches, rng, sig,
                                                                           prefix="t", logits=logits)
                feats = None
                if features and test is not None:
                    y = test[f"target/{next(iter(classes))}"].to_numpy()
                    feats = {"case_id": test["case_id"].to_numpy(), "target": y,
                             "features": rng.normal(size=(len(y), 8)) + 2.0 * np.eye(8)[y % 8]}
                write_run(d, info, val, test, feats)
                if attributes is not None:
                    attributes.to_csv(d / "subgroups.csv", index=False)
                for cond in robustness if test is not None else ():
                    how = ANSWERS_WITHOUT.get(model, {}).get(cond)
                    if how == "same":
                        write_robustness(d, test, info["reported"], cond, P.combine(test, info["reported"]))
                    elif how:
                        y = P.targets(test)
                        weaker = {t: random_probs(extra_rng, y[t], len(c), 0.6 * signal) for t, c in classes.items()}
                        write_robustness(d, test, info["reported"], cond, weaker)
    return root
