"""Simulated run artefacts — prediction frames, run directories and whole Hydra-like sweeps — in the
training side's schema, for tests, benchmarks and dry runs of the report (no images, no training).
Probabilities are random but informative: the true class gets a logit boost of ``signal``."""
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


def random_probs(rng: np.random.Generator, y: np.ndarray, k: int, signal: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += signal
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_predictions(classes: Mapping[str, Sequence[str]], n: int, branches: Sequence[str],
                     rng: np.random.Generator, signal: float | Mapping[str, float] = 1.5,
                     y: Mapping[str, np.ndarray] | None = None, prefix: str = "case") -> pd.DataFrame:
    """A predictions frame; ``signal`` may differ per branch."""
    if y is None:
        y = {t: rng.integers(0, len(c), size=n) for t, c in classes.items()}
    sig = signal if isinstance(signal, Mapping) else {b: signal for b in branches}
    probs = {b: {t: random_probs(rng, np.asarray(y[t]), len(c), sig[b]) for t, c in classes.items()}
             for b in branches}
    return P.to_frame([f"{prefix}{i:04d}" for i in range(n)], y, probs, {t: list(c) for t, c in classes.items()})


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
               experiment: str | None = None) -> Path:
    """A Hydra-like multirun directory: ``multirun.yaml`` plus numbered job directories with
    ``.hydra/overrides.yaml``, ``run.json`` and predictions. ``runs`` are folds (PAD/ISIC) or seeds
    (derm7pt). Job numbers in ``skip`` get no directory, in ``no_run_json`` no run.json, in ``fail``
    a failed status. With ``sweeper_params`` the sweep is declared like an experiment preset;
    ``experiment`` is recorded as the runs' experiment (their W&B group)."""
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
                val = make_predictions(classes, n_val, branches, rng, sig, prefix="v")
                test = None if dataset == "isic2019" else make_predictions(classes, n_test, branches, rng, sig, prefix="t")
                feats = None
                if features and test is not None:
                    y = test[f"target/{next(iter(classes))}"].to_numpy()
                    feats = {"case_id": test["case_id"].to_numpy(), "target": y,
                             "features": rng.normal(size=(len(y), 8)) + 2.0 * np.eye(8)[y % 8]}
                write_run(d, info, val, test, feats)
    return root
