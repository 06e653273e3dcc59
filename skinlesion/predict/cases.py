"""New cases for a prediction, read by the dataset readers training uses (:func:`skinlesion.data.pad_ufes.read` and
its siblings, with ``labelled=False``): the same layouts, image paths and case ids, plus what each case lacks."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data import derm7pt, isic2019, pad_ufes, unlabelled
from skinlesion.data.info import META_INPUT
from skinlesion.data.metadata import _norm_value
from skinlesion.data.table import CaseTable, duplicated_ids
from skinlesion.errors import ConfigError, DataError

READERS = {m.NAME: m for m in (pad_ufes, isic2019, derm7pt)}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Cases:
    """The reader's table of new cases (labels unknown) and, per case, the inputs it lacks (input -> why) and
    notes. ``from_csv``: the rows come from a metadata file (else one case per image file)."""
    table: CaseTable
    from_csv: bool
    missing: list[dict[str, str]]
    notes: list[list[str]]

    @property
    def ids(self) -> list[str]:
        return [str(c) for c in self.table.case_ids]

    @property
    def source(self) -> str:
        """For messages: the metadata file, or ``--images``."""
        return str(self.table.source) if self.from_csv else "--images"

    @property
    def frame(self) -> pd.DataFrame | None:
        """The metadata rows (the CSV's columns), or None without a metadata file."""
        return self.table.frame if self.from_csv else None

    def line(self, i: int) -> int | None:
        return self.table.csv_line(i) if self.from_csv else None

    def where(self, i: int) -> str:
        """Case ``i`` for a message: its CSV line and id, or its image."""
        line = self.line(i)
        return f"{self.source}, line {line} (case {self.ids[i]})" if line else f"{self.source} case {self.ids[i]}"

    def subset(self, rows: Sequence[int]) -> "Cases":
        rows = list(rows)
        return Cases(self.table.subset(np.asarray(rows, dtype=np.int64)), self.from_csv,
                     [self.missing[i] for i in rows], [self.notes[i] for i in rows])


def collect_images(images: Sequence[str | Path], allow_empty: bool = False) -> list[tuple[Path, str, bool]]:
    """(file, key relative to the given directory or its name, named explicitly) for every given file and image
    under a given directory."""
    found: list[tuple[Path, str, bool]] = []
    for arg in images:
        p = Path(arg).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files and not allow_empty:
                raise DataError(f"--images {arg}: the directory holds no image files ({sorted(IMAGE_SUFFIXES)})")
            found += [(f, f.relative_to(p).as_posix(), False) for f in files]
        elif p.is_file():
            found.append((p, p.name, True))
        else:
            raise DataError(f"--images {arg}: no such file or directory")
    unique: dict[Path, tuple[Path, str, bool]] = {}
    for f, rel, named in found:   # a file given twice (itself and through its directory) counts once
        first = unique.setdefault(f.resolve(), (f, rel, named))
        if named and not first[2]:
            unique[f.resolve()] = (first[0], first[1], True)
    return list(unique.values())


def _file_id(dataset: str, name: str) -> str:
    """What the dataset's image-id column holds for a file (ISIC-2019: the stem; otherwise the name or path)."""
    return Path(name).stem if dataset == "isic2019" else name


def _matcher(dataset: str, files: list[tuple[Path, str, bool]]):
    by_rel: dict[str, list[Path]] = {}
    by_name: dict[str, list[Path]] = {}
    for f, rel, _ in files:
        by_rel.setdefault(rel, []).append(f)
        by_name.setdefault(_file_id(dataset, f.name), []).append(f)

    def match(value: str) -> list[Path]:
        value = value.strip().replace("\\", "/")
        return by_rel.get(value) or by_name.get(_file_id(dataset, Path(value).name), [])
    return match


def _from_table(pred, table: CaseTable, looked: str = "") -> Cases:
    """The reader's cases, with the images the model reads that each lacks (``looked``: where an image named but
    not found was looked for)."""
    columns = READERS[pred.dataset].IMAGE_COLUMNS
    absent = [columns[k] for k in pred.image_keys if columns[k] not in table.frame.columns]
    if absent:
        raise DataError(f"{table.source}, line 1 (header): no column {absent}; the {pred.dataset} model reads "
                        f"image(s) {list(pred.image_keys)}, matched to rows by the dataset's column(s) "
                        f"{[columns[k] for k in pred.image_keys]}")
    missing = unlabelled.missing_images(table.frame, table.images, columns, pred.image_keys, looked)
    for k in pred.image_keys:   # a missing image is no image: the branches reading it are left out
        table.images[k] = [None if k in m else p for p, m in zip(table.images[k], missing)]
    return Cases(table, True, missing, [[] for _ in range(len(table))])


def cases_from_csv(pred, csv: Path, files: list[tuple[Path, str, bool]]) -> Cases:
    """The rows of a metadata file in the dataset's columns, their images matched among ``files`` by the dataset's
    image-id column(s) (a relative path, or a file name; ISIC-2019: the name without suffix)."""
    if not csv.is_file():
        raise DataError(f"--metadata {csv}: no such file")
    table = READERS[pred.dataset].read(csv.parent, labelled=False, metadata=csv)
    columns = READERS[pred.dataset].IMAGE_COLUMNS
    match = _matcher(pred.dataset, files)
    used: set[Path] = set()
    for k in pred.image_keys:
        col = columns[k]
        if col not in table.frame.columns:
            continue   # refused below, naming the column
        paths: list[Path | None] = []
        for r, value in enumerate(table.frame[col].tolist()):
            value = _norm_value(value)
            hits = [] if value is None else sorted(set(match(value)))
            if len(hits) > 1:
                raise DataError(f"{csv}, line {table.csv_line(r)}, column '{col}': {value!r} matches several files "
                                f"{[str(h) for h in hits]}; give one of them")
            paths.append(hits[0] if hits else None)
            used.update(hits[:1])
        table.images[k] = paths
    # a file named on the command line must be predicted; other images in a given directory may be left over
    named = [f for f, _, is_named in files if is_named and f not in used]
    if named:
        raise DataError(f"--images {named[0]}: matches no row of {csv} (column(s) "
                        f"{[columns[k] for k in pred.image_keys]}; {len(named)} named image(s) unmatched); every "
                        "image file given by name must be named by its case's row")
    searched = ", ".join(dict.fromkeys(str(f.parent) for f, _, _ in files)) or "none given"
    return _from_table(pred, table, f"among --images ({searched})")


def cases_from_images(pred, files: list[tuple[Path, str, bool]], why_no_meta: str = "no --metadata") -> Cases:
    """One case per image file (one-image models without a metadata file); the metadata counts as missing."""
    keys = pred.image_keys
    columns = READERS[pred.dataset].IMAGE_COLUMNS
    if len(keys) != 1:
        raise ConfigError(f"the model reads {len(keys)} images per case ({list(keys)}): pass --metadata with the "
                          f"{pred.dataset} CSV whose column(s) {[columns[k] for k in keys]} pair them")
    if not files:
        raise ConfigError("nothing to predict: pass --images (files or directories) and/or --metadata CSV")
    n = len(files)
    ids = np.array([_file_id(pred.dataset, rel if pred.dataset == "derm7pt" else Path(rel).name)
                    for _, rel, _ in files], dtype=str)
    reader = READERS[pred.dataset]
    table = CaseTable(pred.dataset, Path("--images"), pd.DataFrame(index=pd.RangeIndex(n)), ids, reader.TASKS,
                      unlabelled.no_targets(n, reader.TASKS), {keys[0]: [f for f, _, _ in files]})
    missing = [{META_INPUT: why_no_meta} if pred.vectorizer is not None else {} for _ in range(n)]
    return Cases(table, False, missing, [[] for _ in range(n)])


def cases_from_root(pred, root: str | Path, split: str | None = None) -> Cases:
    """Every case of a directory in the run's dataset's official layout (label columns and index files optional),
    or those of the official split ``split``: derm7pt's index files in the directory, for PAD-UFES-20 and ISIC-2019
    the partition of that name in the run's folds.csv. A case keeps what it lacks in ``missing``."""
    dataset, reader = pred.dataset, READERS[pred.dataset]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"--root {root}: not a directory")
    image_dir = (pred.payload["config"].get("data") or {}).get("image_dir") or isic2019.IMAGE_DIR
    csv = root / reader.METADATA
    if csv.is_file():
        cases = _from_table(pred, reader.read(root, image_dir=image_dir, labelled=False))
    else:
        other = next((d for d, r in READERS.items() if d != dataset and (root / r.METADATA).is_file()), None)
        if other is not None:
            raise DataError(f"--root {root} is a {other} folder ({READERS[other].METADATA}); the run's model was "
                            f"trained on {dataset}, whose folders hold {reader.METADATA}")
        if dataset == "derm7pt":
            raise DataError(f"{csv}: not found; derm7pt cases are defined by meta/meta.csv (it says which file is "
                            "the clinical and which the dermoscopic image of each case)")
        if not pred.image_keys:
            raise DataError(f"{csv}: not found; the model reads metadata only")
        folders = [root / image_dir] if dataset == "isic2019" else [root / "images"]
        files = [f for d in folders if d.is_dir() for f in collect_images([d], allow_empty=True)]
        if not files:
            raise DataError(f"--root {root}: neither {reader.METADATA} nor any image under "
                            f"{[str(d) for d in folders]}")
        cases = cases_from_images(pred, files, why_no_meta=f"no {reader.METADATA}")
    return cases if split is None else select_split(pred, cases, root, split)


def note_repeated_ids(cases: Cases) -> int:
    """A case id that a metadata file lists more than once is predicted once per row (a case may well be sent
    twice); each such row's notes name the other lines. Returns how many ids are repeated."""
    if not cases.from_csv:
        return 0
    groups = duplicated_ids(cases.table)
    for rows in groups:
        for r in rows:
            others = ", ".join(str(cases.line(o)) for o in rows if o != r)
            cases.notes[r].append(f"case id also listed on line {others}: predicted once per row")
    return len(groups)


def select_split(pred, cases: Cases, root: Path, split: str) -> Cases:
    """The cases of one official split: derm7pt's index files (meta.csv order, as the saved predictions), else the
    run's own partition in its folds.csv (in that file's order)."""
    if pred.dataset == "derm7pt":
        part = {"valid": "val", "validation": "val"}.get(split, split)
        if part not in derm7pt.INDEX_FILES:
            raise ConfigError(f"--split {split}: expected one of {sorted(derm7pt.INDEX_FILES)} (derm7pt's index files)")
        rows = derm7pt.index_rows(root, part)
        bad = rows[(rows < 0) | (rows >= len(cases.ids))]
        if bad.size:
            raise DataError(f"{root / 'meta' / derm7pt.INDEX_FILES[part]}: row {int(bad[0])} outside meta/meta.csv "
                            f"({len(cases.ids)} rows)")
        return cases.subset(sorted(rows.tolist()))
    folds = None if pred.run_dir is None else pred.run_dir / "folds.csv"
    if folds is None or not folds.is_file():
        raise ConfigError(f"--split {split}: the {pred.dataset} partitions are the run's own (folds.csv); pass "
                          "the run directory rather than a checkpoint file")
    table = pd.read_csv(folds, dtype={"case_id": str})
    wanted = table.loc[table["partition"] == split, "case_id"].tolist()
    if not wanted:
        raise ConfigError(f"--split {split}: no such partition in {folds} (it has "
                          f"{sorted(table['partition'].unique())})")
    position = {c: i for i, c in enumerate(cases.ids)}
    absent = [c for c in wanted if c not in position]
    if absent:
        raise DataError(f"--split {split}: {len(absent)} case(s) of the run's {split} partition are not in "
                        f"{cases.source}, first: {absent[0]!r}")
    return cases.subset([position[c] for c in wanted])


def encode_metadata(pred, cases: Cases) -> np.ndarray:
    """The metadata matrix of the cases, with what is missing recorded per case (meta -> which fields)."""
    vec = pred.vectorizer
    n = len(cases.ids)
    if vec is None:
        return np.zeros((n, 0), dtype=np.float32)
    if META_INPUT not in pred.reads:   # the dataset has metadata, the network reads none: nothing can be missing
        return np.zeros((n, vec.dim), dtype=np.float32)
    if cases.frame is None:
        return np.zeros((n, vec.dim), dtype=np.float32)   # cases_from_images recorded why
    df = cases.frame.copy()
    vec.source = cases.source   # errors name the user's CSV
    absent = [f for f in vec.field_names if f not in df.columns]
    empty_ok = vec.empty_in_fit or {}
    for r in range(n):
        row = df.iloc[r]
        empty = [f for f in vec.field_names if f not in absent and _norm_value(row[f]) is None
                 and not empty_ok.get(f)]
        if absent or empty:
            parts = ([f"no column {absent}"] if absent else []) + ([f"empty {empty}"] if empty else [])
            cases.missing[r][META_INPUT] = "; ".join(parts)
        for f in vec.fields:
            v = None if f.numeric or f.name in absent else _norm_value(row[f.name])
            if v is not None and v not in f.vocab:
                cases.notes[r].append(f"{f.name}={v!r} outside the training vocabulary: encoded as all zeros")
    for f in absent:
        df[f] = None   # encoded as empty; the branches that read the metadata are not used for these cases
    # an unseen category warns (UnseenCategoryWarning, naming the user's CSV) and encodes as zeros, as in training
    return vec.transform(df)


def check_images(pred, cases: Cases) -> None:
    """Every given image must open (header and end checked), before any is run through the model."""
    from skinlesion.data.images import check_images as check

    for k in pred.image_keys:
        paths = cases.table.images[k]
        given = [(i, p) for i, p in enumerate(paths) if p is not None]
        for (i, p), problem in zip(given, check([p for _, p in given], progress=False)):
            if problem is not None:
                line = cases.line(i)
                where = f"case {cases.ids[i]}" + (f", {Path(cases.source).name} line {line}" if line else "")
                raise DataError(f"{p}: cannot read the {k} image ({where}): {problem}")
