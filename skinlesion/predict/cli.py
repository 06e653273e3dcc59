"""``python predict.py RUN_DIR --root DIR [--split NAME] [--out FILE]``: the command line of :mod:`skinlesion.predict`."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from skinlesion.errors import ConfigError, SkinLesionError


def check_out(out: str | Path | None) -> None:
    """``--out`` names a format this writes (checked before any work)."""
    if out is not None and Path(out).suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: expected a .csv or .parquet file name")


def write(frame: pd.DataFrame, out: str | Path | None) -> None:
    """``.csv`` or ``.parquet`` by suffix; None: CSV on standard output."""
    if out is None:
        frame.to_csv(sys.stdout, index=False)
        return
    from skinlesion.provenance import write_csv, write_parquet

    check_out(out)
    out = Path(out)
    (write_parquet if out.suffix == ".parquet" else write_csv)(out, frame)


def class_counts(frame: pd.DataFrame) -> list[str]:
    """One line per task: how many cases each class was predicted for (the ``pred/<task>`` columns)."""
    return [f"{c.removeprefix('pred/')}: " + ", ".join(f"{k} {v}" for k, v in frame[c].value_counts().items())
            for c in frame.columns if c.startswith("pred/")]


def _count(least: int):
    """An argparse type: a whole number >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
        return value
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python predict.py", description="Predict new cases with a trained run (or one of its checkpoints).",
        epilog="--root DIR: every case of DIR, a directory in the official layout of the run's dataset (PAD-UFES-20 "
               "metadata.csv + images/; ISIC-2019 ISIC_2019_Training_Metadata.csv + ISIC_2019_Training_Input/; "
               "derm7pt meta/meta.csv + images/); label columns and index files are optional. A case without an "
               "input (its image, or the metadata the model reads) is predicted from the outputs that do not need "
               "it; the 'inputs' column says what each row used.")
    ap.add_argument("run", help="a run directory, or a .ckpt written by training")
    ap.add_argument("--root", default=None, help="a directory in the dataset's official layout")
    ap.add_argument("--split", default=None,
                    help="only this official split of --root (derm7pt: train/valid/test index files; PAD-UFES-20 "
                         "and ISIC-2019: the run's own partitions, e.g. test or val)")
    ap.add_argument("--checkpoint", default="best", help="best (default: the one the run evaluated), last, swa, or a "
                                                         "checkpoint file")
    ap.add_argument("--out", default=None, help="FILE.csv or FILE.parquet (default: CSV on standard output)")
    ap.add_argument("--skip-unusable", action="store_true",
                    help="leave out cases that no output can predict (counted) instead of stopping")
    ap.add_argument("--images", nargs="*", default=[],
                    help="instead of --root: image files and/or directories (matched to --metadata rows by the "
                         "dataset's image-id column; without --metadata one case per image, one-image models)")
    ap.add_argument("--metadata", default=None, help="instead of --root: a CSV with the dataset's official columns")
    ap.add_argument("--tta", choices=("none", "flips", "six"), default=None,
                    help="test-time views (default: the run's own)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--batch-size", type=_count(1), default=32)
    ap.add_argument("--num-workers", type=_count(0), default=default_workers(),
                    help="image loading processes (default: one per core, at most 8)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from skinlesion.predict.inference import predict

    try:
        check_out(args.out)
        frame = predict(args.run, args.images, args.metadata, root=args.root, split=args.split, tta=args.tta,
                        device=args.device, batch_size=args.batch_size, which=args.checkpoint,
                        skip_unusable=args.skip_unusable, num_workers=args.num_workers)
        write(frame, args.out)
    except SkinLesionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fallback = int((frame["missing"] != "").sum())
    skipped = frame.attrs.get("skipped", 0)
    print(f"{len(frame)} case(s) -> {args.out or 'standard output'}"
          + (f"; {fallback} predicted with an input missing (see 'inputs' and 'missing')" if fallback else "")
          + (f"; {skipped} skipped: no output can predict them" if skipped else ""), file=sys.stderr)
    for line in class_counts(frame):
        print(f"predicted {line}", file=sys.stderr)
    return 0


def default_workers() -> int:
    import os

    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)




if __name__ == "__main__":
    raise SystemExit(main())
