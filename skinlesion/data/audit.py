"""Data audit: what in a dataset's files could count a case twice or leak it between partitions.

    python -m skinlesion.data.audit data=pad_ufes data.root=/data/pad-ufes-20 [--out DIR] [--no-images]

The config is composed like ``train.py``'s (same presets, same overrides) and the dataset is read by the
DataModule's own reader and split (:meth:`SkinLesionDataModule.read_partitions`), so the partitions are exactly
those a run with the same settings trains and evaluates on. Listed: duplicated rows, duplicated case ids,
identical image files (sha256), near-duplicate images (pHash), and lesions or patients whose images lie in more
than one partition. Images absent on disk are counted and skipped; ``--no-images`` reads metadata only.
docs/audit.md says what each check means and where it stops.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.table import CaseTable, duplicated_ids
from skinlesion.errors import ConfigError, DataError, SkinLesionError

PARTS = ("train", "val", "test", "holdout")   # display order of partitions
NAMES = {"pad_ufes": "PAD-UFES-20", "isic2019": "ISIC-2019", "derm7pt": "derm7pt"}
THRESHOLD = 8        # near duplicates: pHash Hamming distance <= THRESHOLD of 64 bits
THUMBNAIL = 128      # the pHash is taken of a thumbnail at most this many pixels wide
HASH = f"pHash (imagehash.phash, 64 bits) of a {THUMBNAIL}-px thumbnail"
_CHUNK = 256         # hashes compared per block: 256 x 25k uint64 XORs is ~50 MB


# ----------------------------------------------------------------------------------- lesions and patients

def group_keys(table: CaseTable) -> dict[str, np.ndarray]:
    """The ids that tie rows of one lesion (and, for PAD-UFES-20, one patient) together; None where a row has
    none. An empty dict where the dataset lists none (derm7pt)."""
    f = table.frame
    if table.dataset == "pad_ufes":
        from skinlesion.data.splits import lesion_key

        has_lesion = (f["patient_id"].notna() & f["lesion_id"].notna()).to_numpy()
        has_patient = f["patient_id"].notna().to_numpy()
        return {"lesion": np.where(has_lesion, lesion_key(f), None),
                "patient": np.where(has_patient, f["patient_id"].astype(str).to_numpy(dtype=object), None)}
    if table.dataset == "isic2019" and "lesion_id" in f.columns:
        lesion = f["lesion_id"]
        return {"lesion": np.where(lesion.notna().to_numpy(), lesion.astype(str).to_numpy(dtype=object), None)}
    return {}


def _span(parts: Iterable[str]) -> str:
    """'train/test' for a set of partitions, in train/val/test/holdout order."""
    found = set(parts)
    return "/".join([p for p in PARTS if p in found] + sorted(found - set(PARTS)))


def spanning(table: CaseTable, keys: np.ndarray, partition: np.ndarray) -> tuple[pd.DataFrame, int]:
    """Keys whose rows lie in more than one partition (one row per key, in CSV order of first appearance), and
    the number of distinct keys."""
    df = pd.DataFrame({"key": keys, "partition": partition, "row": np.arange(len(keys))})
    df = df[df["key"].notna()]
    n_keys = int(df["key"].nunique())
    n_parts = df.groupby("key", sort=False)["partition"].nunique()
    multi = df[df["key"].isin(n_parts.index[n_parts > 1])]
    records = []
    for key, g in multi.groupby("key", sort=False):
        rows = g["row"].to_numpy()
        records.append({"key": key, "partitions": _span(g["partition"]), "images": len(rows),
                        "case_ids": ";".join(str(table.case_ids[r]) for r in rows),
                        "csv_lines": ";".join(str(table.csv_line(r)) for r in rows),
                        "partition_of_each": ";".join(g["partition"].astype(str))})
    columns = ["key", "partitions", "images", "case_ids", "csv_lines", "partition_of_each"]
    return pd.DataFrame(records, columns=columns), n_keys


def span_warning(table: CaseTable, partition: np.ndarray, split: str) -> str | None:
    """The one-line training warning about lesions (patients) in several partitions; None when there are none."""
    counts, details = [], []
    for kind, keys in group_keys(table).items():
        spans, total = spanning(table, keys, partition)
        if len(spans):
            counts.append(f"{len(spans)} {kind}s (of {total})")
            by = spans["partitions"].value_counts()
            details.append(f"{kind}s " + ", ".join(f"{k}: {v}" for k, v in by.items()))
    if not counts:
        return None
    return (f"{NAMES.get(table.dataset, table.dataset)}: {' and '.join(counts)} have images in more than one "
            f"partition under data.split={split} ({'; '.join(details)}); data.split=lesion_grouped keeps each "
            f"lesion in one partition (python -m skinlesion.data.audit lists them)")


# ----------------------------------------------------------------------------------- rows and ids

def duplicated_rows(table: CaseTable, partition: np.ndarray) -> pd.DataFrame:
    """Every repetition of a row whose columns all equal an earlier row's, with the line it repeats."""
    frame = table.frame
    row_hash = pd.util.hash_pandas_object(frame, index=False).to_numpy()   # equal rows hash equal (NaN too)
    first_of: dict[int, int] = {}
    for i, h in enumerate(row_hash):
        first_of.setdefault(int(h), i)
    records = []
    for i in np.flatnonzero(frame.duplicated(keep="first").to_numpy()):
        j = first_of[int(row_hash[i])]
        records.append({"case_id": table.case_ids[i], "csv_line": table.csv_line(i),
                        "same_as_line": table.csv_line(j), "partitions": _span((partition[j], partition[i]))})
    return pd.DataFrame(records, columns=["case_id", "csv_line", "same_as_line", "partitions"])


def duplicated_case_ids(table: CaseTable, partition: np.ndarray) -> pd.DataFrame:
    """Every repetition of a case id, with the line of its first listing and whether the whole row repeats."""
    frame = table.frame
    records = []
    for rows in duplicated_ids(table):
        j = int(rows[0])
        for i in rows[1:]:
            same = bool(frame.iloc[[i, j]].duplicated(keep="first").iloc[1])
            records.append({"case_id": table.case_ids[i], "csv_line": table.csv_line(i),
                            "first_line": table.csv_line(j), "identical_row": same,
                            "partitions": _span((partition[j], partition[i]))})
    records.sort(key=lambda r: r["csv_line"])
    return pd.DataFrame(records, columns=["case_id", "csv_line", "first_line", "identical_row", "partitions"])


# ----------------------------------------------------------------------------------- images

def hash_file(path: Path) -> tuple[str | None, int | None, str | None]:
    """(sha256 of the bytes, 64-bit pHash, problem): the file is read once; the pHash is taken of a thumbnail
    (JPEGs decode at a reduced scale), so a large image costs little more than its read."""
    import imagehash
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as e:
        return None, None, f"cannot read ({type(e).__name__}: {e})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMBNAIL, THUMBNAIL))
            thumb = im.convert("RGB")   # as training sees it (RGBA and palette images become RGB)
            thumb.thumbnail((THUMBNAIL, THUMBNAIL))
            bits = imagehash.phash(thumb).hash.ravel()
    except Exception as e:  # noqa: BLE001  (any decoder failure: the file is listed as unreadable)
        return digest, None, f"cannot decode ({type(e).__name__}: {' '.join(str(e).split())})"
    return digest, int.from_bytes(np.packbits(bits).tobytes(), "big"), None


def near_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs i < j whose 64-bit hashes differ in at most ``threshold`` bits, and their distances: all
    pairs, block by block (n = 25,000 takes seconds)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(hashes), _CHUNK):
        block = hashes[start:start + _CHUNK]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, start:])   # columns from `start`: upper triangle
        bi, bj = np.nonzero(dist <= threshold)
        keep = bj > bi
        out_i.append(bi[keep] + start)
        out_j.append(bj[keep] + start)
        out_d.append(dist[bi[keep], bj[keep]])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


@dataclass
class ImageScan:
    """What the image checks saw: references (case, modality), distinct files, and which could be hashed."""
    references: int = 0
    absent_references: int = 0
    files: int = 0
    absent_files: int = 0
    hashed: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


_PAIR_COLUMNS = ["case_a", "csv_line_a", "image_a", "path_a", "partition_a", "case_b", "csv_line_b", "image_b",
                 "path_b", "partition_b", "partitions", "same_file", "distance"]


def scan_images(table: CaseTable, partition: np.ndarray, keys: Iterable[str], threshold: int = THRESHOLD,
                workers: int | None = None, progress: bool = True
                ) -> tuple[ImageScan, pd.DataFrame, pd.DataFrame]:
    """Hash every present image file once (threads, one file in memory per thread) and pair the cases whose
    files are byte-identical or within ``threshold`` pHash bits. Pairs of two images of one case are not listed
    (derm7pt reuses the dermoscopic image as clinical image in a few cases, a known quirk)."""
    from tqdm.auto import tqdm

    scan = ImageScan()
    refs: dict[Path, list[tuple[int, str]]] = {}
    for key in keys:
        for row, path in enumerate(table.images[key]):
            if path is None:
                continue
            scan.references += 1
            refs.setdefault(Path(path), []).append((row, key))
    present = [p for p in refs if p.is_file()]
    scan.files, scan.absent_files = len(refs), len(refs) - len(present)
    scan.absent_references = sum(len(refs[p]) for p in refs if not p.is_file())
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:   # decoding and hashing release the GIL
        results = list(tqdm(pool.map(hash_file, present), total=len(present), desc="hashing images",
                            disable=not progress or not present))
    digests: dict[str, list[Path]] = {}
    hashed: list[Path] = []
    phashes: list[int] = []
    sha_of: dict[Path, str] = {}
    for path, (digest, phash, problem) in zip(present, results):
        if digest is not None:
            digests.setdefault(digest, []).append(path)
            sha_of[path] = digest
        if problem is not None:
            scan.unreadable.append((path, problem))
        else:
            hashed.append(path)
            phashes.append(phash)
    scan.hashed = len(hashed)

    def pair_records(a: Path, b: Path | None, distance: int) -> list[dict]:
        # every reference of file a against every one of file b (b None: the references of a among themselves)
        left = refs[a]
        right = refs[a] if b is None else refs[b]
        out = []
        for x, (ra, ka) in enumerate(left):
            for y, (rb, kb) in enumerate(right):
                if (b is None and y <= x) or ra == rb:
                    continue
                (ra, ka, pa), (rb, kb, pb) = sorted(((ra, ka, a), (rb, kb, b or a)), key=lambda t: (t[0], t[1]))
                out.append({"case_a": table.case_ids[ra], "csv_line_a": table.csv_line(ra), "image_a": ka,
                            "path_a": str(pa), "partition_a": partition[ra], "case_b": table.case_ids[rb],
                            "csv_line_b": table.csv_line(rb), "image_b": kb, "path_b": str(pb),
                            "partition_b": partition[rb], "partitions": _span((partition[ra], partition[rb])),
                            "same_file": pa == pb, "distance": distance})
        return out

    identical = []
    for paths in digests.values():
        for x, a in enumerate(paths):
            identical += pair_records(a, None, 0)
            for b in paths[x + 1:]:
                identical += pair_records(a, b, 0)
    near = []
    ii, jj, dd = near_pairs(np.array(phashes, dtype=np.uint64), threshold)
    for i, j, d in zip(ii.tolist(), jj.tolist(), dd.tolist()):
        a, b = hashed[i], hashed[j]
        if sha_of[a] != sha_of[b]:   # byte-identical files are listed once, as identical
            near += pair_records(a, b, int(d))
    return scan, _pairs_frame(identical), _pairs_frame(near)


def _pairs_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=_PAIR_COLUMNS)
    return df.sort_values(["csv_line_a", "csv_line_b", "image_a", "image_b"], ignore_index=True)


# ----------------------------------------------------------------------------------- the audit

@dataclass
class Audit:
    """The audit of one dataset in one setting: ``summary`` (JSON-ready counts) and one table per check."""
    summary: dict
    details: dict[str, pd.DataFrame]


def audit_table(table: CaseTable, partition: np.ndarray, image_keys: Iterable[str] | None = None,
                images: bool = True, threshold: int = THRESHOLD, workers: int | None = None,
                progress: bool = True, setting: dict | None = None) -> Audit:
    """Run every check on ``table`` with its ``partition`` (one entry per row); ``setting`` is recorded."""
    partition = np.asarray(partition).astype(str)
    keys = tuple(image_keys) if image_keys is not None else tuple(table.images)
    details: dict[str, pd.DataFrame] = {"duplicated_rows": duplicated_rows(table, partition),
                                        "duplicated_case_ids": duplicated_case_ids(table, partition)}
    summary: dict = {"dataset": table.dataset, "source": str(table.source), "rows": len(table),
                     **(setting or {}), "partitions": {p: int(n) for p, n in
                                                       zip(*np.unique(partition, return_counts=True))},
                     "notes": list(table.notes)}
    counts: dict = {name: {"count": len(df), "by_partitions": _by(df)} for name, df in details.items()}
    if images:
        scan, identical, near = scan_images(table, partition, keys, threshold, workers, progress)
        details["identical_images"], details["near_duplicate_images"] = identical, near
        details["unreadable_images"] = pd.DataFrame([{"path": str(p), "problem": why} for p, why in scan.unreadable],
                                                    columns=["path", "problem"])
        summary["images"] = {"modalities": list(keys), "references": scan.references,
                             "absent_references": scan.absent_references, "files": scan.files,
                             "absent_files": scan.absent_files, "hashed": scan.hashed,
                             "unreadable": len(scan.unreadable), "content_hash": "sha256 of the file's bytes",
                             "perceptual_hash": HASH, "threshold": threshold}
        for name in ("identical_images", "near_duplicate_images"):
            counts[name] = {"pairs": len(details[name]), "by_partitions": _by(details[name])}
    else:
        summary["images"] = None
    kinds = group_keys(table)
    for kind, values in kinds.items():
        spans, total = spanning(table, values, partition)
        details[f"spanning_{kind}s"] = spans
        counts[f"spanning_{kind}s"] = {"count": len(spans), "of": total, "by_partitions": _by(spans)}
    if not kinds:
        summary["notes"].append(f"{NAMES.get(table.dataset, table.dataset)} lists no lesion or patient ids: "
                                "images of one lesion in several partitions cannot be checked")
    summary["counts"] = counts
    return Audit(summary, details)


def _by(df: pd.DataFrame) -> dict[str, int]:
    return {} if df.empty else {str(k): int(v) for k, v in df["partitions"].value_counts().items()}


def render(audit: Audit, show: int = 20) -> str:
    """The summary block, then up to ``show`` rows of each non-empty check."""
    s, c = audit.summary, audit.summary["counts"]
    setting = ", ".join(f"{k}={s[k]}" for k in ("data.split", "data.fold") if s.get(k) is not None)
    parts = ", ".join(f"{p} {n}" for p, n in sorted(s["partitions"].items(), key=lambda t: _order(t[0])))
    lines = [f"Data audit: {NAMES.get(s['dataset'], s['dataset'])}, {s['source']} ({s['rows']} rows)",
             f"  partitions{' (' + setting + ')' if setting else ''}: {parts}", "", "Summary"]

    def by(entry: dict) -> str:
        return f" ({', '.join(f'{k}: {v}' for k, v in entry['by_partitions'].items())})" if entry["by_partitions"] \
            else ""

    lines.append(f"  duplicated rows (all columns identical): {c['duplicated_rows']['count']}"
                 f"{by(c['duplicated_rows'])}")
    lines.append(f"  duplicated case ids: {c['duplicated_case_ids']['count']}{by(c['duplicated_case_ids'])}")
    img = s["images"]
    if img is None:
        lines.append("  images: not read (--no-images)")
    else:
        lines.append(f"  images ({'+'.join(img['modalities'])}): {img['hashed']} of {img['files']} file(s) hashed "
                     f"({img['absent_files']} absent, {img['unreadable']} unreadable; "
                     f"{img['absent_references']} of {img['references']} case images absent)")
        lines.append(f"  identical image files (sha256 of the bytes): {c['identical_images']['pairs']} pair(s)"
                     f"{by(c['identical_images'])}")
        lines.append(f"  near-duplicate images (pHash distance <= {img['threshold']} of 64 bits): "
                     f"{c['near_duplicate_images']['pairs']} pair(s){by(c['near_duplicate_images'])}")
        lines.append(f"    ({HASH}; byte-identical files are listed as identical only)")
    for name, entry in c.items():
        if name.startswith("spanning_"):
            lines.append(f"  {name[9:]} in more than one partition: {entry['count']} of {entry['of']}{by(entry)}")
    for note in s["notes"]:
        lines.append(f"  note: {note}")
    for name, df in audit.details.items():
        if df.empty:
            continue
        lines += ["", f"{name.replace('_', ' ')} ({len(df)}):"]
        shown = df.head(show).to_string(index=False, max_colwidth=60)
        lines += ["  " + line for line in shown.splitlines()]
        if len(df) > show:
            lines.append(f"  ... {len(df) - show} more (--out DIR writes all of them; --show N prints more)")
    return "\n".join(lines)


def _order(part: str) -> int:
    return PARTS.index(part) if part in PARTS else len(PARTS)


def write(audit: Audit, out: Path) -> list[Path]:
    """One CSV per check and summary.json under ``out``; returns the files written."""
    from skinlesion.provenance import write_csv, write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    files = []
    for name, df in audit.details.items():
        write_csv(out / f"{name}.csv", df)
        files.append(out / f"{name}.csv")
    write_json(out / "summary.json", audit.summary)
    return [*files, out / "summary.json"]


# ----------------------------------------------------------------------------------- command line

def compose(overrides: list[str]):
    """The config ``python train.py OVERRIDES`` would run (only its ``data`` node is used here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import skinlesion.config  # noqa: F401  (registers the resolvers and generated presets, as train.py does)
    from skinlesion.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    # paths.root_dir is the Hydra job's working directory, which a composed config lacks: this one's
    if "hydra:" in str(OmegaConf.to_container(cfg.paths, resolve=False).get("root_dir", "")):
        cfg.paths.root_dir = os.getcwd()
    return cfg


def audit_config(cfg, images: bool = True, threshold: int = THRESHOLD, workers: int | None = None,
                 progress: bool = True) -> Audit:
    """Audit the dataset ``cfg.data`` names, split as the DataModule of a run with ``cfg`` splits it."""
    import hydra

    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    table, partition, _ = dm.read_partitions(check_ids=False)
    setting = {"data.root": str(dm.root), "data.split": dm.split,
               "data.fold": None if dm.dataset == "derm7pt" else dm.fold}
    return audit_table(table, partition, dm.image_keys, images=images, threshold=threshold, workers=workers,
                       progress=progress, setting=setting)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m skinlesion.data.audit",
        description="List duplicated rows and case ids, identical and near-duplicate images, and lesions or "
                    "patients spanning partitions, for the dataset and split that train.py would use with the "
                    "same overrides (docs/audit.md).")
    p.add_argument("overrides", nargs="*", help="Hydra overrides as for train.py, e.g. data=isic2019 data.root=DIR")
    p.add_argument("--out", type=Path, default=None, help="write one CSV per check and summary.json here")
    p.add_argument("--no-images", action="store_true", help="metadata checks only (no image is read)")
    p.add_argument("--threshold", type=int, default=THRESHOLD,
                   help=f"near duplicates: pHash Hamming distance at most this, 0..64 (default {THRESHOLD})")
    p.add_argument("--workers", type=int, default=None, help="threads hashing images (default: min(8, cores))")
    p.add_argument("--show", type=int, default=20, help="rows of each check printed (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0 also when problems are found: the audit reports them)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from skinlesion.train import _user_error

    args = _parser().parse_args(argv)
    try:
        if not 0 <= args.threshold <= 64:
            raise ConfigError(f"--threshold {args.threshold}: expected a Hamming distance in 0..64")
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: expected a positive number of threads")
        cfg = compose(list(args.overrides))
        audit = audit_config(cfg, images=not args.no_images, threshold=args.threshold, workers=args.workers,
                             progress=sys.stderr.isatty())
        print(render(audit, max(0, args.show)))
        if args.out is not None:
            files = write(audit, args.out)
            print(f"\nwrote {len(files)} files to {args.out}")
    except (SkinLesionError, HydraException, OmegaConfBaseException) as e:
        user = _user_error(e)
        message = str(user) if user is not None else " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
