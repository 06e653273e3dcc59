"""ISIC-2019 training set: ground-truth + metadata CSVs and a folder of JPEGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data import unlabelled
from skinlesion.data.table import CaseTable, read_csv
from skinlesion.data.tasks import ISIC2019_TASKS, ISIC_CLASSES
from skinlesion.errors import DataError

NAME = "isic2019"
IMAGE_KEYS = ("derm",)
TASKS = ISIC2019_TASKS
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"
CASE_ID = "image"
IMAGE_COLUMNS = {"derm": "image"}   # the column naming each image of a case
# the release's headers, in order: ground truth is one-hot in the challenge's (not alphabetical) class order
GROUND_TRUTH_COLUMNS = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
METADATA_COLUMNS = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")


def read(root: Path, image_dir: str = IMAGE_DIR, labelled: bool = True, metadata: Path | None = None,
         **_: object) -> CaseTable:
    """The cases of ``root``. ``labelled=False`` (new cases): no ground-truth file, and the metadata file needs only
    its ``image`` column; an image may be absent (:mod:`skinlesion.data.unlabelled`). ``metadata``: another CSV in
    place of the release's metadata file."""
    gt_path, meta_path = root / GROUND_TRUTH, Path(metadata) if metadata is not None else root / METADATA
    folder = root / image_dir
    if not labelled:
        meta = read_csv(meta_path, [], "ISIC-2019 metadata")
        images = unlabelled.image_paths(meta, IMAGE_COLUMNS["derm"], lambda name: folder / f"{name}.jpg")
        return CaseTable(NAME, meta_path, meta, unlabelled.case_ids(meta, CASE_ID), TASKS,
                         unlabelled.no_targets(len(meta), TASKS), {"derm": images})
    gt = read_csv(gt_path, ["image", *ISIC_CLASSES, "UNK"], "ISIC-2019 ground truth")
    meta = read_csv(meta_path, ["image", "age_approx", "anatom_site_general", "sex"], "ISIC-2019 metadata")
    onehot = gt[list(ISIC_CLASSES)].to_numpy(dtype=float)
    if (gt["UNK"].to_numpy(dtype=float) != 0).any():
        i = int(np.flatnonzero(gt["UNK"].to_numpy(dtype=float) != 0)[0])
        raise DataError(f"{gt_path}, line {i + 2}, column 'UNK': expected the all-zero UNK column of the "
                        f"official training set, found {gt['UNK'].iloc[i]!r}")
    positives = (onehot == 1).sum(axis=1)
    bad = np.flatnonzero((positives != 1) | ~np.isin(onehot, (0.0, 1.0)).all(axis=1))
    if bad.size:
        raise DataError(f"{gt_path}, line {bad[0] + 2} (image {gt['image'].iloc[bad[0]]}): expected exactly one "
                        f"1.0 among {list(ISIC_CLASSES)} ({bad.size} row(s) affected)")
    # Keep the metadata file's row order (folds are drawn in it); every metadata row needs its ground truth.
    label_of = dict(zip(gt["image"].astype(str), onehot.argmax(axis=1)))
    repeated = _repeated_ground_truth(gt_path, gt["image"].astype(str), onehot.argmax(axis=1))
    names = meta["image"].astype(str)
    missing = [n for n in names if n not in label_of]
    if missing:
        raise DataError(f"{meta_path}: {len(missing)} image(s) have no row in {GROUND_TRUTH}, "
                        f"first: {missing[0]!r}")
    targets = np.array([label_of[n] for n in names], dtype=np.int64)[:, None]
    images = [folder / f"{n}.jpg" for n in names]   # '_downsampled' names are used verbatim
    lesion = meta["lesion_id"] if "lesion_id" in meta.columns else None
    groups = None if lesion is None else np.where(lesion.isna(), names, lesion.astype(str)).astype(str)
    table = CaseTable(NAME, meta_path, meta, names.to_numpy(), TASKS, targets, {"derm": images}, groups)
    if repeated:
        table.notes.append(repeated)
    return table


def _repeated_ground_truth(path: Path, images: pd.Series, labels: np.ndarray) -> str | None:
    """An image listed twice in the ground truth: refused when its rows disagree (which diagnosis is meant cannot
    be told), else a note that the repeats are ignored (the audit and the training log show it)."""
    rows = np.flatnonzero(images.duplicated(keep=False).to_numpy())
    if not rows.size:
        return None
    first_of: dict[str, int] = {}
    for row in rows:
        name = images.iloc[row]
        if name not in first_of:
            first_of[name] = int(row)
        elif labels[row] != labels[first_of[name]]:
            a = first_of[name]
            raise DataError(f"{path}, lines {a + 2} and {row + 2}: image {name!r} is listed twice with different "
                            f"diagnoses ({ISIC_CLASSES[labels[a]]} and {ISIC_CLASSES[labels[row]]}); each image "
                            "needs exactly one ground-truth row")
    name, a = next(iter(first_of.items()))
    second = int(rows[images.iloc[rows].to_numpy() == name][1])
    return (f"{len(first_of)} image(s) are listed more than once in {path.name} with the same diagnosis (first: "
            f"{name!r}, lines {a + 2} and {second + 2}); the repeated rows are ignored")


def folds(table: CaseTable, split: str = "stratified", seed: int = 32) -> np.ndarray:
    from skinlesion.data.splits import isic_folds
    if split not in ("stratified", "lesion_grouped"):
        raise ValueError(f"data.split={split!r}: expected 'stratified' or 'lesion_grouped'")
    groups = table.groups if split == "lesion_grouped" else None
    return isic_folds(table.targets[:, 0], seed=seed, groups=groups)
