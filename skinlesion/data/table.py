"""The common in-memory form of every dataset: one row per case, read from the official files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.tasks import Task
from skinlesion.errors import DataError


@dataclass
class CaseTable:
    """Cases of one dataset in CSV order.

    ``frame`` keeps the official CSV columns untouched (metadata encoders read them); ``targets`` holds the
    class code of every task; ``images`` maps a modality to the expected file path of every case.
    """
    dataset: str
    source: Path                      # the CSV that defines the rows (for error messages)
    frame: pd.DataFrame
    case_ids: np.ndarray
    tasks: tuple[Task, ...]
    targets: np.ndarray               # (N, n_tasks) int64
    images: dict[str, list[Path]]
    groups: np.ndarray | None = None  # lesion key where the dataset has one
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    def csv_line(self, i: int) -> int:
        """1-based line of row ``i`` in the source CSV (header is line 1)."""
        return int(self.frame.index[i]) + 2

    def subset(self, idx: np.ndarray) -> "CaseTable":
        """Rows ``idx`` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return CaseTable(self.dataset, self.source, self.frame.iloc[idx], self.case_ids[idx], self.tasks,
                         self.targets[idx], {k: [v[i] for i in idx] for k, v in self.images.items()},
                         None if self.groups is None else self.groups[idx], list(self.notes))


def duplicated_ids(table: CaseTable) -> list[np.ndarray]:
    """Row positions of every case id listed more than once, one array per id (in CSV order)."""
    ids = pd.Series(table.case_ids, dtype=object)
    rows_of: dict[object, list[int]] = {}
    for row in np.flatnonzero(ids.duplicated(keep=False).to_numpy()):
        rows_of.setdefault(ids.iloc[row], []).append(int(row))
    return [np.asarray(rows, dtype=np.int64) for rows in rows_of.values()]


def check_unique_ids(table: CaseTable) -> None:
    """Refuse a file that lists a case twice: predictions, folds and the audit trail are keyed by case id."""
    groups = duplicated_ids(table)
    if not groups:
        return
    first = min(groups, key=lambda rows: rows[1])   # the first repetition in file order
    i, j = int(first[0]), int(first[1])
    times = "twice" if len(first) == 2 else f"{len(first)} times"
    more = f"; {len(groups)} ids are repeated in all" if len(groups) > 1 else ""
    raise DataError(f"{table.source}, lines {table.csv_line(i)} and {table.csv_line(j)}: case id "
                    f"{table.case_ids[i]!r} is listed {times} (each case must be listed once{more}); remove the "
                    f"extra row(s) (python -m skinlesion.data.audit lists every duplicate)")


def read_csv(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read an official CSV and fail in words when it is missing or lacks a column."""
    if not path.is_file():
        raise DataError(f"{what}: expected the file {path} (official layout), but it does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: cannot be parsed as CSV ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected the official header with {required}")
    return df


def check_root(root: str | os.PathLike | None, dataset: str) -> Path:
    if root in (None, "", "???"):
        raise DataError(f"data.root is not set: point it at the {dataset} directory (data.root=/path/to/{dataset})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={root}: not a readable directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"data.root={root}: directory is not readable (permissions)")
    return path


def map_labels(values: pd.Series, task: Task, path: Path, column: str) -> np.ndarray:
    """Exact-match raw strings to class codes; any unmapped value is an error naming file, row and value."""
    codes = values.map(task.raw_to_code)
    bad = codes.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}, line {values.index[i] + 2}, column '{column}': unknown label "
                        f"{values.iloc[i]!r} ({int(bad.sum())} row(s) affected); expected one of "
                        f"{sorted(task.raw_to_code)}")
    return codes.to_numpy(dtype=np.int64)


def index_files(folders: list[Path]) -> dict[str, Path]:
    """File name -> path over several folders (the first folder wins on duplicates)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_file():
                        found.setdefault(entry.name, Path(entry.path))
    return found
