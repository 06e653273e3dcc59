"""Calibration of saved predictions: top-label ECE, multi-class Brier score, negative log-likelihood, reliability
curves and temperature scaling.

* **ECE** is the top-label expected calibration error over ``n_bins`` equal-width confidence bins (default
  :data:`N_BINS`; bin i holds confidences in [i/n_bins, (i+1)/n_bins), the last bin also 1): the case-weighted mean
  over bins of |accuracy − mean confidence|, where a case's confidence is its largest probability and it counts as
  correct when that class is the target. This is torchmetrics' ``multiclass_calibration_error`` (``norm="l1"``),
  which the tests check it against; it is computed here because importing torchmetrics (and with it torch and
  torchvision) would cost a report several seconds, and the reliability diagram needs the same bins.
* **Brier** is the multi-class score, the mean over cases of Σ_k (p_k − 1[y = k])²: 0 is perfect, 2 the worst; for
  a two-class task it is twice the binary Brier score of the positive class.
* **NLL** is the mean of −log p_y (probabilities clipped at 1e-15, as scikit-learn's ``log_loss``).
* **Temperature scaling** divides an output's logits by one T > 0 per output and task, fitted on the validation
  predictions by minimising their NLL over log T, then applied unchanged to test. An output without logits (a
  probability average such as JIF's ``all``, a searched weighting, files written before logits were saved) is
  scaled on its log-probabilities instead: softmax(log p / T) ∝ p^(1/T), which is p itself at T = 1 and, like
  scaling logits, never moves the argmax. Its note says so.

Brier and NLL are written out here too (checked against scikit-learn in the tests): a report computes them
thousands of times, where ``brier_score_loss``/``log_loss``'s input validation would dominate.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from . import predictions as P

N_BINS = 15
EPS = 1e-15
# log T is searched in [log 0.01, log 100]: wider than any useful temperature, narrow enough to stay finite
LOG_T_BOUNDS = (float(np.log(1e-2)), float(np.log(1e2)))
NO_LOGITS = {   # why an output is scaled on its log-probabilities, or gets no temperature at all
    "mixture": "probability average, no logits: temperature applied to its log-probabilities",
    "searched": "searched weighting of probabilities, no logits: temperature applied to its log-probabilities",
    "old": "no logit/ columns saved: temperature applied to the log of the saved probabilities",
    "no_val": "no validation predictions to fit a temperature on",
    "no_test": "no test split: a temperature fitted on validation cannot be scored on other cases",
}


def _check(prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).ravel()
    if prob.ndim != 2 or prob.shape[0] != len(y):
        raise ValueError(f"probabilities have shape {prob.shape}; expected ({len(y)}, n_classes)")
    if not len(y):
        raise ValueError("no cases: calibration needs at least one prediction")
    if y.min() < 0 or y.max() >= prob.shape[1]:
        raise ValueError(f"targets outside 0..{prob.shape[1] - 1}")
    return prob, y


def confidence_bins(prob: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: number of cases, summed confidence and number correct (top label)."""
    prob, y = _check(prob, y)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    return {"edges": edges, "count": np.bincount(idx, minlength=n_bins),
            "confidence": np.bincount(idx, conf, minlength=n_bins),
            "correct": np.bincount(idx, correct, minlength=n_bins)}


def ece(prob: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins."""
    b = confidence_bins(prob, y, n_bins)
    return float(np.abs(b["correct"] - b["confidence"]).sum() / b["count"].sum())


def brier(prob: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over cases of Σ_k (p_k − 1[y = k])²."""
    prob, y = _check(prob, y)
    sq = (prob ** 2).sum(axis=1) - 2 * prob[np.arange(len(y)), y] + 1
    return float(sq.mean())


def nll(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the targets."""
    prob, y = _check(prob, y)
    return float(-np.log(np.clip(prob[np.arange(len(y)), y], EPS, 1.0)).mean())


def scores(prob: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict:
    return {"ece": ece(prob, y, n_bins), "brier": brier(prob, y), "nll": nll(prob, y)}


def _logit_nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(-log_softmax(z, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (bounded search over log T)."""
    z, y = _check(logits, y)
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values; a temperature cannot be fitted")
    res = minimize_scalar(lambda log_t: _logit_nll(z / np.exp(log_t), y), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def output_logits(df: pd.DataFrame, combination: P.Combination) -> tuple[dict[str, np.ndarray], str | None]:
    """``({task: (N, K) scores}, note)``: what temperature scaling divides for an output. Its logits where it has
    them (a branch's own, or for ``all_logits`` the mean of the branches' logits; note None), else the log of its
    probabilities, with the note saying why."""
    has_logits = isinstance(combination, str) and combination in [*P.branches(df), "all_logits"]
    if combination == "searched" or not has_logits:
        why = NO_LOGITS["searched" if combination == "searched" else "mixture"]
        return log_probabilities(df, combination), why
    if not P.has_logits(df):
        return log_probabilities(df, combination), NO_LOGITS["old"]
    if combination != "all_logits":
        return P.branch_logits(df, combination), None
    names = P.branches(df)
    out: dict[str, np.ndarray] = {}
    for b in names:
        for t, z in P.branch_logits(df, b).items():
            out[t] = out.get(t, 0) + z / len(names)
    return out, None


def log_probabilities(df: pd.DataFrame, combination: P.Combination) -> dict[str, np.ndarray]:
    """Per task, the log of an output's probabilities (clipped at :data:`EPS`): scores whose softmax is the output."""
    return {t: np.log(np.clip(p, EPS, 1.0)) for t, p in P.combine(df, combination).items()}


def calibrate(prob: np.ndarray, y: np.ndarray, z_test: np.ndarray | None = None, z_val: np.ndarray | None = None,
              y_val: np.ndarray | None = None, n_bins: int = N_BINS, note: str | None = None) -> dict:
    """ECE, Brier and NLL of one task's probabilities and, given test and validation logits, the temperature fitted
    on validation and the three scores after it (``*_ts``)."""
    rec = {"n": int(len(prob)), "n_bins": n_bins, **scores(prob, y, n_bins), "temperature": None, "ece_ts": None,
           "brier_ts": None, "nll_ts": None, "note": note}
    if z_test is not None and z_val is not None:
        t = fit_temperature(z_val, y_val)
        after = scores(apply_temperature(z_test, t), y, n_bins)
        rec.update(temperature=t, **{f"{k}_ts": v for k, v in after.items()})
    return rec


def logits_for(test: pd.DataFrame, val: pd.DataFrame | None, combination: P.Combination, scored_split: str = "test"
               ) -> tuple[dict | None, dict | None, dict | None, str | None]:
    """(test scores, validation scores, validation targets, note) of an output for temperature scaling
    (:func:`output_logits`; the note says where they are log-probabilities); the scores are None, and the note says
    why, where no temperature can be fitted and scored. ``scored_split`` other than ``"test"`` (a dataset without a
    test split) fits nothing: the temperature would be fitted and scored on the same cases."""
    if scored_split != "test":
        return None, None, None, NO_LOGITS["no_test"]
    if val is None:
        return None, None, None, NO_LOGITS["no_val"]
    z_test, note = output_logits(test, combination)
    z_val, note_val = output_logits(val, combination)
    if (note is None) != (note_val is None):   # one file has logits, the other not: both on log-probabilities
        z_test, z_val, note = log_probabilities(test, combination), log_probabilities(val, combination), \
            NO_LOGITS["old"]
    return z_test, z_val, P.targets(val), note


def output_calibration(test: pd.DataFrame, combination: P.Combination, val: pd.DataFrame | None = None,
                       n_bins: int = N_BINS, scored_split: str = "test") -> list[dict]:
    """:func:`calibrate` of every task of an output of a predictions frame, the temperature fitted on ``val``."""
    probs, y = P.combine(test, combination), P.targets(test)
    z_test, z_val, y_val, note = logits_for(test, val, combination, scored_split)
    return [{"task": t, **calibrate(prob, y[t], *((z_test[t], z_val[t], y_val[t]) if z_test else (None,) * 3),
                                    n_bins=n_bins, note=note)} for t, prob in probs.items()]


def reliability(prob: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability curve, the bins of :func:`ece`: per non-empty bin its mean confidence and accuracy, and
    every bin's case count."""
    b = confidence_bins(prob, y, n_bins)
    full = b["count"] > 0
    return {"confidence": b["confidence"][full] / b["count"][full], "accuracy": b["correct"][full] / b["count"][full],
            "counts": b["count"], "edges": b["edges"]}


def summarise_runs(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1) of every score over the runs of each ``keys`` group, and how many runs had a
    temperature."""
    cols = ["ece", "brier", "nll", "ece_ts", "brier_ts", "nll_ts", "temperature"]
    out = []
    for key, g in rows.groupby(keys, sort=False, dropna=False):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rec["runs"] = int(len(g))
        for c in cols:
            v = pd.to_numeric(g[c], errors="coerce").dropna().to_numpy(dtype=float)
            rec[c] = float(v.mean()) if len(v) else None
            rec[f"{c}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
        rec["runs_ts"] = int(g["temperature"].notna().sum())
        notes = [n for n in g["note"].dropna().unique() if n]
        rec["note"] = "; ".join(notes)
        out.append(rec)
    return pd.DataFrame(out)


def final_calibration(val: pd.DataFrame | None, test: pd.DataFrame, combination: P.Combination,
                      scored_split: str, task: str | None = None, n_bins: int = N_BINS) -> dict:
    """The end-of-training summary for metrics.json: one task (default the first, the diagnosis) of the reported
    output on ``scored_split``."""
    recs = output_calibration(test, combination, val, n_bins, scored_split)
    rec = next((r for r in recs if r["task"] == task), recs[0]) if task else recs[0]
    return {"split": scored_split, "output": P.combination_label(combination), **rec}

