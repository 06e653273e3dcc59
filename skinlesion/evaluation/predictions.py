"""Saved per-case predictions: reading, column parsing and branch combination.

Schema (written by training): one row per case, ``case_id``, ``target/<task>`` (int code),
``prob/<branch>/<task>/<class>`` (TTA-averaged softmax probabilities) and, in the same order,
``logit/<branch>/<task>/<class>`` (TTA-averaged logits; absent from files written by older versions).
Task and class order is the column order. Everything in :mod:`skinlesion.evaluation` goes through these helpers so the schema is
parsed in exactly one place.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.info import INPUTS

TARGET_PREFIX = "target/"
PROB_PREFIX = "prob/"
LOGIT_PREFIX = "logit/"

Combination = str | Mapping[str, float]


def read_predictions(path: str | Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    if "case_id" in df.columns:
        df["case_id"] = df["case_id"].astype(str)
    return df


def _prob_columns(df: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(column, branch, task, class) for every probability column, in column order."""
    out = []
    for col in df.columns:
        if isinstance(col, str) and col.startswith(PROB_PREFIX):
            parts = col[len(PROB_PREFIX):].split("/", 2)
            if len(parts) != 3:
                raise ValueError(f"malformed probability column {col!r}; expected prob/<branch>/<task>/<class>")
            out.append((col, *parts))
    return out


def branches(df: pd.DataFrame) -> list[str]:
    seen: dict[str, None] = {}
    for _, b, _, _ in _prob_columns(df):
        seen.setdefault(b)
    return list(seen)


def task_names(df: pd.DataFrame) -> list[str]:
    """Tasks with a target column, in column order."""
    return [c[len(TARGET_PREFIX):] for c in df.columns if isinstance(c, str) and c.startswith(TARGET_PREFIX)]


def task_classes(df: pd.DataFrame, branch: str | None = None) -> dict[str, list[str]]:
    """``{task: [class, ...]}`` in column order, read from one branch (default: the first)."""
    cols = _prob_columns(df)
    if not cols:
        raise ValueError("no prob/<branch>/<task>/<class> columns in predictions")
    branch = branch or cols[0][1]
    out: dict[str, list[str]] = {}
    for _, b, t, c in cols:
        if b == branch:
            out.setdefault(t, []).append(c)
    if not out:
        raise KeyError(f"branch {branch!r} not in predictions (have {branches(df)})")
    return out


def targets(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {t: df[TARGET_PREFIX + t].to_numpy().astype(np.int64) for t in task_names(df)}


def branch_probs(df: pd.DataFrame, branch: str) -> dict[str, np.ndarray]:
    """``{task: (N, K) float64}`` for one branch."""
    classes = task_classes(df, branch)
    return {t: df[[f"{PROB_PREFIX}{branch}/{t}/{c}" for c in cls]].to_numpy(dtype=np.float64)
            for t, cls in classes.items()}


def has_logits(df: pd.DataFrame) -> bool:
    """Whether every probability column has its logit column (files written since logits are saved)."""
    cols = set(df.columns)
    probs = _prob_columns(df)
    return bool(probs) and all(LOGIT_PREFIX + c[len(PROB_PREFIX):] in cols for c, *_ in probs)


def branch_logits(df: pd.DataFrame, branch: str) -> dict[str, np.ndarray]:
    """``{task: (N, K) float64}`` TTA-averaged logits of one branch."""
    classes = task_classes(df, branch)
    return {t: df[[f"{LOGIT_PREFIX}{branch}/{t}/{c}" for c in cls]].to_numpy(dtype=np.float64)
            for t, cls in classes.items()}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _all_logits(df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """softmax of the mean over branches of the (TTA-averaged) logits."""
    if has_logits(df):
        read, note = branch_logits, None
    else:
        # Files without logit columns: log p differs from the logits by a per-case constant, so the mean of
        # log-probabilities gives the same softmax -- exactly for runs without TTA, approximately with TTA
        # (the saved probabilities are then means over views, not softmaxes of one logit vector).
        def read(frame, b):
            return {t: np.log(np.clip(p, 1e-300, None)) for t, p in branch_probs(frame, b).items()}
        note = ("predictions have no logit/ columns (written by an older version): 'all_logits' is recovered "
                "from the saved probabilities, which is exact only for runs without test-time augmentation")
    if note:
        warnings.warn(note, stacklevel=3)
    out: dict[str, np.ndarray] = {}
    for b in names:
        for t, z in read(df, b).items():
            out[t] = out.get(t, 0) + z / len(names)
    return {t: _softmax(z) for t, z in out.items()}


def combine(df: pd.DataFrame, combination: Combination = "all") -> dict[str, np.ndarray]:
    """Per-task (N, K) probabilities of a branch, of ``"all"`` (unweighted mean over branches, the
    JIF "All" output), of ``"all_logits"`` (softmax of the mean over branches of the TTA-averaged logits), or of a
    ``{branch: weight}`` mix. Weights are divided by their sum so the result stays a probability
    distribution (argmax and AUC are unaffected by the scale)."""
    names = branches(df)
    if isinstance(combination, str):
        if combination == "all_logits":
            return _all_logits(df, names)
        if combination == "all":
            combination = {b: 1.0 for b in names}
        elif combination in names:
            return branch_probs(df, combination)
        else:
            raise KeyError(f"unknown branch {combination!r}; predictions have {names}")
    weights = {str(b): float(w) for b, w in dict(combination).items()}
    missing = [b for b in weights if b not in names]
    if missing:
        raise KeyError(f"branch(es) {missing} not in predictions (have {names})")
    total = sum(weights.values())
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"branch weights must have a positive sum, got {weights}")
    out: dict[str, np.ndarray] = {}
    for b, w in weights.items():
        for t, p in branch_probs(df, b).items():
            if t in out and out[t].shape != p.shape:
                raise ValueError(f"task {t!r}: branch {b!r} has shape {p.shape}, expected {out[t].shape}")
            out[t] = out[t] + (w / total) * p if t in out else (w / total) * p
    return out


def combination_label(combination: Combination) -> str:
    if isinstance(combination, str):
        return combination
    return "+".join(f"{float(w):.4g}*{b}" for b, w in dict(combination).items())


# Missing-input robustness: a run's predictions with one input withheld (written by skinlesion.robustness, read by
# the report), one file per split and condition.
def withheld_condition(key: str) -> str:
    """The condition of predictions made without input ``key`` (meta, clinic, derm)."""
    return f"no_{key}"


WITHHELD_CONDITIONS = tuple(withheld_condition(x) for x in INPUTS)


def robustness_file(run_dir: str | Path, split: str, condition: str) -> Path:
    return Path(run_dir) / "robustness" / f"{split}_{condition}.parquet"


def to_frame(case_id, target: Mapping[str, np.ndarray], probs: Mapping[str, Mapping[str, np.ndarray]],
             classes: Mapping[str, list[str]],
             logits: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> pd.DataFrame:
    """Build a predictions frame in the saved schema. ``probs`` (and ``logits``) are ``{branch: {task: (N, K)}}``."""
    cols: dict[str, np.ndarray] = {"case_id": np.asarray(case_id).astype(str)}
    for t in classes:
        cols[TARGET_PREFIX + t] = np.asarray(target[t]).astype(np.int64)
    for b, per_task in probs.items():
        for t, cls in classes.items():
            p = np.asarray(per_task[t], dtype=np.float64)
            for k, c in enumerate(cls):
                cols[f"{PROB_PREFIX}{b}/{t}/{c}"] = p[:, k]
    for b, per_task in (logits or {}).items():
        for t, cls in classes.items():
            z = np.asarray(per_task[t], dtype=np.float64)
            for k, c in enumerate(cls):
                cols[f"{LOGIT_PREFIX}{b}/{t}/{c}"] = z[:, k]
    return pd.DataFrame(cols)
