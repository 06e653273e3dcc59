"""Access to the thesis's printed numbers, kept as CSV data in ``evaluation/thesis/``.

Each ``tableX_Y.csv`` is long form ``row,column,metric,value,std`` in percent (p-values for the
Wilcoxon tables), transcribed from thesis.md; a leading ``#`` line is the caption.
``backbones.csv`` maps timm names to the thesis's row labels and ``aliases.csv`` maps this suite's
method labels to thesis row labels where they differ.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pandas as pd

THESIS_DIR = Path(__file__).with_name("thesis")


def _norm(label: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(label).lower())


def table_id(name: str) -> str:
    """``table4_1`` -> ``T4.1``."""
    m = re.fullmatch(r"table(\d+)_(\d+)", name)
    return f"T{m.group(1)}.{m.group(2)}" if m else name


@lru_cache(maxsize=None)
def _read_table(name: str) -> pd.DataFrame:
    path = THESIS_DIR / f"{name}.csv"
    df = pd.read_csv(path, comment="#", dtype={"row": str, "column": str, "metric": str})
    df["_row"] = df["row"].map(_norm)
    return df


def load_table(name: str) -> pd.DataFrame:
    """A transcribed thesis table (a copy: callers may change it)."""
    return _read_table(name).copy()


@lru_cache(maxsize=None)
def _cells(name: str) -> dict[tuple[str, str, str], dict]:
    """(normalised row, column, metric) -> the first such cell of a table: reports look up thousands of cells."""
    out: dict[tuple[str, str, str], dict] = {}
    df = _read_table(name)
    for row, column, metric, value, std in zip(df["_row"], df["column"], df["metric"], df["value"], df["std"]):
        out.setdefault((row, str(column), str(metric)), {"table": table_id(name), "value": float(value),
                                                         "std": None if pd.isna(std) else float(std)})
    return out


@lru_cache(maxsize=None)
def caption(name: str) -> str:
    first = (THESIS_DIR / f"{name}.csv").read_text().splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("#") else name


@lru_cache(maxsize=None)
def backbone_labels() -> dict[str, tuple[str, int]]:
    df = pd.read_csv(THESIS_DIR / "backbones.csv", comment="#")
    return {r.timm: (r.label, int(r.order)) for r in df.itertuples()}


def backbone_key(timm_name: str | None) -> str:
    return str(timm_name or "").split(".")[0]


def backbone_label(timm_name: str | None) -> str:
    key = backbone_key(timm_name)
    return backbone_labels().get(key, (key or "?", 0))[0]


def backbone_order(timm_name: str | None) -> tuple[int, str]:
    key = backbone_key(timm_name)
    label, order = backbone_labels().get(key, (key, 1000))
    return order, label


@lru_cache(maxsize=None)
def aliases() -> dict[str, list[str]]:
    path = THESIS_DIR / "aliases.csv"
    if not path.exists():
        return {}
    out: dict[str, list[str]] = {}
    for r in pd.read_csv(path, comment="#").itertuples():
        out.setdefault(_norm(r.label), []).append(str(r.thesis_row))
    return out


def lookup(tables: list[str], row: str, column: str, metric: str) -> dict | None:
    """First thesis value for ``(row, column, metric)`` in ``tables`` (row matched loosely, then via
    aliases): ``{"table", "value", "std"}`` in thesis units, or None."""
    candidates = [_norm(row)] + [_norm(a) for a in aliases().get(_norm(row), [])]
    for name in tables:
        try:
            cells = _cells(name)
        except FileNotFoundError:
            continue
        for cand in candidates:
            hit = cells.get((cand, column, metric))
            if hit is not None:
                return dict(hit)
    return None


def wilcoxon_p(table: str, a: str, b: str) -> float | None:
    try:
        df = _read_table(table)
    except FileNotFoundError:
        return None
    na, nb = _norm(a), _norm(b)
    cols = df["column"].map(_norm)
    hit = df[((df["_row"] == na) & (cols == nb)) | ((df["_row"] == nb) & (cols == na))]
    return float(hit.iloc[0]["value"]) if len(hit) else None
