"""Decision-level weight searches of FusionM4Net (Fusion Schemes 1 and 2).

* 3-prediction search (Fusion Scheme 1): candidates ``(g_i, g_j, g_k) / (g_i + g_j + g_k)`` over
  ``g = linspace(0.05, 1, grid_n)`` in lexicographic (i, j, k) order, deduplicated at 1e-9 (first kept);
  score = mean over tasks of accuracy(argmax of the weighted sum); the first strict maximum wins.
* 2-prediction search (Fusion Scheme 2): ``w in linspace(0, 1, 100)``, ``P = w*P1 + (1-w)*P2``, first max.

Both are fitted on validation predictions and applied unchanged to test.

Scores are integer counts of correct (case, task) pairs, and every count is *exactly* the one obtained
by fusing with the candidate's normalised weights in float64 (``w0*P0 + w1*P1 + w2*P2``) and taking
``argmax`` (first index on equal values), so candidate ties are real ties and the lexicographic
tie-break is well defined.

Three predictions are scored by an interval sweep: "class y wins" is a set of linear inequalities
``(g_i·Δ0 + g_j·Δ1) + g_k·Δ2 > 0`` (``≥`` against later classes), so for fixed (i, j) the correct
candidates of a (case, task) form one interval of k, counted with a difference array. Floating-point
rounding can flip a comparison only where a grid point lies within a tiny tolerance of a decision
boundary; every such (case, task, i, j) row is re-scored candidate by candidate with the same fused
float64 argmax, which makes the sweep exact. Other prediction counts fuse candidates in batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import predictions as P
from .metrics import evaluate_predictions

Preds = Mapping[str, np.ndarray]  # task -> (N, K) probabilities

# A comparison between two fused class scores can only come out differently in float64 than in exact
# arithmetic when the exact margin is within a few ulp of the values (~1e-15 of their scale); rows with
# a grid point this close (x the values' scale) to a boundary are re-scored exactly.
BOUNDARY_TOL = 1e-12


@dataclass
class SearchResult:
    weights: list[float]        # one per prediction, in the order given
    score: float                # mean task accuracy on the search split
    correct: int                # correct (case, task) pairs behind ``score``
    index: int                  # position of the winner in the (deduplicated) candidate list
    n_candidates: int
    method: str                 # "interval" (three predictions) or "fused" (batched fusion)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- candidates

def grid_weights(m: int = 3, grid_n: int = 50, low: float = 0.05, high: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The grid values ``g`` and the normalised weights of every cell of the full ``grid_n**m`` grid,
    in lexicographic order (``raw / raw.sum()``, the weights every scorer fuses with)."""
    g = np.linspace(low, high, grid_n)
    raw = np.stack(np.meshgrid(*([g] * m), indexing="ij"), axis=-1).reshape(-1, m)
    return g, raw / raw.sum(axis=1, keepdims=True)


def simplex_candidates(m: int = 3, grid_n: int = 50, low: float = 0.05, high: float = 1.0):
    """Deduplicated normalised grid in lexicographic order.

    Returns ``(weights (C, m), flat)``, where ``flat`` indexes each kept candidate in the full
    ``grid_n**m`` lexicographic grid.
    """
    _, w = grid_weights(m, grid_n, low, high)
    flat = _first_distinct(w)
    return w[flat], flat


def _first_distinct(w: np.ndarray) -> np.ndarray:
    """Sorted indices of the first row of every distinct ``np.round(w, 9)`` row.

    ``np.round(x, 9)`` is ``rint(x·1e9)/1e9``, so rows are equal after rounding iff their integers
    ``rint(x·1e9)`` are. For three weights summing to 1 the third integer is within a few units of
    ``1e9 - k0 - k1``, so one int64 key holds a row and a 1-D unique (a fast sort) does the work.
    """
    keys = np.rint(w * 1e9).astype(np.int64)
    if w.shape[1] == 3 and len(w) and keys.min() >= 0 and keys.max() < 2 ** 30:
        delta = keys[:, 2] - (10 ** 9 - keys[:, 0] - keys[:, 1])
        if np.abs(delta).max() < 4:
            packed = ((keys[:, 0] << 30) | keys[:, 1]) * 8 + (delta + 4)
            return np.sort(np.unique(packed, return_index=True)[1])
    return np.sort(np.unique(keys, axis=0, return_index=True)[1])


def line_candidates(n: int = 100) -> np.ndarray:
    w = np.linspace(0.0, 1.0, n)
    return np.stack([w, 1.0 - w], axis=1)


# ------------------------------------------------------------------------------------------- scoring

def _check(preds: Sequence[Preds], y: Mapping[str, np.ndarray]) -> tuple[list[str], int]:
    if len(preds) < 2:
        raise ValueError("a weight search needs at least two predictions")
    tasks = list(preds[0])
    for p in preds[1:]:
        if list(p) != tasks or any(np.shape(p[t]) != np.shape(preds[0][t]) for t in tasks):
            raise ValueError("all predictions must cover the same tasks with the same shapes")
    n = np.shape(preds[0][tasks[0]])[0]
    for t in tasks:
        if len(y[t]) != n:
            raise ValueError(f"task {t!r}: {len(y[t])} targets for {n} cases")
        if not all(np.isfinite(np.asarray(p[t], dtype=np.float64)).all() for p in preds):
            raise ValueError(f"task {t!r}: predictions contain NaN or infinite values")
        k = np.shape(preds[0][t])[1]
        yt = np.asarray(y[t])
        if len(yt) and (yt.min() < 0 or yt.max() >= k):
            raise ValueError(f"task {t!r}: targets outside 0..{k - 1}")
    return tasks, n


def fuse(preds: Sequence[Preds], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_m weights[m] * preds[m]`` per task, accumulated in prediction order."""
    out = {}
    for t in preds[0]:
        acc = weights[0] * np.asarray(preds[0][t], dtype=np.float64)
        for w, p in zip(weights[1:], preds[1:]):
            acc = acc + w * np.asarray(p[t], dtype=np.float64)
        out[t] = acc
    return out


def mean_task_accuracy(probs: Preds, y: Mapping[str, np.ndarray]) -> float:
    return float(np.mean([np.mean(np.asarray(probs[t]).argmax(1) == np.asarray(y[t])) for t in probs]))


def correct_counts_fused(preds: Sequence[Preds], y: Mapping[str, np.ndarray], weights: np.ndarray,
                         chunk_elems: int = 4_000_000) -> np.ndarray:
    """Correct (case, task) pairs of every candidate row of ``weights`` (C, M), by batched fusion
    (``O(C·N·ΣK)``; used for the line search and for other than three predictions)."""
    tasks, n = _check(preds, y)
    weights = np.asarray(weights, dtype=np.float64)
    kmax = max(preds[0][t].shape[1] for t in tasks)
    chunk = max(1, chunk_elems // max(n * kmax, 1))
    stacks = {t: [np.asarray(p[t], dtype=np.float64)[None] for p in preds] for t in tasks}
    out = np.zeros(len(weights), dtype=np.int64)
    for s in range(0, len(weights), chunk):
        w = weights[s:s + chunk, :, None, None]
        for t in tasks:
            ps = stacks[t]
            fused = w[:, 0] * ps[0]
            for m in range(1, len(ps)):
                fused = fused + w[:, m] * ps[m]
            out[s:s + chunk] += (fused.argmax(axis=2) == np.asarray(y[t])).sum(axis=1)
    return out


@dataclass
class _Task:
    """One task's "true class beats class c" inequalities ``a + g_k·d2 > 0`` with ``a = g_i·d0 + g_j·d1``,
    as (K-1, 1, N) arrays; ``f = a·slope + offset`` is where the boundary falls on the k axis."""
    p: np.ndarray          # (3, N, K) predictions
    y: np.ndarray          # (N,)
    d0: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    strict: np.ndarray     # class c comes before y: y must be strictly larger (argmax takes the first max)
    exact_tie: np.ndarray  # all three differences are exactly 0: a bitwise tie in every fusion
    lower_off: np.ndarray  # 0 where d2 > 0 (a lower bound k >= f), else -inf
    upper_off: np.ndarray  # 0 where d2 < 0 (an upper bound k <= f), else +inf
    flat: np.ndarray       # d2 (near) 0: the inequality does not depend on g_k
    slope: np.ndarray
    near: np.ndarray       # |ceil(f) - f - 1/2| >= near: a grid point within tolerance of the boundary


def _task(p: Sequence[np.ndarray], y: np.ndarray, low: float, h: float, tol: float) -> _Task:
    a = np.stack([np.asarray(q, dtype=np.float64) for q in p])  # (3, N, K)
    n, k = a.shape[1:]
    others = np.array([[c for c in range(k) if c != t] for t in range(k)], dtype=np.int64).reshape(k, k - 1)[y]
    true = np.take_along_axis(a, y[None, :, None], axis=2)
    other = np.take_along_axis(a, np.broadcast_to(others[None], (3, n, k - 1)), axis=2)
    d = true - other
    flat = np.abs(d[2]) < 1e-200   # (near) zero slope: treated as constant; any flip there is re-scored
    safe = np.where(flat, 1.0, d[2] * h)
    slope = np.where(flat, 0.0, -1.0 / safe)
    # a grid point k has |a + g_k·d2| <= tol iff |k - f| <= tol / |d2·h|; flat rows are checked on |a|
    near = np.where(flat, np.inf, 0.5 - tol / np.abs(safe))
    # constraint axis first: the per-row max/min over constraints are then elementwise over long rows
    lower_off = np.where((d[2] > 0) & ~flat, 0.0, -np.inf)   # only d2 > 0 bounds k from below (k >= f) ...
    upper_off = np.where((d[2] < 0) & ~flat, 0.0, np.inf)    # ... and only d2 < 0 from above (k <= f)
    t = [np.ascontiguousarray(v.T)[:, None, :] for v in
         (d[0], d[1], d[2], others < y[:, None], (d == 0).all(axis=0), lower_off, upper_off, flat, slope, near)]
    return _Task(a, y, *t)


def correct_counts_grid(preds: Sequence[Preds], y: Mapping[str, np.ndarray], grid_n: int = 50, low: float = 0.05,
                        high: float = 1.0, chunk_elems: int = 131_072, workers: int | None = None) -> np.ndarray:
    """Exact correct (case, task) counts of every (i, j, k) of the full ``grid_n**3`` grid of three
    predictions (flat, lexicographic), by the interval sweep with boundary re-scoring (module docstring).

    (i, j) pairs are processed in chunks on ``workers`` threads (numpy releases the GIL in its
    kernels; chunks write disjoint rows, so no locking is needed).
    """
    tasks, n = _check(preds, y)
    if len(preds) != 3:
        raise ValueError("the interval sweep scores exactly three predictions")
    if not (0 < low < high) or grid_n < 2:
        raise ValueError(f"the grid needs 0 < low < high and at least 2 points (got {low}, {high}, {grid_n})")
    g, wfull = grid_weights(3, grid_n, low, high)
    gn, h = grid_n, (high - low) / (grid_n - 1)
    scale = max(float(np.max(np.abs(np.asarray(p[t], dtype=np.float64)))) for p in preds for t in tasks) or 1.0
    tol = BOUNDARY_TOL * scale
    cons = [_task([p[t] for p in preds], np.asarray(y[t], dtype=np.int64), low, h, tol) for t in tasks]
    always = sum(n for c in cons if c.d0.shape[0] == 0)   # one-class tasks are always right
    cons = [c for c in cons if c.d0.shape[0] > 0]
    ii, jj = np.meshgrid(np.arange(gn), np.arange(gn), indexing="ij")
    gi, gj = g[ii.ravel()], g[jj.ravel()]
    counts = np.zeros((gn * gn, gn + 1), dtype=np.int64)
    fixes = np.zeros(gn ** 3, dtype=np.int64)
    per_pair = sum(c.d0.size for c in cons)  # constraints per (i, j) pair
    chunk = max(1, chunk_elems // max(per_pair, 1))
    ks = np.arange(gn)
    offset = -low / h

    def run(start: int) -> None:
        q = slice(start, min(start + chunk, gn * gn))
        nq = q.stop - q.start
        big = max(c.d0.size for c in cons) * nq
        buf_a, buf_f, buf_c = (np.empty(big) for _ in range(3))
        diff = np.zeros(nq * (gn + 1), dtype=np.int64)
        for c in cons:
            m, n_ = c.d0.shape[0], c.d0.shape[2]
            shape = (m, nq, n_)
            size = m * nq * n_
            a = np.multiply(gi[None, q, None], c.d0, out=buf_a[:size].reshape(shape))
            f = np.multiply(gj[None, q, None], c.d1, out=buf_f[:size].reshape(shape))
            a += f                                                   # a = g_i·d0 + g_j·d1
            np.multiply(a, c.slope, out=f)
            f += offset                                              # boundary on the k axis
            cf = np.ceil(f, out=buf_c[:size].reshape(shape))
            # grid points k >= ceil(f) satisfy a lower bound, k < ceil(f) an upper bound (a point exactly
            # on a boundary is re-scored below, so the side it lands on here does not matter)
            lo = np.maximum.reduce(cf + c.lower_off, axis=0)
            hi = np.minimum.reduce(cf + c.upper_off, axis=0)
            if c.flat.any():  # constant in k: holds iff a > 0, or a == 0 against a later class
                fails = c.flat & ~((a > 0) | ((a == 0) & ~c.strict))
                hi = np.where(np.logical_or.reduce(fails, axis=0), 0.0, hi)
            lo = np.clip(lo, 0, gn).astype(np.int64).ravel()
            hi = np.clip(hi, 0, gn).astype(np.int64).ravel()
            hi = np.maximum(hi, lo)                                  # empty interval: +1 and -1 cancel
            base = np.repeat(np.arange(nq) * (gn + 1), n_)
            diff += np.bincount(base + lo, minlength=nq * (gn + 1))
            diff -= np.bincount(base + hi, minlength=nq * (gn + 1))
            # rows with a grid point within tolerance of a boundary: re-score every k exactly
            cf -= f
            cf -= 0.5
            close = np.abs(cf, out=cf) >= c.near
            if c.flat.any():
                close |= c.flat & ~c.exact_tie & (np.abs(a) <= tol)
            rows = np.flatnonzero(np.logical_or.reduce(close, axis=0).ravel())
            if not len(rows):
                continue
            rq, rn = np.divmod(rows, n_)
            flat_idx = ((q.start + rq)[:, None] * gn + ks[None]).ravel()
            w = wfull[flat_idx]
            cases = np.repeat(rn, gn)
            fused = w[:, 0:1] * c.p[0][cases] + w[:, 1:2] * c.p[1][cases] + w[:, 2:3] * c.p[2][cases]
            exact = fused.argmax(axis=1) == c.y[cases]
            swept = ((lo[rows][:, None] <= ks[None]) & (ks[None] < hi[rows][:, None])).ravel()
            np.add.at(fixes, flat_idx, exact.astype(np.int64) - swept)
        counts[q] = diff.reshape(nq, gn + 1)

    starts = range(0, gn * gn, chunk)
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, starts))
    else:
        for st in starts:
            run(st)
    return np.cumsum(counts, axis=1)[:, :gn].reshape(-1) + fixes + always


# ------------------------------------------------------------------------------------------ searches

def search_simplex(preds: Sequence[Preds], y: Mapping[str, np.ndarray], grid_n: int = 50,
                   low: float = 0.05, high: float = 1.0) -> SearchResult:
    """Fusion Scheme 1 weight search over ``len(preds)`` predictions: the first candidate with the
    most correct (case, task) pairs, scored exactly (module docstring)."""
    tasks, n = _check(preds, y)
    m = len(preds)
    weights, flat = simplex_candidates(m, grid_n, low, high)
    if m == 3 and grid_n >= 2:
        correct, method = correct_counts_grid(preds, y, grid_n, low, high)[flat], "interval"
    else:
        correct, method = correct_counts_fused(preds, y, weights), "fused"
    best = int(np.argmax(correct))  # first maximum = lexicographic tie-break
    return SearchResult([float(v) for v in weights[best]], float(correct[best]) / (n * len(tasks)),
                        int(correct[best]), best, len(weights), method)


def search_line(p1: Preds, p2: Preds, y: Mapping[str, np.ndarray], n_steps: int = 100) -> SearchResult:
    """Fusion Scheme 2 search: ``w*P1 + (1-w)*P2`` over ``linspace(0, 1, n_steps)``; first max."""
    tasks, n = _check([p1, p2], y)
    weights = line_candidates(n_steps)
    correct = correct_counts_fused([p1, p2], y, weights)
    best = int(np.argmax(correct))
    return SearchResult([float(v) for v in weights[best]], float(correct[best]) / (n * len(tasks)),
                        int(correct[best]), best, len(weights), "fused")


# ------------------------------------------------------------------------------------------- run dir

def default_branch_order(names: Sequence[str]) -> list[str]:
    """(derm, clinic, fusion) when present (the order fixes the lexicographic tie-break), else column order."""
    canonical = ["derm", "clinic", "fusion"]
    if set(canonical) <= set(names):
        return canonical
    return list(names)


def _summary(df, dataset: str | None) -> dict:
    m = evaluate_predictions(df, "searched", dataset)
    out = {"avg_acc": m["avg_acc"], "task_acc": {t: v["acc"] for t, v in m["tasks"].items()}}
    if "avg_auc" in m:
        out["avg_auc"] = m["avg_auc"]
    return out


def search_run(run_dir: str | Path, grid_n: int = 50, branches: Sequence[str] | None = None,
               n_steps: int = 100) -> dict:
    """Search weights on ``run_dir/predictions/val.parquet``, apply to test, write ``run_dir/search/``."""
    run_dir = Path(run_dir)
    pred_dir = run_dir / "predictions"
    val_path, test_path = pred_dir / "val.parquet", pred_dir / "test.parquet"
    if not val_path.exists():
        raise FileNotFoundError(f"{val_path} not found")
    val = P.read_predictions(val_path)
    test = P.read_predictions(test_path) if test_path.exists() else None
    names = list(branches) if branches else default_branch_order(P.branches(val))
    if len(names) < 2:
        raise ValueError(f"need at least two branches to search weights, have {names}")
    dataset = None
    if (run_dir / "run.json").exists():
        dataset = json.loads((run_dir / "run.json").read_text()).get("dataset")
    classes = P.task_classes(val, names[0])
    y_val = P.targets(val)
    preds_val = [P.branch_probs(val, b) for b in names]
    if len(names) == 2:
        res = search_line(preds_val[0], preds_val[1], y_val, n_steps)
        kind = "line"
    else:
        res = search_simplex(preds_val, y_val, grid_n)
        kind = "simplex"
    weights = dict(zip(names, res.weights))

    out_dir = run_dir / "search"
    out_dir.mkdir(parents=True, exist_ok=True)
    found = res.to_dict()
    found.pop("weights")
    report = {"kind": kind, "branches": names, "weights": weights, "grid_n": grid_n if kind == "simplex" else None,
              "n_steps": n_steps if kind == "line" else None, **found}
    splits = {"val": val, "test": test}
    for split, df in splits.items():
        if df is None:
            report[split] = None
            continue
        fused = fuse([P.branch_probs(df, b) for b in names], res.weights)
        fdf = P.to_frame(df["case_id"], P.targets(df), {"searched": fused}, classes)
        fdf.to_parquet(out_dir / f"{split}_fused.parquet", index=False)
        report[split] = _summary(fdf, dataset)
        report[split]["plain_average_avg_acc"] = evaluate_predictions(df, {b: 1.0 for b in names}, dataset)["avg_acc"]
    (out_dir / "weights.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinlesion.evaluation.search",
                                 description="Decision-level weight search on a run's saved predictions.")
    ap.add_argument("run_dir")
    ap.add_argument("--grid-n", type=int, default=50, help="points per axis of the 3-way grid: g = linspace(0.05, 1, N)")
    ap.add_argument("--steps", type=int, default=100, help="points of the 2-way line search")
    ap.add_argument("--branches", default=None,
                    help="comma-separated branch order (default: derm,clinic,fusion when present)")
    args = ap.parse_args(argv)
    try:
        rep = search_run(args.run_dir, args.grid_n, args.branches.split(",") if args.branches else None,
                         args.steps)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("weights: " + ", ".join(f"{b}={w:.4f}" for b, w in rep["weights"].items()))
    print(f"val AVG ACC:  {100 * rep['val']['avg_acc']:.2f}%  (plain average {100 * rep['val']['plain_average_avg_acc']:.2f}%)")
    if rep["test"] is not None:
        print(f"test AVG ACC: {100 * rep['test']['avg_acc']:.2f}%  (plain average {100 * rep['test']['plain_average_avg_acc']:.2f}%)")
    print(f"wrote {Path(args.run_dir) / 'search'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
