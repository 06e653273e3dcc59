"""Decision-level weight searches of FusionM4Net (METHODS §5.3–5.4, A-28).

* 3-prediction search (Fusion Scheme 1): candidates ``(g_i, g_j, g_k) / (g_i + g_j + g_k)`` over
  ``g = linspace(0.05, 1, grid_n)`` in lexicographic (i, j, k) order, deduplicated at 1e-9 (first kept);
  score = mean over tasks of accuracy(argmax of the weighted sum); the first strict maximum wins.
* 2-prediction search (Fusion Scheme 2): ``w in linspace(0, 1, 100)``, ``P = w*P1 + (1-w)*P2``, first max.

Both are fitted on validation predictions and applied unchanged to test.

Scoring is exact integer counting of correct (case, task) pairs, so candidate ties are real ties and
the lexicographic tie-break is well defined. Two scorers exist:

* ``exact``: fuse each batch of candidates and take the argmax (``O(C·N·ΣK)`` memory traffic);
* ``sweep`` (3 predictions): argmax is invariant to the positive normalisation, so "class y wins"
  is a set of linear inequalities ``g·(P_y − P_k) > 0`` (``≥ 0`` for k > y, matching argmax's
  first-index rule). For fixed (i, j) each inequality bounds g_k from one side, so the correct
  candidates of a (case, task) form one interval of k; intervals are counted with a difference
  array. This is ~20× faster than ``exact`` and agrees with it except when a candidate lies within
  floating-point rounding of a decision boundary.
"""
from __future__ import annotations

import itertools

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


@dataclass
class SearchResult:
    weights: list[float]        # one per prediction, in the order given
    score: float                # mean task accuracy on the search split
    correct: int                # correct (case, task) pairs behind ``score``
    index: int                  # position of the winner in the (deduplicated) candidate list
    n_candidates: int
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- candidates

def simplex_candidates(m: int = 3, grid_n: int = 50, low: float = 0.05, high: float = 1.0):
    """Deduplicated normalised grid in lexicographic order.

    Returns ``(weights (C, m), flat)``, where ``flat`` indexes each kept candidate in the full
    ``grid_n**m`` lexicographic grid.
    """
    g = np.linspace(low, high, grid_n)
    raw = np.stack(np.meshgrid(*([g] * m), indexing="ij"), axis=-1).reshape(-1, m)
    w = raw / raw.sum(axis=1, keepdims=True)
    _, first = np.unique(np.round(w, 9), axis=0, return_index=True)
    flat = np.sort(first)
    return w[flat], flat


def line_candidates(n: int = 100) -> np.ndarray:
    w = np.linspace(0.0, 1.0, n)
    return np.stack([w, 1.0 - w], axis=1)


# ------------------------------------------------------------------------------------------- scoring

def _check(preds: Sequence[Preds], y: Mapping[str, np.ndarray]) -> tuple[list[str], int]:
    if len(preds) < 2:
        raise ValueError("a weight search needs at least two predictions")
    tasks = list(preds[0])
    for p in preds[1:]:
        if list(p) != tasks or any(p[t].shape != preds[0][t].shape for t in tasks):
            raise ValueError("all predictions must cover the same tasks with the same shapes")
    n = preds[0][tasks[0]].shape[0]
    for t in tasks:
        if len(y[t]) != n:
            raise ValueError(f"task {t!r}: {len(y[t])} targets for {n} cases")
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


def correct_counts_exact(preds: Sequence[Preds], y: Mapping[str, np.ndarray], weights: np.ndarray,
                         chunk_elems: int = 4_000_000) -> np.ndarray:
    """Correct (case, task) pairs of every candidate row of ``weights`` (C, M), by batched fusion."""
    tasks, n = _check(preds, y)
    weights = np.asarray(weights, dtype=np.float64)
    kmax = max(preds[0][t].shape[1] for t in tasks)
    chunk = max(1, chunk_elems // (n * kmax))
    stacks = {t: [np.asarray(p[t], dtype=np.float64)[None] for p in preds] for t in tasks}
    out = np.zeros(len(weights), dtype=np.int64)
    for s in range(0, len(weights), chunk):
        w = weights[s:s + chunk, :, None, None]
        for t in tasks:
            ps = stacks[t]
            fused = w[:, 0] * ps[0]
            for m in range(1, len(ps)):
                fused += w[:, m] * ps[m]
            out[s:s + chunk] += (fused.argmax(axis=2) == y[t]).sum(axis=1)
    return out


def _task_constraints(p: Sequence[np.ndarray], y: np.ndarray):
    """Per case, the K-1 inequalities 'true class beats class k' as coefficient arrays (N, K-1)."""
    a = np.stack([np.asarray(q, dtype=np.float64) for q in p])  # (3, N, K)
    n, k = a.shape[1:]
    others = np.array([[c for c in range(k) if c != t] for t in range(k)], dtype=np.int64)[y]  # (N, K-1)
    true = np.take_along_axis(a, y[None, :, None], axis=2)
    other = np.take_along_axis(a, np.broadcast_to(others[None], (3, n, k - 1)), axis=2)
    d = true - other  # (3, N, K-1)
    return d[0], d[1], d[2], others < y[:, None]


def correct_counts_sweep(preds: Sequence[Preds], y: Mapping[str, np.ndarray], g: np.ndarray,
                         chunk_elems: int = 1_000_000, workers: int | None = None) -> np.ndarray:
    """Correct (case, task) pairs of every (i, j, k) in the full ``len(g)**3`` grid (flat, lexicographic).

    (i, j) pairs are processed in chunks on ``workers`` threads (numpy releases the GIL in the
    elementwise kernels; chunks write disjoint rows, so no locking is needed).
    """
    tasks, n = _check(preds, y)
    if len(preds) != 3:
        raise ValueError("the sweep scorer handles exactly three predictions")
    g = np.asarray(g, dtype=np.float64)
    if np.any(g <= 0) or np.any(np.diff(g) <= 0):
        raise ValueError("grid values must be positive and increasing")
    gn = len(g)
    ii, jj = np.meshgrid(np.arange(gn), np.arange(gn), indexing="ij")
    gi, gj = g[ii.ravel()], g[jj.ravel()]
    counts = np.zeros((gn * gn, gn + 1), dtype=np.int64)
    cons = [_task_constraints([p[t] for p in preds], np.asarray(y[t], dtype=np.int64)) for t in tasks]
    per_pair = sum(c[0].size for c in cons)
    chunk = max(1, chunk_elems // max(per_pair, 1))

    def run(start: int) -> None:
        q = slice(start, min(start + chunk, gn * gn))
        nq = q.stop - q.start
        with np.errstate(divide="ignore", invalid="ignore"):
            for a, b, c, strict in cons:
                # sum of the (i, j) terms; class y wins iff g_k * c > -part (>= for non-strict)
                part = gi[q, None, None] * a[None] + gj[q, None, None] * b[None]
                t = -part / c[None]
                pos, neg = c > 0, c < 0
                up = np.nextafter(t, np.inf)
                # lower bound on g_k from c > 0, exclusive upper bound from c < 0, as values of g
                lower = np.where(pos, np.where(strict, up, t), -np.inf)
                upper = np.where(neg, np.where(strict, t, up), np.inf)
                zero = ~(pos | neg)
                if zero.any():
                    ok = np.where(strict, part > 0, part >= 0)
                    fail = zero & ~ok
                    lower = np.where(fail, np.inf, lower)
                    upper = np.where(fail, -np.inf, upper)
                lo = np.searchsorted(g, lower.max(axis=2).ravel(), side="left")
                hi = np.searchsorted(g, upper.min(axis=2).ravel(), side="left")
                valid = lo < hi
                base = np.repeat(np.arange(nq), a.shape[0]) * (gn + 1)
                diff = (np.bincount(base[valid] + lo[valid], minlength=nq * (gn + 1))
                        - np.bincount(base[valid] + hi[valid], minlength=nq * (gn + 1)))
                counts[q] += diff.reshape(nq, gn + 1)

    starts = range(0, gn * gn, chunk)
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, starts))
    else:
        for st in starts:
            run(st)
    return np.cumsum(counts, axis=1)[:, :gn].reshape(-1)


# ------------------------------------------------------------------------------------------ searches

def search_simplex(preds: Sequence[Preds], y: Mapping[str, np.ndarray], grid_n: int = 50,
                   low: float = 0.05, high: float = 1.0, method: str = "auto") -> SearchResult:
    """Fusion Scheme 1 weight search over ``len(preds)`` predictions (A-28)."""
    tasks, n = _check(preds, y)
    m = len(preds)
    weights, flat = simplex_candidates(m, grid_n, low, high)
    if method == "auto":
        method = "sweep" if m == 3 else "exact"
    if method == "sweep":
        correct = correct_counts_sweep(preds, y, np.linspace(low, high, grid_n))[flat]
    elif method == "exact":
        correct = correct_counts_exact(preds, y, weights)
    else:
        raise ValueError(f"unknown scorer {method!r}")
    best = int(np.argmax(correct))  # first maximum = lexicographic tie-break
    return SearchResult([float(v) for v in weights[best]], float(correct[best]) / (n * len(tasks)),
                        int(correct[best]), best, len(weights), method)


def search_simplex_loop(preds: Sequence[Preds], y: Mapping[str, np.ndarray], grid_n: int = 50, low: float = 0.05):
    """Algorithm 1 as a plain Python loop (lexicographic, dedup at 1e-9, first strict max): the slow
    reference that the vectorised search is tested and benchmarked against.

    Returns (weights, correct count, candidate index, number of candidates).
    """
    g = np.linspace(low, 1.0, grid_n)
    seen, best, best_w, best_idx, idx = set(), -1, None, None, -1
    for i, j, k in itertools.product(range(grid_n), repeat=3):
        s = g[i] + g[j] + g[k]
        w = (g[i] / s, g[j] / s, g[k] / s)
        key = tuple(np.round(w, 9))
        if key in seen:
            continue
        seen.add(key)
        idx += 1
        # every task has the same cases, so the summed correct count orders candidates like mean ACC
        correct = 0
        for t in y:
            fused = w[0] * preds[0][t] + w[1] * preds[1][t] + w[2] * preds[2][t]
            correct += int(np.sum(fused.argmax(1) == y[t]))
        if correct > best:
            best, best_w, best_idx = correct, w, idx
    return best_w, best, best_idx, idx + 1


def search_line(p1: Preds, p2: Preds, y: Mapping[str, np.ndarray], n_steps: int = 100) -> SearchResult:
    """Fusion Scheme 2 search: ``w*P1 + (1-w)*P2`` over ``linspace(0, 1, n_steps)``; first max."""
    tasks, n = _check([p1, p2], y)
    weights = line_candidates(n_steps)
    correct = correct_counts_exact([p1, p2], y, weights)
    best = int(np.argmax(correct))
    return SearchResult([float(v) for v in weights[best]], float(correct[best]) / (n * len(tasks)),
                        int(correct[best]), best, len(weights), "exact")


# ------------------------------------------------------------------------------------------- run dir

def default_branch_order(names: Sequence[str]) -> list[str]:
    """(derm, clinic, fusion) when present (A-25; fixes the lexicographic tie-break), else column order."""
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
               n_steps: int = 100, method: str = "auto") -> dict:
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
        res = search_simplex(preds_val, y_val, grid_n, method=method)
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
    ap.add_argument("--grid-n", type=int, default=50, help="points per axis of the 3-way grid (A-28)")
    ap.add_argument("--steps", type=int, default=100, help="points of the 2-way line search")
    ap.add_argument("--branches", default=None,
                    help="comma-separated branch order (default: derm,clinic,fusion when present)")
    ap.add_argument("--scorer", choices=["auto", "sweep", "exact"], default="auto")
    args = ap.parse_args(argv)
    try:
        rep = search_run(args.run_dir, args.grid_n, args.branches.split(",") if args.branches else None,
                         args.steps, args.scorer)
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
