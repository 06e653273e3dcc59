"""Classification metrics of saved predictions (scikit-learn): per task, per class and the dataset summaries.

All values are fractions in [0, 1] (tables scale to %). A quantity that is undefined on the split —
recall of a class with no cases, AUC of a class that is all-positive or all-negative, precision of a
class never predicted — is ``None`` (JSON ``null``), never 0, and every average states how many
terms it ran over. Results contain only builtin Python types so ``json.dumps`` works directly.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from skinlesion.data.tasks import DERM7PT_AUC_CATEGORIES, DERM7PT_MELANOMA_CATEGORIES, DERM7PT_TASKS

from . import predictions as P

_DERM7PT_TASK_NAMES = {t.name for t in DERM7PT_TASKS}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def nanfree_mean(values: Iterable[float | None]) -> tuple[float | None, int]:
    """Mean over the defined values and how many there were."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return (float(np.mean(vals)) if vals else None), len(vals)


def _one_vs_rest_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the ``positive`` cases against the rest, through the Mann-Whitney identity on
    average ranks (ties count half): equal to ``sklearn.metrics.roc_auc_score`` (tested), without its input
    validation, which dominated reports over hundreds of runs."""
    n_pos = int(positive.sum())
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(score) - n_pos)))


def task_metrics(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict:
    """Metrics of one task from integer targets ``y`` (N,) and probabilities ``prob`` (N, K).

    ``bac`` is the mean recall over the classes present in ``y`` (= ``balanced_accuracy_score``);
    ``auc`` is the macro one-vs-rest AUC over classes with both positives and negatives.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    prob = np.asarray(prob, dtype=np.float64)
    classes = [str(c) for c in classes]
    k = len(classes)
    if prob.ndim != 2 or prob.shape != (len(y), k):
        raise ValueError(f"prob has shape {prob.shape}, expected ({len(y)}, {k})")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"targets outside 0..{k - 1}: {sorted(set(y.tolist()) - set(range(k)))}")
    n = len(y)
    pred = prob.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)   # rows: true class, columns: predicted

    per_class: dict[str, dict] = {}
    recalls, aucs = [], []
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        fn, fp = support - tp, predicted - tp
        tn = n - tp - fn - fp
        sens = _ratio(tp, tp + fn)
        auc = None
        if 0 < support < n:
            auc = _one_vs_rest_auc(y == i, prob[:, i])
        per_class[c] = {"sensitivity": sens, "specificity": _ratio(tn, tn + fp),
                        "precision": _ratio(tp, tp + fp), "auc": auc, "support": support}
        if sens is not None:
            recalls.append(sens)
        if auc is not None:
            aucs.append(auc)

    bac, n_present = nanfree_mean(recalls)
    auc, n_auc = nanfree_mean(aucs)
    return {
        "n": n,
        "acc": float((pred == y).mean()) if n else None,
        "bac": bac,
        "auc": auc,
        "n_classes": k,
        "n_classes_present": n_present,
        "n_classes_auc": n_auc,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def infer_dataset(tasks: Iterable[str]) -> str | None:
    names = set(tasks)
    if names and names <= _DERM7PT_TASK_NAMES:
        return "derm7pt"
    if names == {"diagnostic"}:
        return "pad_ufes"
    if names == {"diagnosis"}:
        return "isic2019"
    return None


def _category_key(task: str, cls: str) -> str:
    return f"{task}-{cls}"


def derm7pt_summary(tasks: Mapping[str, dict]) -> dict:
    """AVG AUC over the 17 non-absent categories and the melanoma-related table,
    restricted to the categories whose task was evaluated."""
    cat_auc = {_category_key(t, c): tasks[t]["per_class"][c]["auc"]
               for t, c in DERM7PT_AUC_CATEGORIES if t in tasks and c in tasks[t]["per_class"]}
    avg_auc, avg_auc_n = nanfree_mean(cat_auc.values())
    mel_cats = {_category_key(t, c): {m: tasks[t]["per_class"][c][m]
                                      for m in ("auc", "precision", "sensitivity", "specificity")}
                for t, c in DERM7PT_MELANOMA_CATEGORIES if t in tasks and c in tasks[t]["per_class"]}
    mean, mean_n = {}, {}
    for m in ("auc", "precision", "sensitivity", "specificity"):
        mean[m], mean_n[m] = nanfree_mean(v[m] for v in mel_cats.values())
    return {"avg_auc": avg_auc, "avg_auc_n": avg_auc_n, "category_auc": cat_auc,
            "melanoma": {"categories": mel_cats, "mean": mean, "mean_n": mean_n}}


def evaluate_probs(y: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray], classes: Mapping[str, list[str]],
                   dataset: str | None = None, combination: object = None) -> dict:
    """Like :func:`evaluate_predictions` but from arrays: ``{task: (N,)}`` targets, ``{task: (N, K)}``
    probabilities and ``{task: [class, ...]}`` (for per-epoch validation without building a frame)."""
    missing = [t for t in probs if t not in y]
    if missing:
        raise KeyError(f"no targets for task(s) {missing}")
    tasks = {t: task_metrics(y[t], probs[t], list(classes[t])) for t in probs}
    avg_acc, _ = nanfree_mean(m["acc"] for m in tasks.values())
    avg_bac, _ = nanfree_mean(m["bac"] for m in tasks.values())
    if combination is not None and not isinstance(combination, str):
        combination = {str(k): float(v) for k, v in dict(combination).items()}
    out = {
        "combination": combination,
        "dataset": dataset or infer_dataset(tasks),
        "n": int(len(next(iter(y.values())))) if y else 0,
        "tasks": tasks,
        "avg_acc": avg_acc,
        "avg_bac": avg_bac,
        "n_tasks": len(tasks),
    }
    if out["dataset"] == "derm7pt":
        out.update(derm7pt_summary(tasks))
    return out


def evaluate_predictions(df: pd.DataFrame, combination: P.Combination = "all", dataset: str | None = None) -> dict:
    """Metrics of every task for one branch combination of a predictions frame.

    ``dataset`` enables the derm7pt extras (``avg_auc``, ``melanoma``); it is inferred from the task
    names when omitted.
    """
    probs = P.combine(df, combination)
    if isinstance(combination, str):
        ref_branch = None if combination in ("all", "all_logits") else combination
    else:
        ref_branch = next(iter(combination), None)
    return evaluate_probs(P.targets(df), probs, P.task_classes(df, ref_branch), dataset, combination)


def main_score(metrics: Mapping, main_metric: str) -> float:
    """The ranking number of a run: ``"bac"`` = mean task BAC (the BAC itself for one task),
    ``"avg_acc"`` = mean task ACC; ``"avg_auc"`` also accepted. NaN when undefined."""
    if main_metric == "bac":
        val, _ = nanfree_mean(m.get("bac") for m in metrics["tasks"].values())
    elif main_metric in ("avg_acc", "avg_auc", "avg_bac"):
        val = metrics.get(main_metric)
    else:
        raise ValueError(f"unknown main_metric {main_metric!r}; expected 'bac', 'avg_acc' or 'avg_auc'")
    return float("nan") if val is None else float(val)
