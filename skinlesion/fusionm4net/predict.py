"""New cases through a whole FusionM4Net run (``python predict.py FUSIONM4NET_RUN_DIR --root DIR``): stage 1's main
network on the images (its derm, clinic and fusion outputs), P1 = those outputs weighted as the run's Fusion Scheme 1
found, P2 = stage 2's per-task classifier on [P1 ; m20 metadata], P3 = w·P1 + (1 − w)·P2 with the run's w, and the
equal mix P3 (averaged).

Stage 2 keeps what it fitted as data: the held-out cases' features and targets (``classifier/train_features.parquet``)
and the classifier's spec and seed (``stage2.json``). The classifiers are refitted from them exactly as stage 2 fitted
them (the same function, data and seed give the same model), so no pickled estimator is stored or loaded.

A case without its metadata (the m20 columns absent or empty) gets P1 for every output (``inputs`` says so): P2 needs
the metadata; one without an image follows stage 1's rules (:mod:`skinlesion.predict`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.search import fuse

OUTPUTS = ("p1", "p2", "p3", "p3_avg")


def is_fusionm4net_run(path: str | Path) -> bool:
    """A run directory written by FusionM4Net's stage 2."""
    return Path(path).is_dir() and (Path(path) / "stage2.json").is_file()


def predict(run_dir: str | Path, root: str | Path, split: str | None = None, **kwargs) -> pd.DataFrame:
    """One row per case of ``root`` (``split``: one official split of it): ``case_id``, ``inputs``, the
    ``prob/<p1|p2|p3|p3_avg>/<task>/<class>`` columns, ``pred/<task>`` (of P3, the reported output), ``missing`` and
    ``notes``. ``kwargs`` go to stage 1's prediction (device, batch size, workers, test-time views)."""
    from skinlesion.data.metadata import build_vectorizer
    from skinlesion.fusionm4net.stage2 import META_VARIANT, _fit_predict, build_classifier, scheme2_features
    from skinlesion.predict import cases_from_root, load_predictor
    from skinlesion.predict import predict as predict_stage1

    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "stage2.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    main = Path(settings["main_run"])
    if not main.is_dir():   # the run moved: its stage 1 beside it, as fusionm4net.py lays it out
        main = run_dir / "stage1" / "main"
    tasks: dict[str, list[str]] = metrics["tasks"]
    weights = metrics["fusion_scheme1"]["weights"]
    w = float(metrics["fusion_scheme2"]["w"])

    stage1 = load_predictor(main, kwargs.get("device") or "cpu")
    cases = cases_from_root(stage1, root, split)   # read once: stage 1's images and stage 2's metadata
    frame = predict_stage1(stage1, root=root, split=split, cases=cases, **kwargs)
    p1 = fuse([P.branch_probs(frame, b) for b in weights], list(weights.values()))

    vec = build_vectorizer("derm7pt", META_VARIANT, source=cases.source)
    absent = [] if cases.frame is None else [f for f in vec.field_names if f not in cases.frame.columns]
    has_meta = np.zeros(len(frame), dtype=bool)
    m20 = np.zeros((len(frame), vec.dim))
    if cases.frame is not None and not absent:
        position = {c: i for i, c in enumerate(cases.ids)}   # the predicted cases (--skip-unusable drops some)
        rows = cases.frame.iloc[[position[c] for c in frame["case_id"]]]
        has_meta = ~rows[vec.field_names].isna().any(axis=1).to_numpy()
        if has_meta.any():   # the fixed m20 vocabulary: fitting only checks the columns
            vec.fit(rows[has_meta])
            m20[has_meta] = vec.transform(rows[has_meta])

    fit = pd.read_parquet(run_dir / "classifier" / "train_features.parquet")
    features = settings["fusion_scheme2"]["features"]
    spec = settings["fusion_scheme2"]["classifier"]["spec"]
    estimator = build_classifier(spec, int(settings["seed"]))
    x_new = scheme2_features(p1, m20, list(tasks))
    p2 = {}
    for t, classes in tasks.items():
        probs, _ = _fit_predict(estimator, fit[features].to_numpy(np.float64), fit[P.TARGET_PREFIX + t].to_numpy(),
                                len(classes), {"new": x_new})
        p2[t] = np.where(has_meta[:, None], probs["new"], p1[t])   # without metadata, P2 falls back to P1
    out = {"p1": p1, "p2": p2, "p3": fuse([p1, p2], [w, 1.0 - w]), "p3_avg": fuse([p1, p2], [0.5, 0.5])}

    cols: dict = {"case_id": frame["case_id"].tolist(),
                  "inputs": [i + ("+meta" if m else "") for i, m in zip(frame["inputs"], has_meta)]}
    for b in OUTPUTS:
        for t, classes in tasks.items():
            for j, c in enumerate(classes):
                cols[f"{P.PROB_PREFIX}{b}/{t}/{c}"] = out[b][t][:, j]
    for t, classes in tasks.items():
        cols[f"pred/{t}"] = [classes[j] for j in out["p3"][t].argmax(axis=1)]
    no_meta = f"meta (no column {absent})" if absent else "meta (empty m20 field: P2 = P1)"
    cols["missing"] = ["; ".join(x for x in (m, "" if h else no_meta) if x)
                       for m, h in zip(frame["missing"], has_meta)]
    cols["notes"] = frame["notes"].tolist()
    result = pd.DataFrame(cols)
    result.attrs["skipped"] = frame.attrs.get("skipped", 0)
    return result
