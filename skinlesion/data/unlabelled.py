"""Cases whose labels are not known: what the dataset readers return with ``labelled=False`` (prediction).

The same readers, layouts and image paths as training; only the label columns become optional, an image-id cell
may be empty, and an image may be absent. :func:`missing_images` then says, per case, which image inputs it lacks
and why, so that a model can be answered from the inputs it still has.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.metadata import _norm_value
from skinlesion.data.tasks import Task

UNKNOWN = -1   # the target code of a case without a label


def no_targets(n: int, tasks: tuple[Task, ...]) -> np.ndarray:
    return np.full((n, len(tasks)), UNKNOWN, dtype=np.int64)


def case_ids(df: pd.DataFrame, column: str) -> np.ndarray:
    """The id column's values (one spelling however pandas parsed them), or ``line N`` where the file has none."""
    if column not in df.columns:
        return np.array([f"line {int(i) + 2}" for i in df.index], dtype=object).astype(str)
    return np.array([str(_norm_value(v)) for v in df[column]], dtype=object).astype(str)


def image_paths(df: pd.DataFrame, column: str, resolve: Callable[[str], Path]) -> list[Path | None]:
    """Per row, the file the image-id cell names (``resolve``: the layout's rule); None for an empty cell or an
    absent column."""
    if column not in df.columns:
        return [None] * len(df)
    return [None if (v := _norm_value(x)) is None else resolve(v) for x in df[column]]


def missing_images(frame: pd.DataFrame, images: Mapping[str, list[Path | None]], columns: Mapping[str, str],
                   keys: tuple[str, ...], looked: str = "") -> list[dict[str, str]]:
    """Per case, image key -> why that image is missing (no column, an empty cell, no such file), for ``keys``. A
    named image without a path (not found where ``looked`` says) is missing too."""
    out: list[dict[str, str]] = [{} for _ in range(len(frame))]
    for key in keys:
        col = columns[key]
        for r, path in enumerate(images[key]):
            value = _norm_value(frame[col].iloc[r]) if col in frame.columns else None
            if col not in frame.columns:
                out[r][key] = f"no column '{col}'"
            elif value is None:
                out[r][key] = f"empty '{col}'"
            elif path is None:
                out[r][key] = f"{col} {value!r}: no such image file {looked}".rstrip()
            elif not path.is_file():
                out[r][key] = f"{col} {value!r}: no such image file ({path})"
    return out
