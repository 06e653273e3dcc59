"""derm7pt / seven-point checklist, release_v0 (Kawahara et al. 2019): ``meta/`` CSVs and ``images/<csv path>``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data import unlabelled
from skinlesion.data.table import CaseTable, map_labels, read_csv
from skinlesion.data.tasks import DERM7PT_TASK_COLUMNS, DERM7PT_TASKS
from skinlesion.errors import DataError

NAME = "derm7pt"
IMAGE_KEYS = ("derm", "clinic")   # branch order: dermoscopy first (primary image)
TASKS = DERM7PT_TASKS
METADATA = "meta/meta.csv"
# the release's header of meta/meta.csv, in order
COLUMNS = ("case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
           "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
           "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
           "case_id", "notes")
CASE_ID = "case_num"
IMAGE_COLUMNS = {"derm": "derm", "clinic": "clinic"}   # the columns naming each image of a case
INDEX_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}


def read(root: Path, labelled: bool = True, metadata: Path | None = None, **_: object) -> CaseTable:
    """The cases of ``root``. ``labelled=False`` (new cases): the label columns are optional, an image cell may be
    empty and an image absent (:mod:`skinlesion.data.unlabelled`); ``metadata``: another CSV in place of
    ``meta/meta.csv``."""
    path = Path(metadata) if metadata is not None else root / METADATA
    if not labelled:
        df = read_csv(path, [], "derm7pt meta")
        images = {key: unlabelled.image_paths(df, IMAGE_COLUMNS[key], lambda p: root / "images" / p)
                  for key in IMAGE_KEYS}
        return CaseTable(NAME, path, df, unlabelled.case_ids(df, CASE_ID), TASKS,
                         unlabelled.no_targets(len(df), TASKS), images)
    df = read_csv(path, ["case_num", *DERM7PT_TASK_COLUMNS.values(), "clinic", "derm"], "derm7pt meta")
    targets = np.stack([map_labels(df[DERM7PT_TASK_COLUMNS[t.name]], t, path, DERM7PT_TASK_COLUMNS[t.name])
                        for t in TASKS], axis=1)
    images = {}
    for key in ("derm", "clinic"):
        # CSV paths are used verbatim: case and folder names do not follow a pattern (.jpg/.JPG, 'bis').
        images[key] = [root / "images" / str(p) for p in df[key]]
    table = CaseTable(NAME, path, df, df["case_num"].astype(str).to_numpy(), TASKS, targets, images)
    same = df.loc[df["clinic"] == df["derm"], "case_num"].tolist()
    if same:
        table.notes.append(f"{len(same)} case(s) use the dermoscopic image as clinical image (clinic == derm): "
                           f"case_num {same}")
    return table


def index_rows(root: Path, part: str) -> np.ndarray:
    """The 0-based meta.csv rows listed in the official index file of ``part`` (train, val, test), in file order."""
    f = root / "meta" / INDEX_FILES[part]
    df = read_csv(f, ["indexes"], "derm7pt split index")
    values = pd.to_numeric(df["indexes"], errors="coerce")
    if values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{f}, line {i + 2}, column 'indexes': expected a 0-based row number, "
                        f"got {df['indexes'].iloc[i]!r}")
    return values.to_numpy(dtype=np.int64)


def partition(table: CaseTable, root: Path) -> np.ndarray:
    """'train'/'val'/'test' per row from the official index files (0-based row positions)."""
    from skinlesion.data.splits import derm7pt_partition
    idx = {part: index_rows(root, part) for part in INDEX_FILES}
    try:
        return derm7pt_partition(len(table), idx["train"], idx["val"], idx["test"], source=str(root / "meta"))
    except ValueError as e:   # an index out of range, repeated, or in two files: the files are at fault
        raise DataError(str(e)) from None


HOLD_OUT = ("second_half",)


def sub_model_rows(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """FusionM4Net's sub-model split: (the rows it trains on, the rows it predicts for the second stage) — the
    first half of ``train_indexes.csv`` in file order (206 of 413) and the rest (207). File order, not a
    stratified draw, so the split is the same for every seed and every run."""
    rows = index_rows(Path(root), "train")
    if len(rows) < 2:
        raise DataError(f"{Path(root) / 'meta' / INDEX_FILES['train']}: {len(rows)} training row(s); the sub-model "
                        "split needs at least 2")
    return rows[: len(rows) // 2], rows[len(rows) // 2:]


def hold_out_second_half(part: np.ndarray, root: Path) -> np.ndarray:
    """The partition with the sub model's held-out rows (:func:`sub_model_rows`) marked ``holdout``."""
    out = part.astype(object)   # a fixed-width string array would truncate the new label
    out[sub_model_rows(root)[1]] = "holdout"
    return out
