"""Fold assignment for PAD-UFES-20, ISIC-2019 and derm7pt (the published protocols).

Folds are returned 0-based: PAD CV folds 0..4 are the protocol's folds 1..5 and -1 is the fixed held-out test
partition (its fold 6). Assignments depend on scikit-learn's StratifiedKFold algorithm, so they are
deterministic for a given scikit-learn version and seed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

TEST_FOLD = -1
PAD_SEED = 8
ISIC_SEED = 32


def _splitter(n_splits: int, seed: int, grouped: bool):
    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)


def _assign(labels: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> np.ndarray:
    """Fold number (0..n_splits-1) of every row: the split in which the row is held out."""
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = _splitter(n_splits, seed, groups is not None)
    x = np.zeros((len(labels), 1))
    for k, (_, held_out) in enumerate(splitter.split(x, labels, groups)):
        folds[held_out] = k
    return folds


def _as_1d(name: str, values, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per row)")
    return arr


def _group_keys(groups, n: int) -> np.ndarray:
    """Groups as strings; a missing group becomes a singleton so rows without a key never merge."""
    g = pd.Series(_as_1d("groups", groups, n), dtype=object)
    missing = g.isna().to_numpy()
    keys = g.astype(str).to_numpy(dtype=object)
    keys[missing] = [f"__row{i}" for i in np.flatnonzero(missing)]
    return keys


def pad_ufes_folds(labels: np.ndarray, groups: np.ndarray | None = None, seed: int = PAD_SEED) -> np.ndarray:
    """PAD-UFES-20 fold per row (rows in ``metadata.csv`` order): 0..4 = CV fold, -1 = fixed test partition.

    Step 1: 6-fold stratified split of all rows; the 6th split's held-out rows are the test partition.
    Step 2: the remaining rows (order preserved, re-indexed) get a 5-fold stratified split.
    With ``groups`` (lesion keys, see :func:`lesion_key`) both steps use StratifiedGroupKFold.
    """
    labels = _as_1d("labels", labels)
    keys = None if groups is None else _group_keys(groups, len(labels))
    outer = _assign(labels, keys, 6, seed)
    folds = np.full(len(labels), TEST_FOLD, dtype=np.int64)
    rest = np.flatnonzero(outer != 5)
    folds[rest] = _assign(labels[rest], None if keys is None else keys[rest], 5, seed)
    return folds


def isic_folds(labels: np.ndarray, seed: int = ISIC_SEED, groups=None) -> np.ndarray:
    """ISIC-2019 fold per row (0..4): 5-fold stratified split; optional grouping by lesion_id."""
    labels = _as_1d("labels", labels)
    keys = None if groups is None else _group_keys(groups, len(labels))
    return _assign(labels, keys, 5, seed)


def lesion_key(df: pd.DataFrame) -> np.ndarray:
    """PAD-UFES-20 lesion key "patient_id/lesion_id" per row (lesion_id alone is reused across patients)."""
    missing = [c for c in ("patient_id", "lesion_id") if c not in df.columns]
    if missing:
        raise ValueError(f"lesion_key needs columns {missing}, not found in the PAD-UFES-20 metadata")
    return (df["patient_id"].astype(str) + "/" + df["lesion_id"].astype(str)).to_numpy(dtype=object)


_PARTS = (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv"))


def _index_array(values, where: str) -> np.ndarray:
    if isinstance(values, pd.DataFrame):
        if "indexes" in values.columns:
            values = values["indexes"]
        elif values.shape[1] == 1:
            values = values.iloc[:, 0]
    arr = np.asarray(values).ravel()
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{where}: indexes must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{where}: indexes must be integers")
    return arr.astype(np.int64)


def derm7pt_partition(n_rows: int, train_idx, valid_idx, test_idx, source: str = "meta/") -> np.ndarray:
    """"train"/"val"/"test" per meta.csv row from the official index files (0-based row positions).

    Raises ValueError naming the index file when an index is out of range or repeated, when two files
    overlap, or when the three files together do not cover every row.
    """
    out = np.full(n_rows, "", dtype="<U5")
    for (part, fname), idx in zip(_PARTS, (train_idx, valid_idx, test_idx)):
        where = f"{source}{fname}"
        arr = _index_array(idx, where)
        bad = arr[(arr < 0) | (arr >= n_rows)]
        if len(bad):
            raise ValueError(f"{where}: index(es) {bad[:5].tolist()} out of range 0..{n_rows - 1} "
                             f"(indexes are 0-based row positions in meta.csv)")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{where}: index(es) {uniq[counts > 1][:5].tolist()} listed more than once")
        taken = out[arr] != ""
        if taken.any():
            clash = arr[taken]
            others = sorted(set(out[clash].tolist()))
            raise ValueError(f"{where}: index(es) {clash[:5].tolist()} also appear in the {others} index "
                             f"file(s); the partitions must be disjoint")
        out[arr] = part
    uncovered = np.flatnonzero(out == "")
    if len(uncovered):
        raise ValueError(f"{source}{{train,valid,test}}_indexes.csv: {len(uncovered)} row(s) of meta.csv are in "
                         f"no index file, e.g. {uncovered[:5].tolist()}; the partitions must cover all "
                         f"{n_rows} rows")
    return out


def cv_partition(folds: np.ndarray, fold: int, n_folds: int = 5) -> np.ndarray:
    """"train"/"val"/"test" per row for CV run ``fold``: val = that fold, test = fold -1, train = the rest."""
    folds = _as_1d("folds", folds)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} must be in 0..{n_folds - 1}")
    allowed = set(range(n_folds)) | {TEST_FOLD}
    unknown = sorted(set(np.unique(folds).tolist()) - allowed)
    if unknown:
        raise ValueError(f"fold assignment contains value(s) {unknown[:5]}; expected {TEST_FOLD} (test) or "
                         f"0..{n_folds - 1}")
    out = np.full(len(folds), "train", dtype="<U5")
    out[folds == fold] = "val"
    out[folds == TEST_FOLD] = "test"
    if not (out == "val").any():
        raise ValueError(f"data.fold={fold}: no rows are assigned to this fold")
    return out
