"""Saved per-case predictions: reading, column parsing and branch combination.

Schema (written by training): one row per case, ``case_id``, ``target/<task>`` (int code) and
``prob/<branch>/<task>/<class>`` (TTA-averaged softmax probabilities). Task and class order is the
column order. Everything in :mod:`skinlesion.evaluation` goes through these helpers so the schema is
parsed in exactly one place.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_PREFIX = "target/"
PROB_PREFIX = "prob/"

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


def combine(df: pd.DataFrame, combination: Combination = "all") -> dict[str, np.ndarray]:
    """Per-task (N, K) probabilities of a branch, of ``"all"`` (unweighted mean over branches, the
    JIF "All" output), of ``"all_logits"`` (A-10's alternative: softmax of the mean logits), or of a
    ``{branch: weight}`` mix. Weights are divided by their sum so the result stays a probability
    distribution (argmax and AUC are unaffected by the scale)."""
    names = branches(df)
    if isinstance(combination, str):
        if combination == "all_logits":
            # log p differs from the logits by a per-case constant, so softmax(mean log p) equals
            # softmax(mean logits) exactly: the logit average is recoverable from saved probabilities.
            out = {}
            for b in names:
                for t, p in branch_probs(df, b).items():
                    out[t] = out.get(t, 0) + np.log(np.clip(p, 1e-300, None)) / len(names)
            return {t: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
                    for t, z in out.items()}
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


def to_frame(case_id, target: Mapping[str, np.ndarray], probs: Mapping[str, Mapping[str, np.ndarray]],
             classes: Mapping[str, list[str]]) -> pd.DataFrame:
    """Build a predictions frame in the saved schema. ``probs`` is ``{branch: {task: (N, K)}}``."""
    cols: dict[str, np.ndarray] = {"case_id": np.asarray(case_id).astype(str)}
    for t in classes:
        cols[TARGET_PREFIX + t] = np.asarray(target[t]).astype(np.int64)
    for b, per_task in probs.items():
        for t, cls in classes.items():
            p = np.asarray(per_task[t], dtype=np.float64)
            for k, c in enumerate(cls):
                cols[f"{PROB_PREFIX}{b}/{t}/{c}"] = p[:, k]
    return pd.DataFrame(cols)
