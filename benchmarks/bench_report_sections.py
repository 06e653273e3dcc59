"""Benchmark of the report's case-level sections (calibration, bootstrap intervals, subgroups, paired bootstrap,
robustness) on a 275-run sweep: 11 chapter-4 models x 5 backbones x 5 folds or seeds, with realistic case counts.

For each dataset it builds the simulated sweep (predictions with logits, subgroups.csv, robustness/ files for the
models that can answer without metadata), then times

* the new sections inside one report (``make_report``'s own timings: the case-level pass over every run output,
  the paired bootstrap and the tables and figures of the sections);
* the whole report with ``--no-tsne``, and the same report with ``--no-case-level`` for comparison.

Case counts (per run): PAD-UFES-20 460 validation and 460 test cases; derm7pt 203 validation and 395 test cases
with its eight tasks; ISIC-2019 5000 validation cases (its reported split). The machine load (1-minute load average)
and CPU count are printed first, since the timings depend on them.

    python benchmarks/bench_report_sections.py [--datasets pad_ufes,derm7pt,isic2019] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from skinlesion.evaluation.simulated_runs import CHAPTER4_BACKBONES, CHAPTER4_MODELS, make_sweep
from skinlesion.report import make_report

CASES = {"pad_ufes": {"n_val": 460, "n_test": 460},
         "derm7pt": {"n_val": 203, "n_test": 395, "main_metric": "avg_acc"},
         "isic2019": {"n_val": 5000, "n_test": 0}}


def build(root: Path, dataset: str) -> Path:
    return make_sweep(root / dataset, dataset, models=CHAPTER4_MODELS, backbones=CHAPTER4_BACKBONES, runs=range(5),
                      robustness=("no_meta",), sweeper_params=True, experiment="bench", **CASES[dataset])


def timed_report(sweep: Path, out: Path, **kwargs) -> tuple[float, dict]:
    started = time.perf_counter()
    res = make_report([sweep], out, ["md", "csv", "tex"], tsne=False, **kwargs)
    return time.perf_counter() - started, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="pad_ufes,derm7pt,isic2019")
    ap.add_argument("--keep", default=None, help="build the sweeps here and keep them (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_sections_"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} at start; sweeps under {root}")
    print(f"{'dataset':<10}{'runs':>6}{'build s':>9}{'case-level s':>14}{'paired s':>10}{'sections s':>12}"
          f"{'new total s':>13}{'report s':>10}{'without s':>11}")
    try:
        for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            started = time.perf_counter()
            sweep = build(root, ds)
            built = time.perf_counter() - started
            whole, res = timed_report(sweep, root / f"report_{ds}")
            t = res["timings"]
            new = t.get("case_level", 0.0) + t.get("paired", 0.0) + t.get("sections", 0.0)
            without, _ = timed_report(sweep, root / f"report_{ds}_without", case_sections=False)
            n_runs = sum(j.ok for j in res["jobs"])
            print(f"{ds:<10}{n_runs:>6}{built:>9.1f}{t.get('case_level', 0.0):>14.1f}{t.get('paired', 0.0):>10.1f}"
                  f"{t.get('sections', 0.0):>12.1f}{new:>13.1f}{whole:>10.1f}{without:>11.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at the end")


if __name__ == "__main__":
    main()
