"""Synthetic run artefacts in the training side's schema, for tests, benchmarks and dry runs of the
report. Probabilities are random but informative: the true class gets a logit boost of ``signal``."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.tasks import DATASET_TASKS

from . import predictions as P

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
