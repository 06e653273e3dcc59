"""``python -m skinlesion.data.synthetic``: write a generated dataset in an official on-disk layout."""
from __future__ import annotations

import argparse
import sys

from skinlesion.data.synthetic import DEFAULT_N, LAYOUTS, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinlesion.data.synthetic",
                                     description="Write a synthetic dataset in an official on-disk layout.")
    parser.add_argument("--layout", required=True, help=f"one of {', '.join(LAYOUTS)}")
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--n", type=int, default=None,
                        help="rows to generate (images; derm7pt: cases); default " +
                             ", ".join(f"{k} {v}" for k, v in DEFAULT_N.items()))
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-csv", default=None,
                        help="official metadata file whose rows get generated images (pad_ufes: metadata.csv; "
                             "derm7pt: meta/meta.csv; isic2019: ISIC_2019_Training_GroundTruth.csv)")
    parser.add_argument("--difficulty", type=float, default=0.5, help="0 = trivially separable .. 1 = hard")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        root = generate(args.layout, args.out, n=args.n, size=args.size, seed=args.seed,
                        from_csv=args.from_csv, progress=not args.no_progress, difficulty=args.difficulty)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(root)
    return 0
