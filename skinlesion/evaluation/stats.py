"""Method comparison statistics for the chapter-4 ablations (Tables 4.4–4.6).

Friedman test across a set of methods with matched blocks (backbone × fold, or backbone × seed), then
pairwise two-sided Wilcoxon signed-rank tests. By default the set is the thesis's eight methods
(:data:`THESIS_METHODS`); any other selection can be passed. Friedman needs every method in a block,
so it runs over the blocks complete for the selected methods; each Wilcoxon pair runs over the blocks
complete for *that pair*, so one missing run shortens only the pairs of its method. Every result
states its n. The Wilcoxon test is exact for n ≤ 50 untied, non-zero differences (the thesis's
p-values are exact-null values, e.g. 2/2^25); when zero differences or tied |differences| make the
exact null distribution inapplicable, the normal approximation is used instead and the row says so.
Holm-adjusted p-values are added as an extra column; the thesis applies no correction.

:func:`paired_bootstrap` adds a case-level view of the same pairs: the paired bootstrap of the mean difference on
the evaluated cases (:mod:`skinlesion.evaluation.bootstrap`), beside the Wilcoxon test over the same blocks.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

# differences closer than this are treated as equal (per-run scores are averages of counts, so
# mathematically equal differences can differ in the last bits)
TIE_DECIMALS = 12

# The eight methods the thesis compares in Tables 4.4–4.6, in its order (the report's labels).
THESIS_METHODS = ["Image", "JF-CAT", "JF-MB", "JF-MN", "JF-MA", "JF-MMFA", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]


def _norm(label: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(label).lower())


def select_methods(present: Sequence[str], spec: str | Sequence[str] | None = "thesis") -> tuple[list[str], list[str]]:
    """The methods to compare, in order, and notes.

    ``spec``: ``"thesis"`` (the eight of :data:`THESIS_METHODS` that are present; every method when
    fewer than two are, e.g. for sweeps of other chapters), ``"all"`` / None (every present method,
    in the given order) or a list / comma-separated string of labels (matched ignoring case, spaces
    and punctuation).
    """
    present = list(dict.fromkeys(present))
    notes: list[str] = []
    if spec is None or spec == "all":
        return present, notes
    if spec == "thesis":
        chosen = [m for m in THESIS_METHODS if m in present]
        if len(chosen) < 2:
            notes.append(f"fewer than two of the thesis's methods ({', '.join(THESIS_METHODS)}) in this sweep: "
                         "comparing every method")
            return present, notes
        absent = [m for m in THESIS_METHODS if m not in present]
        if absent:
            notes.append(f"thesis method(s) without runs: {', '.join(absent)}")
        extra = [m for m in present if m not in chosen]
        if extra:
            notes.append(f"not in the thesis's comparison (use --stats-methods all): {', '.join(extra)}")
        return chosen, notes
    wanted = [w.strip() for w in spec.split(",")] if isinstance(spec, str) else list(spec)
    by_norm = {_norm(m): m for m in present}
    chosen = list(dict.fromkeys(by_norm[_norm(w)] for w in wanted if w and _norm(w) in by_norm))
    unknown = [w for w in wanted if w and _norm(w) not in by_norm]
    if unknown:
        notes.append(f"requested method(s) without runs: {', '.join(unknown)}")
    return chosen, notes


def pivot_scores(records: pd.DataFrame, block_cols: Sequence[str], method_col: str = "method",
                 score_col: str = "score", methods: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Blocks × methods table of scores (NaN where a block has no run of a method), columns in
    ``methods`` order (then any others); duplicate (block, method) runs are averaged with a note."""
    df = records.copy()
    df["_block"] = [" / ".join(str(v) for v in row) for row in df[list(block_cols)].itertuples(index=False)]
    dup = df.duplicated(["_block", method_col], keep=False)
    notes = []
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate (block, method) runs averaged: "
                     + ", ".join(sorted(set(df.loc[dup, "_block"] + ": " + df.loc[dup, method_col].astype(str)))))
    wide = df.pivot_table(index="_block", columns=method_col, values=score_col, aggfunc="mean", dropna=False)
    order = [m for m in (methods or []) if m in wide.columns] + [m for m in wide.columns if m not in (methods or [])]
    wide = wide[order]
    wide.index.name = "block"
    wide.columns.name = None
    return wide, notes


def wide_scores(records: pd.DataFrame, block_cols: Sequence[str], method_col: str = "method",
                score_col: str = "score", methods: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Pivot long records to blocks × methods and drop the blocks lacking any method (Friedman's table).

    Returns the complete table and notes naming every dropped block and which methods it lacked.
    """
    wide, notes = pivot_scores(records, block_cols, method_col, score_col, methods)
    incomplete = wide.isna().any(axis=1)
    for block in wide.index[incomplete]:
        lacking = [m for m in wide.columns if pd.isna(wide.loc[block, m])]
        notes.append(f"block {block} dropped (no run for {', '.join(map(str, lacking))})")
    return wide[~incomplete], notes


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
    if n == 0:
        out.update(method="none", note="no block has runs of both methods")
        return out
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
    floor = 2.0 / 2 ** n   # the exact test's smallest two-sided p (every difference of one sign)
    if out["exact"] and floor >= 0.05:
        out["note"] = f"n = {n}: the smallest possible p is {floor:.3g}, so no difference can reach p < 0.05"
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


NO_BACKBONE = "none"   # run.json's backbone of a method that reads no image (metadata only)


def image_backbones(records: pd.DataFrame, backbone_col: str = "backbone") -> list:
    """The image backbones of ``records``, in order of appearance (no NaN, no ``NO_BACKBONE``)."""
    return [b for b in records[backbone_col].dropna().unique() if b != NO_BACKBONE]


def pair_backbone_free(records: pd.DataFrame, backbone_col: str = "backbone") -> pd.DataFrame:
    """Blocks are (backbone, fold): a method without an image backbone has no block of its own, so its runs are
    paired, fold by fold, with every backbone's runs (each of its rows repeated once per image backbone)."""
    free = records[backbone_col] == NO_BACKBONE
    backbones = image_backbones(records, backbone_col)
    if not free.any() or not backbones:
        return records
    spread = [records.loc[free].assign(**{backbone_col: b}) for b in backbones]
    return pd.concat([records.loc[~free], *spread], ignore_index=True)


def compare_methods(records: pd.DataFrame, block_cols: Sequence[str], methods: Sequence[str] | None = None,
                    score_col: str = "score", method_col: str = "method", with_holm: bool = True,
                    exact_max_n: int = 50) -> dict:
    """Friedman over the blocks complete for ``methods`` (default: every method in ``records``) and
    pairwise Wilcoxon over the blocks complete for each pair; JSON-serialisable."""
    wide, notes = pivot_scores(records, block_cols, method_col, score_col, methods)
    if methods is not None:
        wide = wide[[m for m in methods if m in wide.columns]]
    n_all = len(wide)
    complete = wide.dropna()
    for block in wide.index[wide.isna().any(axis=1)]:
        lacking = [str(m) for m in wide.columns if pd.isna(wide.loc[block, m])]
        notes.append(f"block {block} lacks {', '.join(lacking)}: left out of Friedman and of those methods' pairs")
    result = {"blocks": list(map(str, complete.index)), "all_blocks": list(map(str, wide.index)),
              "methods": list(map(str, wide.columns)), "block_columns": list(block_cols), "notes": notes,
              "friedman": friedman(complete), "pairs": []}
    for a, b in itertools.combinations(wide.columns, 2):
        pair = wide[[a, b]].dropna()
        row = {"a": str(a), "b": str(b), **wilcoxon_pair(pair[a].to_numpy(), pair[b].to_numpy(), exact_max_n),
               "n_dropped": n_all - len(pair)}
        result["pairs"].append(row)
    if with_holm:
        for row, p in zip(result["pairs"], holm([r["p"] for r in result["pairs"]])):
            row["p_holm"] = p
    lost = [f"{r['a']} vs {r['b']}" for r in result["pairs"] if r["method"] == "asymptotic"]
    if lost:
        notes.append("Wilcoxon not exact for: " + ", ".join(lost))
    return result


def paired_bootstrap(blocks: dict, methods: Sequence[str], level: float = 0.95, with_holm: bool = True) -> list[dict]:
    """Paired bootstrap of every pair of ``methods`` beside the Wilcoxon test over the same blocks.

    ``blocks[method]`` maps a block ``(backbone, fold or seed)`` to that block's (1 + R,) main-score resamples (one
    array per run; duplicates are averaged). Blocks match on fold or seed and on backbone, a method without an image
    backbone matching every backbone (as :func:`pair_backbone_free`)."""
    from .bootstrap import paired_difference

    def matched(a: str, b: str) -> list[tuple]:
        return [(ka, kb) for ka in blocks.get(a, {}) for kb in blocks.get(b, {})
                if ka[1] == kb[1] and (ka[0] == kb[0] or NO_BACKBONE in (ka[0], kb[0]))]

    rows = []
    for a, b in itertools.combinations(methods, 2):
        pairs = matched(a, b)
        xa = [np.mean(blocks[a][ka], axis=0) for ka, _ in pairs]
        xb = [np.mean(blocks[b][kb], axis=0) for _, kb in pairs]
        row = {"a": a, "b": b, **paired_difference(xa, xb, level)}
        w = wilcoxon_pair(np.array([x[0] for x in xa]), np.array([x[0] for x in xb]))
        row.update(wilcoxon_p=w["p"], wilcoxon_exact=w["exact"], note=w["note"] or "")
        rows.append(row)
    if with_holm:
        for row, p in zip(rows, holm([r["p"] for r in rows])):
            row["p_holm"] = p
    return rows
