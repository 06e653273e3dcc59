"""Writing the layouts' CSV files, and reading an official file given to ``from_csv``."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd


def write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]], crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_source(src: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not src.is_file():
        raise ValueError(f"synthetic: from_csv file {src} does not exist")
    try:
        df = pd.read_csv(src)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"synthetic: from_csv file {src} is not a readable CSV: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"synthetic: from_csv file {src} lacks the column(s) {missing}")
    return df


def copy(src: Path, dst: Path) -> None:
    """Byte copy (keeps CRLF and every quirk); a no-op when images are added beside the source file itself."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and dst.samefile(src):
        return
    shutil.copyfile(src, dst)


def check_values(src: Path, column: str, values: list[str], allowed) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"synthetic: from_csv file {src}: column '{column}' has unknown value(s) {unknown[:5]}")
