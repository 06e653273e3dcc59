"""Subgroup analysis: the patient and lesion attributes saved with each run, scores per subgroup with case-level
bootstrap intervals, and the worst-group gap.

Attributes (``subgroups.csv`` in every run directory, one row per case of the dataset, written at the start of
training so that the report needs no dataset):

* PAD-UFES-20: ``fitzpatrick`` (the CSV's ``fitspatrick``, 1-6), ``age`` (``age``, banded), ``sex`` (``gender``),
  ``region`` (``region``);
* ISIC-2019: ``age`` (``age_approx``, banded), ``sex`` (``sex``), ``site`` (``anatom_site_general``);
* derm7pt: ``sex`` (``sex``), ``location`` (``location``).

Ages are banded as :data:`AGE_BANDS`: <40, 40-59, 60-79, >=80. An empty or unreadable field is ``unknown``.
Categories are lower-cased and stripped.

Scores are those of the main task (the first: the diagnosis) of an output: BAC (mean recall over the classes
present in the group), ACC and macro one-vs-rest AUC, each with a percentile interval from the case-level
bootstrap of :mod:`skinlesion.evaluation.bootstrap` (the evaluated cases are resampled as a whole, so a group's
size varies between resamples). A group with fewer than ``min_size`` cases (default :data:`MIN_SIZE`) is listed
as too small and not scored. The worst-group gap of an attribute is the best minus the worst scored group's score;
``unknown`` is shown but left out of the gap (it is missing information, not a group of patients).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from . import bootstrap as B

MIN_SIZE = 30
UNKNOWN = "unknown"
AGE_BANDS = ((40, "<40"), (60, "40-59"), (80, "60-79"), (np.inf, ">=80"))
FILE = "subgroups.csv"
NOT_SAVED = "no subgroup attributes saved"

# dataset -> (attribute, CSV column, kind)
ATTRIBUTES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "pad_ufes": (("fitzpatrick", "fitspatrick", "fitzpatrick"), ("age", "age", "age"), ("sex", "gender", "category"),
                 ("region", "region", "category")),
    "isic2019": (("age", "age_approx", "age"), ("sex", "sex", "category"), ("site", "anatom_site_general", "category")),
    "derm7pt": (("sex", "sex", "category"), ("location", "location", "category")),
}


def attribute_names(dataset: str) -> list[str]:
    return [a for a, _, _ in ATTRIBUTES.get(dataset, ())]


def age_band(values) -> np.ndarray:
    age = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    out = np.full(len(age), UNKNOWN, dtype=object)
    lower = 0.0
    for upper, label in AGE_BANDS:
        out[(age >= lower) & (age < upper)] = label
        lower = upper
    return out


def fitzpatrick(values) -> np.ndarray:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    ok = np.isin(v, np.arange(1, 7))
    return np.where(ok, np.nan_to_num(v).astype(int).astype(str), UNKNOWN).astype(object)


def category(values) -> np.ndarray:
    s = pd.Series(values, dtype=object).astype("string").str.strip().str.lower()
    return s.mask(s.isna() | s.isin(["", "nan", "unk", "unknown", "none"]), UNKNOWN).astype(object).to_numpy()


_KINDS = {"age": age_band, "fitzpatrick": fitzpatrick, "category": category}


def subgroup_frame(table) -> pd.DataFrame:
    """``case_id`` and one column per attribute of the dataset (banded and normalised) from a data module's
    ``CaseTable`` (``dataset``, ``frame`` = the official CSV rows, ``case_ids``)."""
    dataset = table.dataset
    if dataset not in ATTRIBUTES:
        raise ValueError(f"no subgroup attributes defined for dataset {dataset!r}; known: {sorted(ATTRIBUTES)}")
    frame = table.frame
    if len(frame) != len(table.case_ids):
        raise ValueError(f"{dataset}: {len(frame)} CSV rows but {len(table.case_ids)} case ids")
    out = {"case_id": np.asarray(table.case_ids).astype(str)}
    for name, column, kind in ATTRIBUTES[dataset]:
        values = frame[column].to_numpy() if column in frame.columns else np.full(len(frame), None)
        out[name] = _KINDS[kind](values)
    return pd.DataFrame(out)


_CACHE: dict[int, pd.DataFrame] = {}


def read_attributes(run_dir: Path) -> pd.DataFrame | None:
    """A run's ``subgroups.csv`` indexed by case id (None when the run saved none). Runs of one dataset share the
    file's content, so each distinct file is parsed once per process."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    data = path.read_bytes()
    key = zlib.crc32(data) ^ len(data)
    if key not in _CACHE:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "case_id" not in df.columns:
            raise ValueError(f"{path}: no case_id column")
        _CACHE[key] = df.set_index("case_id").replace("", UNKNOWN)
    return _CACHE[key]


def align(attributes: pd.DataFrame, case_ids, attributes_wanted: list[str]) -> pd.DataFrame:
    """Attributes of ``case_ids`` in that order; cases or columns absent from the file are ``unknown``."""
    cols = [a for a in attributes_wanted if a in attributes.columns]
    out = attributes.reindex(pd.Index(np.asarray(case_ids).astype(str)))[cols]
    return out.fillna(UNKNOWN)


def group_order(names) -> list[str]:
    """Groups in reading order: age bands and Fitzpatrick types by value, categories alphabetically, ``unknown``
    last."""
    bands = [label for _, label in AGE_BANDS]
    return sorted(dict.fromkeys(names), key=lambda g: (g == UNKNOWN, bands.index(g) if g in bands else len(bands), g))


def group_scores(weights: np.ndarray, weights_auc: np.ndarray, y: np.ndarray, prob: np.ndarray,
                 attributes: pd.DataFrame, min_size: int = MIN_SIZE) -> dict[str, dict]:
    """Scores of every group of every attribute (column of ``attributes``, one row per case):
    ``{attribute: {"groups": names, "n": sizes, "scored": bool mask, "bac"/"acc": (G, 1 + R), "auc": (G, 1 + R_auc)}}``
    with NaN rows for groups too small to score.

    ``weights``/``weights_auc`` are the case multiplicities of :func:`bootstrap.resample_counts` (column 0 the
    observed data); all attributes are scored in one pass (each case belongs to one group of each)."""
    parts, codes, offset = {}, [], 0
    for attr in attributes.columns:
        names, code = np.unique(attributes[attr].to_numpy().astype(str), return_inverse=True)
        parts[attr] = (list(names), slice(offset, offset + len(names)))
        codes.append(code + offset)
        offset += len(names)
    if not parts:
        return {}
    codes = np.stack(codes)
    n = np.bincount(codes.ravel(), minlength=offset)
    bac, acc = B.grouped_bac_acc(weights, y, prob.argmax(axis=1), prob.shape[1], codes, offset)
    auc = B.nanmean(B.class_aucs(weights_auc, y, prob, codes, offset), axis=0)
    too_small = n < min_size
    bac[too_small], acc[too_small], auc[too_small] = np.nan, np.nan, np.nan
    return {attr: {"groups": names, "n": n[sl], "scored": ~too_small[sl], "bac": bac[sl], "acc": acc[sl],
                   "auc": auc[sl]} for attr, (names, sl) in parts.items()}


def gap(scores: np.ndarray, names: list[str], scored: np.ndarray) -> tuple[np.ndarray, str | None, str | None]:
    """Best minus worst scored group per column (``unknown`` left out) and the observed best and worst groups."""
    keep = np.asarray(scored, bool) & (np.asarray(names) != UNKNOWN) & ~np.isnan(scores[:, 0])
    if keep.sum() < 2:
        return np.full(scores.shape[1], np.nan), None, None
    s = scores[keep]
    with np.errstate(invalid="ignore"):
        d = np.nanmax(s, axis=0) - np.nanmin(s, axis=0)
    kept = np.asarray(names)[keep]
    return d, str(kept[int(np.argmax(s[:, 0]))]), str(kept[int(np.argmin(s[:, 0]))])


def point_gaps(y: np.ndarray, prob: np.ndarray, attributes: pd.DataFrame, min_size: int = MIN_SIZE) -> dict:
    """Observed BAC per scored group and the worst-group gap of every attribute (no resampling), for the end of
    training: ``{"attributes": {attr: {"gap", "best", "worst", "groups": {g: {"n", "bac"}}}}, "worst_group_gap",
    "worst_attribute"}``."""
    ones = np.ones((len(y), 1), dtype=np.float32)
    out: dict = {"metric": "bac", "min_size": min_size, "attributes": {}}
    for attr, res in group_scores(ones, ones, y, prob, attributes, min_size).items():
        d, best, worst = gap(res["bac"], res["groups"], res["scored"])
        out["attributes"][attr] = {
            "gap": None if np.isnan(d[0]) else float(d[0]), "best": best, "worst": worst,
            "groups": {g: {"n": int(k), "bac": None if np.isnan(b) else float(b)}
                       for g, k, b in zip(res["groups"], res["n"], res["bac"][:, 0])}}
    gaps = {a: v["gap"] for a, v in out["attributes"].items() if v["gap"] is not None}
    out["worst_attribute"] = max(gaps, key=gaps.get) if gaps else None
    out["worst_group_gap"] = gaps[out["worst_attribute"]] if gaps else None
    return out
