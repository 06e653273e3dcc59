"""Benchmark of the Fusion Scheme 1 weight search (METHODS §5.3, A-28).

Times the vectorised 3-prediction simplex search on 400 cases × 8 derm7pt tasks (class counts
5,3,3,3,2,3,2,3) for grid_n 50 and 100, and a plain Python loop over the candidates (numpy per
candidate, as in the reference algorithm) on a smaller grid in the same run; checks that both pick
the same weights on the small grid and prints candidates, seconds, candidates/s and the speed ratio.

    python benchmarks/bench_weight_search.py [--cases 400] [--small-grid 15]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from skinlesion.evaluation.search import search_simplex, search_simplex_loop

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--small-grid", type=int, default=15)
    args = ap.parse_args()
    preds, y = make_problem(args.cases)
    print(f"{args.cases} cases x {len(CLASS_COUNTS)} tasks, classes {CLASS_COUNTS}")
    print(f"{'scorer':<28}{'grid_n':>7}{'candidates':>12}{'seconds':>10}{'cand/s':>14}  weights (derm, clinic, fusion) / AVG ACC")

    def row(name, grid_n, n_cand, sec, w, score):
        print(f"{name:<28}{grid_n:>7}{n_cand:>12,}{sec:>10.3f}{n_cand / sec:>14,.0f}  "
              f"({w[0]:.4f}, {w[1]:.4f}, {w[2]:.4f}) / {100 * score:.2f}%")

    t0 = time.perf_counter()
    bw, bcorrect, _, bn = search_simplex_loop(preds, y, args.small_grid)
    bsec = time.perf_counter() - t0
    total = args.cases * len(CLASS_COUNTS)
    row("python loop (brute force)", args.small_grid, bn, bsec, bw, bcorrect / total)
    brute_rate = bn / bsec

    results = {}
    for method, grid_n in (("sweep", args.small_grid), ("exact", args.small_grid), ("exact", 50),
                           ("sweep", 50), ("sweep", 100)):
        t0 = time.perf_counter()
        r = search_simplex(preds, y, grid_n, method=method)
        sec = time.perf_counter() - t0
        results[(method, grid_n)] = (r, sec)
        row(f"vectorised ({method})", grid_n, r.n_candidates, sec, r.weights, r.score)
        if grid_n == args.small_grid:
            same = np.allclose(r.weights, bw, rtol=0, atol=1e-15) and r.correct == bcorrect
            print(f"{'':<28}  same weights and score as the loop: {same}")
            assert same, "vectorised search disagrees with the brute-force loop"

    (re, _), (rs, _) = results[("exact", 50)], results[("sweep", 50)]
    print(f"grid_n=50: exact and sweep scorers pick the same weights: "
          f"{re.index == rs.index and re.correct == rs.correct}")
    print()
    for key in (("sweep", 50), ("sweep", 100), ("exact", 50)):
        r, sec = results[key]
        print(f"speed ratio vs python loop, {key[0]} grid_n={key[1]}: "
              f"{(r.n_candidates / sec) / brute_rate:,.0f}x candidates/s "
              f"(loop would need ~{r.n_candidates / brute_rate:,.0f} s)")


if __name__ == "__main__":
    main()
