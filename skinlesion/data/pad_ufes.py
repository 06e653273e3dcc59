"""PAD-UFES-20 (Pacheco et al. 2020): ``metadata.csv`` + PNGs spread over ``images/imgs_part_{1,2,3}/``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skinlesion.data import unlabelled
from skinlesion.data.splits import lesion_key, pad_ufes_folds
from skinlesion.data.table import CaseTable, index_files, map_labels, read_csv
from skinlesion.data.tasks import PAD_UFES_TASKS

NAME = "pad_ufes"
IMAGE_KEYS = ("clinic",)        # smartphone clinical photographs
TASKS = PAD_UFES_TASKS
IMAGE_FOLDERS = ("images/imgs_part_1", "images/imgs_part_2", "images/imgs_part_3")
METADATA = "metadata.csv"
CASE_ID = "img_id"
IMAGE_COLUMNS = {"clinic": "img_id"}   # the column naming each image of a case
# the release's header, in order (the reader needs only some of these; the generator writes all of them)
COLUMNS = ("patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
           "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
           "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed",
           "bleed", "elevation", "img_id", "biopsed")


def read(root: Path, labelled: bool = True, metadata: Path | None = None, **_: object) -> CaseTable:
    """The cases of ``root``. ``labelled=False`` (new cases): the diagnosis and lesion columns are optional, an
    image may be absent (:mod:`skinlesion.data.unlabelled`); ``metadata``: another CSV in place of the release's."""
    path = Path(metadata) if metadata is not None else root / METADATA
    df = read_csv(path, ["patient_id", "lesion_id", "diagnostic", "img_id"] if labelled else [],
                  "PAD-UFES-20 metadata")
    # The release does not say which of the three folders holds an image: index all of them by name.
    found = index_files([root / f for f in IMAGE_FOLDERS])

    def where(name: str) -> Path:   # an unfound image keeps a placeholder path that says where we looked
        return found.get(name, root / "images" / "imgs_part_{1,2,3}" / name)

    if not labelled:
        images = unlabelled.image_paths(df, IMAGE_COLUMNS["clinic"], where)
        return CaseTable(NAME, path, df, unlabelled.case_ids(df, CASE_ID), TASKS,
                         unlabelled.no_targets(len(df), TASKS), {"clinic": images})
    targets = map_labels(df["diagnostic"], TASKS[0], path, "diagnostic")[:, None]
    images = [where(name) for name in df["img_id"].astype(str)]
    groups = lesion_key(df)
    return CaseTable(NAME, path, df, df["img_id"].astype(str).to_numpy(), TASKS, targets,
                     {"clinic": images}, groups)


def folds(table: CaseTable, split: str = "stratified", seed: int = 8) -> np.ndarray:
    if split not in ("stratified", "lesion_grouped"):
        raise ValueError(f"data.split={split!r}: expected 'stratified' or 'lesion_grouped'")
    groups = table.groups if split == "lesion_grouped" else None
    return pad_ufes_folds(table.targets[:, 0], groups=groups, seed=seed)
