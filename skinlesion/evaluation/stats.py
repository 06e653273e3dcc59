"""Method comparison statistics (METHODS §6.4, A-06).

Friedman test across methods with matched blocks (backbone × fold, or backbone × seed), then
pairwise two-sided Wilcoxon signed-rank tests on the same blocks. The Wilcoxon test is exact for
n ≤ 50 untied, non-zero differences (the thesis's p-values are exact-null values, e.g. 2/2^25);
when zero differences or tied |differences| make the exact null distribution inapplicable, the
normal approximation is used instead and the row says so. Holm-adjusted p-values are added as an
extra column; the thesis applies no correction.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

# differences closer than this are treated as equal (per-run scores are averages of counts, so
# mathematically equal differences can differ in the last bits)
TIE_DECIMALS = 12


def wide_scores(records: pd.DataFrame, block_cols: Sequence[str], method_col: str = "method",
                score_col: str = "score", methods: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Pivot long records to blocks × methods and drop incomplete blocks.

    Returns the complete table and notes naming every dropped block and which methods it lacked.
    """
    df = records.copy()
    df["_block"] = [" / ".join(str(v) for v in row) for row in df[list(block_cols)].itertuples(index=False)]
    dup = df.duplicated(["_block", method_col], keep=False)
    notes = []
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate (block, method) runs averaged: "
                     + ", ".join(sorted(set(df.loc[dup, "_block"] + ": " + df.loc[dup, method_col].astype(str)))))
    wide = df.pivot_table(index="_block", columns=method_col, values=score_col, aggfunc="mean")
    order = [m for m in (methods or []) if m in wide.columns] + [m for m in wide.columns if m not in (methods or [])]
    wide = wide[order]
    incomplete = wide.isna().any(axis=1)
    for block in wide.index[incomplete]:
        lacking = [m for m in wide.columns if pd.isna(wide.loc[block, m])]
        notes.append(f"block {block} dropped (no run for {', '.join(lacking)})")
    wide = wide[~incomplete]
    wide.index.name = "block"
    return wide, notes


def friedman(wide: pd.DataFrame) -> dict:
    k, n = wide.shape[1], wide.shape[0]
    out = {"test": "friedman", "n_blocks": n, "n_methods": k, "statistic": None, "p": None, "note": None}
    if k < 3:
        out["note"] = f"Friedman needs at least 3 methods (have {k})"
    elif n < 2:
        out["note"] = f"Friedman needs at least 2 complete blocks (have {n})"
    else:
        res = stats.friedmanchisquare(*[wide[c].to_numpy(dtype=float) for c in wide.columns])
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def wilcoxon_pair(x: np.ndarray, y: np.ndarray, exact_max_n: int = 50) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired scores, exact where the exact null applies."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d = np.round(x - y, TIE_DECIMALS)
    n = len(d)
    nz = d[d != 0]
    n_zero = int(n - len(nz))
    ties = len(np.unique(np.abs(nz))) < len(nz)
    out = {"n": n, "n_zero": n_zero, "ties": bool(ties), "mean_diff": float(np.mean(x - y)) if n else None,
           "statistic": None, "p": None, "method": None, "exact": False, "note": None}
    if len(nz) == 0:
        out.update(statistic=0.0, p=1.0, method="none", note="all differences are zero")
        return out
    reasons = []
    if n > exact_max_n:
        reasons.append(f"n = {n} > {exact_max_n}")
    if n_zero:
        reasons.append(f"{n_zero} zero difference(s)")
    if ties:
        reasons.append("tied |differences|")
    if not reasons:
        res = stats.wilcoxon(d, alternative="two-sided", method="exact")
        out.update(method="exact", exact=True)
    else:
        res = stats.wilcoxon(d, alternative="two-sided", method="asymptotic")
        out.update(method="asymptotic", note="exactness lost (" + "; ".join(reasons) + "): normal approximation")
    out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None entries are skipped)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    adj: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def compare_methods(records: pd.DataFrame, block_cols: Sequence[str], methods: Sequence[str] | None = None,
                    score_col: str = "score", method_col: str = "method", with_holm: bool = True,
                    exact_max_n: int = 50) -> dict:
    """Friedman + pairwise Wilcoxon over matched blocks; JSON-serialisable."""
    wide, notes = wide_scores(records, block_cols, method_col, score_col, methods)
    result = {"blocks": list(map(str, wide.index)), "methods": list(map(str, wide.columns)),
              "block_columns": list(block_cols), "notes": notes, "friedman": friedman(wide), "pairs": []}
    for a, b in itertools.combinations(wide.columns, 2):
        row = {"a": str(a), "b": str(b), **wilcoxon_pair(wide[a].to_numpy(), wide[b].to_numpy(), exact_max_n)}
        result["pairs"].append(row)
    if with_holm:
        for row, p in zip(result["pairs"], holm([r["p"] for r in result["pairs"]])):
            row["p_holm"] = p
    lost = [f"{r['a']} vs {r['b']}" for r in result["pairs"] if r["method"] == "asymptotic"]
    if lost:
        notes.append("Wilcoxon not exact for: " + ", ".join(lost))
    return result
