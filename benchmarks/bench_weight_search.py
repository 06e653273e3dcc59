"""Benchmark of the Fusion Scheme 1 weight search: the package's exact interval scorer against a plain
Python reference loop, in the same run, on the same problem.

Problem: 400 cases x 8 derm7pt-like tasks (class counts 5,3,3,3,2,3,2,3), three predictions of
different strength. For each grid size (50 and 100 points per axis by default) it times

* the reference loop: every deduplicated candidate in lexicographic order, fused per task in float64
  (``w0*P0 + w1*P1 + w2*P2``), ``np.argmax``, first strict maximum kept;
* ``search_simplex`` (the package's default and only three-prediction scorer),

prints both choices and times side by side, and fails if the choices differ. The machine load
(1-minute load average and CPU count) is printed first, since the timings depend on it.

    python benchmarks/bench_weight_search.py [--cases 400] [--grids 50,100]
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np

from skinlesion.evaluation.search import search_simplex

CLASS_COUNTS = [5, 3, 3, 3, 2, 3, 2, 3]


def make_problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(len(CLASS_COUNTS))]
    y = {t: rng.integers(0, k, n) for t, k in zip(tasks, CLASS_COUNTS)}
    preds = []
    for signal in (1.2, 0.5, 1.0):  # derm, clinic, fusion-like strengths
        p = {}
        for t, k in zip(tasks, CLASS_COUNTS):
            logits = rng.normal(size=(n, k))
            logits[np.arange(n), y[t]] += signal
            e = np.exp(logits)
            p[t] = e / e.sum(1, keepdims=True)
        preds.append(p)
    return preds, y


def reference_loop(preds, y, grid_n: int, low: float = 0.05, high: float = 1.0):
    """The search written out candidate by candidate: (weights, correct count, index, n candidates)."""
    g = np.linspace(low, high, grid_n)
    seen, best, best_w, best_idx, idx = set(), -1, None, None, -1
    for i, j, k in itertools.product(range(grid_n), repeat=3):
        s = g[i] + g[j] + g[k]
        w = (g[i] / s, g[j] / s, g[k] / s)
        key = tuple(np.round(w, 9))
        if key in seen:
            continue
        seen.add(key)
        idx += 1
        correct = 0
        for t in y:
            fused = w[0] * preds[0][t] + w[1] * preds[1][t] + w[2] * preds[2][t]
            correct += int(np.sum(fused.argmax(1) == y[t]))
        if correct > best:
            best, best_w, best_idx = correct, w, idx
    return best_w, best, best_idx, idx + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--grids", default="50,100", help="comma-separated grid sizes")
    args = ap.parse_args()
    grids = [int(v) for v in args.grids.split(",")]
    preds, y = make_problem(args.cases)
    total = args.cases * len(CLASS_COUNTS)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.cases} cases x {len(CLASS_COUNTS)} tasks, classes {CLASS_COUNTS}; "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start")
    print(f"{'scorer':<26}{'grid_n':>7}{'candidates':>12}{'seconds':>10}  {'index':>7}  "
          "weights (derm, clinic, fusion) / correct / AVG ACC")

    def row(name, grid_n, n_cand, sec, idx, w, correct):
        print(f"{name:<26}{grid_n:>7}{n_cand:>12,}{sec:>10.3f}  {idx:>7}  ({w[0]:.6f}, {w[1]:.6f}, {w[2]:.6f})"
              f" / {correct} / {100 * correct / total:.2f}%")

    for grid_n in grids:
        t0 = time.perf_counter()
        res = search_simplex(preds, y, grid_n)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        bw, bcorrect, bidx, bn = reference_loop(preds, y, grid_n)
        loop = time.perf_counter() - t0
        row("reference loop", grid_n, bn, loop, bidx, bw, bcorrect)
        row(f"search_simplex ({res.method})", grid_n, res.n_candidates, fast, res.index, res.weights, res.correct)
        same = (res.index == bidx and res.correct == bcorrect and res.n_candidates == bn
                and res.weights == [float(v) for v in bw])
        print(f"{'':<26}  identical choice: {same}; speed-up {loop / fast:,.0f}x")
        assert same, f"grid_n={grid_n}: the scorer and the reference loop disagree"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at the end")


if __name__ == "__main__":
    main()
