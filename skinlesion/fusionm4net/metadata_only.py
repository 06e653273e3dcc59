"""The metadata-only baseline M of Table 6.3: the stage-2 classifier (per task) on the m20 metadata alone,
fitted on the official training cases and evaluated on validation and test (CPU, seconds).

    python -m skinlesion.fusionm4net.metadata_only DATA_ROOT [--out DIR] [--classifier svm|logreg|mlp] [--seed N]

It writes an ordinary run directory (predictions with the single branch ``m``, ``metrics.json``, ``run.json``), so
reports and statistics treat it like any run.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skinlesion.errors import SkinLesionError
from skinlesion.fusionm4net.stage2 import DATASET, META_VARIANT, _fit_predict, build_classifier, classifier_spec


def run_metadata_only(data_root: str | Path, out_dir: str | Path, classifier: str = "svm", seed: int = 0,
                      experiment: str | None = None) -> dict:
    from skinlesion.data import derm7pt
    from skinlesion.data.metadata import build_vectorizer
    from skinlesion.data.table import check_root
    from skinlesion.evaluation import predictions as P
    from skinlesion.evaluation.metrics import evaluate_predictions
    from skinlesion.evaluation.stats import NO_BACKBONE
    from skinlesion.provenance import environment, write_json, write_parquet

    root = check_root(str(data_root), DATASET)
    table = derm7pt.read(root)
    part = derm7pt.partition(table, root)
    train = part == "train"
    vec = build_vectorizer(DATASET, META_VARIANT, source=str(table.source))
    vec.fit(table.frame[train])   # fixed vocabulary: fitting only checks the training rows' columns
    meta = vec.transform(table.frame).astype(np.float64)
    classes = {t.name: list(t.classes) for t in table.tasks}
    name, spec = classifier_spec(classifier)
    estimator = build_classifier(spec, seed)
    splits = {s: part == s for s in ("val", "test")}
    probs: dict[str, dict[str, np.ndarray]] = {s: {} for s in splits}
    per_task = {}
    for j, t in enumerate(table.tasks):
        out, per_task[t.name] = _fit_predict(estimator, meta[train], table.targets[train, j], t.num_classes,
                                             {s: meta[m] for s, m in splits.items()})
        for s in splits:
            probs[s][t.name] = out[s]
    frames = {s: P.to_frame(table.case_ids[m], {t.name: table.targets[m, j] for j, t in enumerate(table.tasks)},
                            {"m": probs[s]}, classes) for s, m in splits.items()}
    metrics: dict = {"main_metric": "avg_acc", "reported": "m", "branches": ["m"], "tasks": classes,
                     "classifier": {"name": name, "estimator": repr(estimator), "tasks": per_task}}
    for s, df in frames.items():
        metrics[s] = {"m": evaluate_predictions(df, "m", DATASET)}
    out = Path(out_dir)
    record = {"status": "completed", "error": None, "dataset": DATASET, "model": "metadata_only", "method": "M",
              "backbone": NO_BACKBONE, "fold": None, "seed": int(seed), "experiment": experiment, "reported": "m",
              "main_metric": "avg_acc", "branches": ["m"], "tasks": classes, "classifier": name,
              "params": {"total": 0, "trainable": 0, "thesis_count": 0}, "overrides": []}
    for s, df in frames.items():
        write_parquet(out / "predictions" / f"{s}.parquet", df)
    write_json(out / "metrics.json", metrics)
    write_json(out / "environment.json", environment(Path(__file__).resolve().parents[2]))
    write_json(out / "run.json", record)   # last: a run directory is complete once it says so
    return {"out_dir": str(out), "avg_acc": {s: metrics[s]["m"]["avg_acc"] for s in frames}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinlesion.fusionm4net.metadata_only", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_root", help="the derm7pt release root (meta/meta.csv and the index files)")
    ap.add_argument("--out", default="outputs/metadata_only", help="run directory to write")
    ap.add_argument("--classifier", default="svm", choices=["svm", "logreg", "mlp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiment", default=None, help="recorded as the run's experiment (report grouping)")
    args = ap.parse_args(argv)
    try:
        res = run_metadata_only(args.data_root, args.out, args.classifier, args.seed, args.experiment)
    except (SkinLesionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"M ({args.classifier} on m20): AVG ACC val {100 * res['avg_acc']['val']:.2f}%, "
          f"test {100 * res['avg_acc']['test']:.2f}%; wrote {res['out_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
