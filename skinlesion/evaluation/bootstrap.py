"""Case-level bootstrap of a run's scores: percentile intervals, intervals of a method's mean over runs, and the
paired bootstrap of two methods on the same cases.

A resample draws N of the N evaluated cases with replacement. It is held as a column of multiplicities (how often
each case was drawn), so every score of every resample is a weighted count: BAC and ACC of 1000 resamples are two
matrix products, AUC a sort and a cumulative sum per class. Column 0 is the observed data (every case once), so
the point estimate and its resamples come from the same code. The resamples depend only on the seed and the set of
case ids: every run evaluated on the same cases (a fixed test set) sees the same resamples, which is what makes
the paired difference of two methods, and the mean over runs of one method, a resampling of cases and not of
runs. Different case sets (the folds of a cross-validation) are resampled independently.

Intervals are percentile intervals (default 95%). The two-sided bootstrap p of a difference is
2·min((#{Δ* ≤ 0} + 1)/(R + 1), (#{Δ* ≥ 0} + 1)/(R + 1)), capped at 1: the smallest level at which the percentile
interval excludes 0 (so with R = 1000 the smallest p is about 0.002).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import sparse

RESAMPLES = 1000
AUC_RESAMPLES = 200    # AUC costs a sort per class and resample block; fewer resamples keep reports fast
SEED = 0
LEVEL = 0.95


def case_set_key(case_ids: Sequence[str]) -> int:
    """A stable number for a set of case ids (independent of their order and of the process's hash seed)."""
    return zlib.crc32("\n".join(sorted(map(str, case_ids))).encode())


def resample_counts(n: int, n_resamples: int = RESAMPLES, seed: int = SEED, key: int = 0) -> np.ndarray:
    """(n, 1 + n_resamples) float32 multiplicities: column 0 is every case once, column r the r-th resample."""
    if n < 1:
        raise ValueError("the bootstrap needs at least one case")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng([seed, key])
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.bincount((idx + n * np.arange(n_resamples)[:, None]).ravel(), minlength=n * n_resamples)
    out = np.empty((n, n_resamples + 1), dtype=np.float32)
    out[:, 0] = 1.0
    out[:, 1:] = counts.reshape(n_resamples, n).T
    return out


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the defined values (NaN where none is), without numpy's empty-slice warning."""
    ok = ~np.isnan(x)
    return _divide(np.where(ok, x, 0).sum(axis=axis), ok.sum(axis=axis))


def _stack(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(case, group code) of every membership: ``groups`` is None (one group of all cases), (N,) codes or
    (A, N) codes of A groupings (codes distinct across groupings), so a case belongs to one group of each."""
    g = np.zeros((1, n), dtype=np.int64) if groups is None else np.atleast_2d(np.asarray(groups, dtype=np.int64))
    if g.shape[1] != n:
        raise ValueError(f"group codes for {g.shape[1]} cases, expected {n}")
    return np.tile(np.arange(n), len(g)), g.ravel()


def grouped_bac_acc(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int, groups: np.ndarray | None = None,
                    n_groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """BAC and ACC per group and resample, ``(n_groups, columns)`` each, from (N, columns) case weights; ``groups``
    as in :func:`_stack`.

    BAC is the mean recall over the classes present in the group's resample (as ``balanced_accuracy_score``).
    """
    y = np.asarray(y, dtype=np.int64)
    case, g = _stack(groups, len(y))
    # each case adds its weight to its (group, true class) cell, and a correct one also to that cell's hits: one
    # sparse product, far cheaper than dense one-hot products
    cell, hit = g * k + y[case], np.flatnonzero((np.asarray(pred) == y)[case])
    m = n_groups * k
    sums = (_summing_matrix(np.r_[cell, m + cell[hit]], 2 * m, len(y), np.r_[case, case[hit]]) @ weights).astype(float)
    support, correct = sums[:m].reshape(n_groups, k, -1), sums[m:].reshape(n_groups, k, -1)
    return nanmean(_divide(correct, support), axis=1), _divide(correct.sum(axis=1), support.sum(axis=1))


def _summing_matrix(targets: np.ndarray, n_rows: int, n_cols: int, columns: np.ndarray | None = None
                    ) -> sparse.csr_matrix:
    """(n_rows, n_cols) 0/1 matrix with a one at (targets[i], columns[i]) (default column i): a product with it sums
    the rows of a dense matrix by target row."""
    columns = np.arange(len(targets)) if columns is None else np.asarray(columns)
    order = np.argsort(targets, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(targets, minlength=n_rows))]
    return sparse.csr_matrix((np.ones(len(targets), dtype=np.float32), columns[order], indptr), shape=(n_rows, n_cols))


def class_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray, groups: np.ndarray | None = None,
              n_groups: int = 1) -> np.ndarray:
    """One-vs-rest AUC of ``score`` per group and resample column, ``(n_groups, columns)``: the weighted
    Mann-Whitney count (ties count half), NaN where a group's resample lacks positives or negatives. ``groups`` as
    in :func:`_stack`.

    The cases are sorted by group, then score. What each positive needs is the negative weight before it within its
    group (and, for a tied score, up to the end of its tie): the negatives' weights are summed between consecutive
    such positions (a sparse product) and only those sums are accumulated, so the cumulative sum runs over the
    positives, not over every case."""
    cols = weights.shape[1]
    case, g = _stack(groups, weights.shape[0])
    n = len(case)
    order = np.lexsort((score[case], g))
    case = case[order]
    gs, ss, pos = g[order], score[case], np.asarray(positive, bool)[case]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_block = new_group | np.r_[True, ss[1:] != ss[:-1]]   # a block: equal scores within a group
    b_start, g_start = np.flatnonzero(new_block), np.flatnonzero(new_group)
    b_end, g_end = np.r_[b_start[1:], n], np.r_[g_start[1:], n]
    block = np.cumsum(new_block) - 1
    pos_at, neg_at = np.flatnonzero(pos), np.flatnonzero(~pos)
    q_lt, q_le = b_start[block[pos_at]], b_end[block[pos_at]]
    tied = q_le - q_lt > 1
    bounds = np.unique(np.r_[g_start, q_lt, q_le[tied], n])
    seg = np.searchsorted(bounds, neg_at, side="right") - 1
    sums = _summing_matrix(seg, len(bounds), weights.shape[0], case[neg_at]) @ weights
    cum = np.empty((len(bounds) + 1, cols), dtype=np.float32)   # cum[b]: negative weight before bounds[b]
    cum[0] = 0.0
    np.cumsum(sums, axis=0, out=cum[1:])

    def before(q):
        return cum[np.searchsorted(bounds, q)]

    below = before(q_lt)   # negative weight before each positive, counted from the first sorted case
    if tied.any():
        below[tied] += 0.5 * (before(q_le[tied]) - below[tied])
    w_pos = weights[case[pos_at]]
    by_group = _summing_matrix(gs[pos_at], n_groups, len(pos_at))
    # float64 from here: these sums run over every positive of a group and become differences of large numbers
    num, n_pos = by_group @ np.multiply(w_pos, below, dtype=np.float64), (by_group @ w_pos).astype(np.float64)
    n_neg = np.zeros((n_groups, cols))
    present = gs[g_start]
    start = before(g_start).astype(np.float64)
    n_neg[present] = before(g_end) - start
    num[present] -= start * n_pos[present]   # count from the group's first case instead
    return _divide(num, n_pos * n_neg)


def class_aucs(weights: np.ndarray, y: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None,
               n_groups: int = 1) -> np.ndarray:
    """(K, n_groups, columns) one-vs-rest AUC of every class."""
    y = np.asarray(y, dtype=np.int64)
    return np.stack([class_auc(weights, y == c, prob[:, c], groups, n_groups) for c in range(prob.shape[1])])


def intervals(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of each row of (M, R) resample values over its defined values (NaN for a row with fewer
    than two)."""
    s = np.atleast_2d(np.asarray(samples, dtype=float))
    lo, hi = np.full(len(s), np.nan), np.full(len(s), np.nan)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    defined = (~np.isnan(s)).sum(axis=1)
    full = defined == s.shape[1]
    if full.any() and s.shape[1] >= 2:   # np.percentile is vectorised; nanpercentile loops over rows
        lo[full], hi[full] = np.percentile(s[full], q, axis=1)
    part = ~full & (defined >= 2)
    if part.any():
        lo[part], hi[part] = np.nanpercentile(s[part], q, axis=1)
    return lo, hi


def _opt(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval of the defined resample values (None when fewer than two are defined)."""
    lo, hi = intervals(np.ravel(samples), level)
    return _opt(lo[0]), _opt(hi[0])


def p_value(diff_samples: np.ndarray) -> float | None:
    """Two-sided bootstrap p of a difference from its resamples (see the module docstring)."""
    d = np.asarray(diff_samples, dtype=float)
    d = d[~np.isnan(d)]
    if not len(d):
        return None
    r = len(d)
    below, above = (np.sum(d <= 0) + 1) / (r + 1), (np.sum(d >= 0) + 1) / (r + 1)
    return float(min(1.0, 2 * min(below, above)))


def summary(values: np.ndarray, level: float = LEVEL) -> dict:
    """``{"value": observed, "lo": ..., "hi": ...}`` of a (1 + R,) array (column 0 observed)."""
    v = np.asarray(values, dtype=float)
    lo, hi = interval(v[1:], level)
    return {"value": _opt(v[0]), "lo": lo, "hi": hi}


def paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], level: float = LEVEL) -> dict:
    """Paired bootstrap of mean(A) − mean(B) over matched blocks: ``a[i]`` and ``b[i]`` are (1 + R,) score arrays
    of the two methods on block i's cases under the same resamples. Returns the observed mean difference, its
    percentile interval and the two-sided bootstrap p."""
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs matched blocks: {len(a)} against {len(b)}")
    if not len(a):
        return {"n_blocks": 0, "diff": None, "lo": None, "hi": None, "p": None, "resamples": 0}
    d = np.mean([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b)], axis=0)
    lo, hi = interval(d[1:], level)
    return {"n_blocks": len(a), "diff": _opt(d[0]), "lo": lo, "hi": hi,
            "p": p_value(d[1:]), "resamples": int(len(d) - 1)}


class MeanOverRuns:
    """Per-resample mean over runs of (1 + R,) score arrays, accumulated run by run under keys (a method, a
    subgroup...): with the runs' shared resamples, the interval of the mean is a case-level interval of the
    method's mean score. NaN entries (a score undefined in one run's resample) are left out of that column."""

    def __init__(self) -> None:
        self.sums: dict = {}
        self.counts: dict = {}
        self.runs: dict = {}

    def add(self, key, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=float)
        ok = ~np.isnan(v)
        if key not in self.sums:
            self.sums[key], self.counts[key], self.runs[key] = np.zeros(len(v)), np.zeros(len(v)), 0
        self.sums[key] += np.where(ok, v, 0.0)
        self.counts[key] += ok
        self.runs[key] += int(ok[0])

    def merge(self, other: "MeanOverRuns") -> None:
        for key, total in other.sums.items():
            if key not in self.sums:
                self.sums[key], self.counts[key], self.runs[key] = total, other.counts[key], other.runs[key]
            else:
                self.sums[key] = self.sums[key] + total
                self.counts[key] = self.counts[key] + other.counts[key]
                self.runs[key] += other.runs[key]

    def mean(self, key) -> np.ndarray:
        return _divide(self.sums[key], self.counts[key])

    def keys(self):
        return self.sums.keys()
