"""Stage 2 of FusionM4Net: Fusion Schemes 1 and 2 on the saved predictions of two finished stage-1 runs.

    python -m skinlesion.fusionm4net.stage2 MAIN_RUN SUB_RUN [--out DIR] [--classifier svm|logreg|mlp]

Inputs are two run directories of the two-image network (branches ``derm``, ``clinic``, ``fusion``) on derm7pt,
or of a one-image network (one branch, taken as P1 unchanged: the two-stage C-M / D-M baselines):

* MAIN, trained on every training case: ``run.json`` (status ``completed``), ``config.yaml`` (its ``data.root``
  locates ``meta/meta.csv`` and the index files), ``predictions/val.parquet`` and ``predictions/test.parquet``
  covering the official validation and test partitions.
* SUB, trained on the first half of ``meta/train_indexes.csv`` in file order (206 of the 413 official rows):
  ``run.json`` and ``predictions/holdout.parquet``, its predictions for the other half (the remaining 207
  training cases, which it never trained on). Same schema as the other prediction files.

Steps:

1. Fusion Scheme 1: the weights of (derm, clinic, fusion) maximising validation AVG ACC of MAIN, by the exact
   simplex search; P1 = the weighted probabilities on validation, test and SUB's held-out cases.
2. Fusion Scheme 2: per task, a classifier fitted on [P1 of all tasks ; m20 metadata] of the held-out cases
   only; P2 = its probabilities on validation and test. P3 = w·P1 + (1 − w)·P2 with the first w of
   ``linspace(0, 1, 100)`` that maximises validation AVG ACC, applied unchanged to test.
3. An ordinary run directory: predictions with branches ``p1``, ``p2``, ``p3`` and ``p3_avg`` (= (P1 + P2)/2, the
   equal-weight mix the searched w is compared with), ``metrics.json``, ``run.json`` (``reported: p3``) and
   ``stage2.json`` (inputs and settings).

The held-out cases are predicted by a model that never saw them, so the classifier learns how stage-1
probabilities of unseen cases relate to the truth; validation stays free for the weight searches and test for the
final score.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.derm7pt import sub_model_rows  # noqa: F401  (the split stage 1 uses; re-exported)
from skinlesion.errors import ConfigError, DataError, SkinLesionError
from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.metrics import evaluate_predictions
from skinlesion.evaluation.search import fuse, search_line, search_simplex

DATASET = "derm7pt"
SCHEME1_BRANCHES = ("derm", "clinic", "fusion")   # this order fixes the search's lexicographic tie-break
# P1, P2, P3 and the equal-weight mix of P1 and P2 ("P3 (averaged)", Table 6.6's baseline for the searched w)
OUTPUT_BRANCHES = ("p1", "p2", "p3", "p3_avg")
HOLDOUT = "holdout"
META_VARIANT = "m20"
W_STEPS = 100
TRAIN_INDEX_FILE = "meta/train_indexes.csv"

# The classifier of Fusion Scheme 2, one per task; a mapping with ``_target_`` selects any other estimator that has
# predict_proba. ``random_state`` is set to the seed when the estimator takes one and the spec does not name it.
CLASSIFIERS: dict[str, dict] = {
    "svm": {"_target_": "sklearn.svm.SVC", "C": 1.0, "kernel": "rbf", "gamma": "scale", "probability": True},
    "logreg": {"_target_": "sklearn.linear_model.LogisticRegression", "C": 0.01, "class_weight": "balanced"},
    "mlp": {"_target_": "sklearn.neural_network.MLPClassifier"},
}

_SPLIT_SOURCE = {"val": "meta/valid_indexes.csv", "test": "meta/test_indexes.csv"}
_SPLIT_NAME = {"val": "validation", "test": "test"}


# ------------------------------------------------------------------------------------------- inputs

def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _check_frame(df: pd.DataFrame, path: Path) -> dict[str, list[str]]:
    """Schema checks of one stage-1 prediction file; returns its ``{task: classes}``."""
    if "case_id" not in df.columns:
        raise DataError(f"{path}: no 'case_id' column")
    if df.empty:
        raise DataError(f"{path}: no rows")
    dup = df["case_id"][df["case_id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: case_id {dup.iloc[0]!r} appears more than once")
    try:
        have = P.branches(df)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    try:
        names = stage1_branches(have)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    classes = P.task_classes(df, names[0])
    for b in names[1:]:
        other = P.task_classes(df, b)
        if other != classes:
            raise DataError(f"{path}: branch {b!r} has tasks/classes {other}, branch "
                            f"{names[0]!r} has {classes}")
    for t, cls in classes.items():
        col = P.TARGET_PREFIX + t
        if col not in df.columns:
            raise DataError(f"{path}: no '{col}' column")
        codes = pd.to_numeric(df[col], errors="coerce")
        bad = codes.isna() | (codes < 0) | (codes >= len(cls)) | (codes != np.round(codes))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}, row {i} (case_id {df['case_id'].iloc[i]!r}), column '{col}': expected a "
                            f"class code 0..{len(cls) - 1}, got {df[col].iloc[i]!r}")
    for b in names:
        for t, cls in classes.items():
            for c in cls:
                col = f"{P.PROB_PREFIX}{b}/{t}/{c}"
                values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
                bad = ~np.isfinite(values)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise DataError(f"{path}, row {i} (case_id {df['case_id'].iloc[i]!r}), column '{col}': "
                                    f"expected a probability, got {df[col].iloc[i]!r}")
    return classes


def stage1_branches(have: Sequence[str]) -> tuple[str, ...]:
    """The stage-1 outputs stage 2 reads: (derm, clinic, fusion) of a two-image network, fused by Fusion Scheme
    1; or the single output of a one-image network (the two-stage C-M / D-M baselines), taken as P1 unchanged."""
    if all(b in have for b in SCHEME1_BRANCHES):
        return SCHEME1_BRANCHES
    if len(have) == 1:
        return tuple(have)
    raise ValueError(f"branches {list(have)}: stage 2 reads the derm, clinic and fusion outputs of a two-image "
                     "network, or the single output of a one-image network")


_DESCRIBE = {"val": "the validation predictions", "test": "the test predictions",
             HOLDOUT: "the sub model's predictions for the training cases it did not train on"}


def _load_run(run_dir: str | Path, role: str, splits: Sequence[str]) -> tuple[dict, dict[str, pd.DataFrame],
                                                                                dict[str, Path]]:
    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"{role} run {d}: not a directory")
    info = _read_json(d / "run.json")
    if info.get("status") != "completed":
        raise DataError(f"{d / 'run.json'}: status {info.get('status')!r}; stage 2 needs a completed {role} run")
    if info.get("dataset") != DATASET:
        raise DataError(f"{d / 'run.json'}: dataset {info.get('dataset')!r}; stage 2 works on {DATASET} runs")
    frames, paths = {}, {}
    for s in splits:
        f = d / "predictions" / f"{s}.parquet"
        if not f.is_file():
            raise DataError(f"{f}: not found ({role} run: {_DESCRIBE[s]})")
        try:
            df = P.read_predictions(f)
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
            raise DataError(f"{f}: cannot be read as parquet ({type(e).__name__}: {e})") from None
        frames[s], paths[s] = df, f
    return info, frames, paths


def _data_root(main_dir: Path, override: str | Path | None) -> Path:
    from skinlesion.data.table import check_root

    if override is not None:
        return check_root(override, DATASET)
    path = main_dir / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: not found; stage 2 reads data.root from the MAIN run's saved config "
                        f"(or pass the derm7pt root explicitly)")
    import yaml
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__})") from None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or data.get("root") in (None, "", "???"):
        raise ConfigError(f"{path}: data.root is not set; expected the derm7pt release root")
    if data.get("dataset", DATASET) != DATASET:
        raise ConfigError(f"{path}: data.dataset is {data.get('dataset')!r}; stage 2 works on {DATASET} runs")
    try:
        return check_root(data["root"], DATASET)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _first(items) -> str:
    return repr(next(iter(sorted(items))))


def _check_cases(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], table, part: np.ndarray,
                 holdout_rows: np.ndarray, n_train: int) -> None:
    """The case sets: validation and test are the official partitions, the held-out cases exactly the second half
    of train_indexes.csv (so the classifier can never be fitted on validation or test cases)."""
    known = set(table.case_ids.tolist())
    for s, df in frames.items():
        unknown = set(df["case_id"]) - known
        if unknown:
            raise DataError(f"{paths[s]}: {len(unknown)} case_id(s) that are not a case_num of {table.source} "
                            f"(e.g. {_first(unknown)})")
    evaluation = set(table.case_ids[part != "train"].tolist())
    held = set(frames[HOLDOUT]["case_id"])
    leak = held & evaluation
    if leak:
        raise DataError(f"{paths[HOLDOUT]}: {len(leak)} case(s) of the validation/test partitions (e.g. case_num "
                        f"{_first(leak)}); the stage-2 classifier may only be fitted on training cases")
    expected = set(table.case_ids[holdout_rows].tolist())
    if held != expected:
        lo = n_train - len(holdout_rows)
        raise DataError(f"{paths[HOLDOUT]}: expected the {len(expected)} held-out training cases "
                        f"(rows {lo}..{n_train - 1} of {TRAIN_INDEX_FILE} in file order), got {len(held)}: "
                        f"{len(expected - held)} missing"
                        + (f" (e.g. case_num {_first(expected - held)})" if expected - held else "")
                        + f", {len(held - expected)} unexpected"
                        + (f" (e.g. case_num {_first(held - expected)})" if held - expected else ""))
    for s in ("val", "test"):
        ids = set(frames[s]["case_id"])
        want = set(table.case_ids[part == s].tolist())
        if ids != want:
            raise DataError(f"{paths[s]}: expected the {len(want)} cases of the official {_SPLIT_NAME[s]} partition "
                            f"({_SPLIT_SOURCE[s]}), got {len(ids)}: {len(want - ids)} missing, "
                            f"{len(ids - want)} from other partitions"
                            + (f" (e.g. case_num {_first(ids - want)})" if ids - want else ""))


# ----------------------------------------------------------------------------------------- classifier

def classifier_spec(classifier: str | Mapping) -> tuple[str, dict]:
    """``(name, spec)`` of a classifier given as ``svm|logreg|mlp`` or as a mapping with ``_target_``."""
    if isinstance(classifier, str):
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"unknown classifier {classifier!r}; expected one of {list(CLASSIFIERS)} or a mapping "
                              f"with '_target_'")
        return classifier, dict(CLASSIFIERS[classifier])
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(classifier, DictConfig):
            classifier = OmegaConf.to_container(classifier, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(classifier, Mapping) or not isinstance(classifier.get("_target_"), str):
        raise ConfigError(f"classifier must be one of {list(CLASSIFIERS)} or a mapping with '_target_', "
                          f"got {classifier!r}")
    spec = dict(classifier)
    named = [n for n, s in CLASSIFIERS.items() if s == spec]
    return (named[0] if named else spec["_target_"].rsplit(".", 1)[-1]), spec


def build_classifier(spec: Mapping, seed: int):
    """The (unfitted) estimator of a spec, with ``random_state=seed`` where it takes one and the spec is silent."""
    import hydra.utils

    target = spec.get("_target_")
    try:
        est = hydra.utils.instantiate(dict(spec), _convert_="all")
    except Exception as e:  # noqa: BLE001  (hydra wraps import and argument errors alike)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"classifier {target!r}: cannot be built ({first})") from None
    if not (hasattr(est, "fit") and hasattr(est, "predict_proba")):
        raise ConfigError(f"classifier {target!r}: needs fit() and predict_proba() (an SVC needs probability=True)")
    if "random_state" not in spec and hasattr(est, "get_params") and "random_state" in est.get_params():
        est.set_params(random_state=seed)
    return est


def _fit_predict(template, x_fit: np.ndarray, y_fit: np.ndarray, k: int, x_pred: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict]:
    """One task's classifier: fitted on the held-out cases, probabilities in the task's full class order."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    present = np.unique(y_fit).astype(np.int64)
    info = {"classes_present": present.tolist(), "n_fit": int(len(y_fit))}
    out = {}
    if len(present) == 1:
        # nothing to separate: every case gets the one class seen (classifiers refuse a single class)
        const = np.zeros(k)
        const[present[0]] = 1.0
        info.update(fitted=False, converged=None)
        return {s: np.tile(const, (len(x), 1)) for s, x in x_pred.items()}, info
    clf = clone(template)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # SVC(probability=True) -- libsvm's Platt scaling -- is the method's definition; scikit-learn 1.9
        # deprecates the flag in favour of an outside calibration that gives different probabilities.
        warnings.filterwarnings("ignore", message=r"The `probability` parameter was deprecated", category=FutureWarning)
        try:
            clf.fit(x_fit, y_fit)
        except ValueError as e:
            raise DataError(f"stage-2 classifier {type(clf).__name__}: cannot be fitted on the held-out cases "
                            f"({str(e).splitlines()[0]})") from None
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    info.update(fitted=True, converged=converged)
    # predict_proba's columns follow clf.classes_ (the classes seen in fitting): place them by class code so a
    # class absent from the held-out cases gets probability 0 instead of shifting the columns after it
    cols = np.asarray(clf.classes_).astype(np.int64)
    for s, x in x_pred.items():
        p = np.zeros((len(x), k))
        p[:, cols] = clf.predict_proba(x)
        out[s] = p
    return out, info


def scheme2_features(p1: Mapping[str, np.ndarray], m20: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    """[P1 of every task in task order ; metadata], unscaled."""
    return np.concatenate([np.asarray(p1[t], dtype=np.float64) for t in tasks] + [np.asarray(m20, np.float64)],
                          axis=1)


# ----------------------------------------------------------------------------------------------- run

def _avg_acc(m: Mapping) -> float:
    return float(m["avg_acc"])


def run_stage2(main_dir: str | Path, sub_dir: str | Path, out_dir: str | Path | None = None,
               classifier: str | Mapping = "svm", seed: int | None = None, grid_n: int = 50,
               data_root: str | Path | None = None, method: str = "FusionM4Net") -> dict:
    """Stage 2 on two finished stage-1 runs; writes a run directory (default ``MAIN/../stage2``).

    ``seed`` (default: MAIN's seed) seeds the classifier and is the run's recorded seed; ``data_root`` replaces
    the derm7pt root recorded in MAIN's config (e.g. when the runs were moved). Returns a summary dict.
    """
    from skinlesion.data import derm7pt
    from skinlesion.data.metadata import build_vectorizer

    main_dir, sub_dir = Path(main_dir), Path(sub_dir)
    if isinstance(grid_n, bool) or not isinstance(grid_n, (int, np.integer)) or grid_n < 2:
        raise ConfigError(f"grid_n must be an integer >= 2, got {grid_n!r}")
    name, spec = classifier_spec(classifier)

    main_info, main_frames, main_paths = _load_run(main_dir, "MAIN", ("val", "test"))
    sub_info, sub_frames, sub_paths = _load_run(sub_dir, "SUB", (HOLDOUT,))
    frames = {**main_frames, **sub_frames}
    paths = {**main_paths, **sub_paths}
    classes = _check_frame(frames["val"], paths["val"])
    for s in ("test", HOLDOUT):
        other = _check_frame(frames[s], paths[s])
        if other != classes:
            diff = next((t for t in {**classes, **other} if classes.get(t) != other.get(t)), None)
            raise DataError(f"{paths[s]}: task {diff!r} has classes {other.get(diff)}, MAIN's validation "
                            f"predictions have {classes.get(diff)}; both runs must predict the same tasks and classes")
    tasks = list(classes)

    seed = int(main_info.get("seed") or 0) if seed is None else int(seed)
    estimator = build_classifier(spec, seed)

    out = Path(out_dir) if out_dir is not None else main_dir.parent / "stage2"
    for role, d in (("MAIN", main_dir), ("SUB", sub_dir)):
        if out.resolve() == d.resolve():
            raise ConfigError(f"output directory {out} is the {role} run; choose another (--out)")
    if (out / "run.json").is_file():
        prev = _read_json(out / "run.json")
        if prev.get("model") != "fusionm4net":
            raise ConfigError(f"{out}: holds a different run (model {prev.get('model')!r}); choose another output "
                              f"directory (--out)")

    root = _data_root(main_dir, data_root)
    table = derm7pt.read(root)
    part = derm7pt.partition(table, root)
    _, holdout_rows = sub_model_rows(root)
    n_train = int((part == "train").sum())
    _check_cases(frames, paths, table, part, holdout_rows, n_train)

    # m20 of every case; the fixed vocabulary needs no learning, fit only checks the training rows' columns
    vec = build_vectorizer(DATASET, META_VARIANT, source=str(table.source))
    vec.fit(table.frame[part == "train"])
    meta_all = vec.transform(table.frame).astype(np.float64)
    row_of = {c: i for i, c in enumerate(table.case_ids.tolist())}
    ids = {s: df["case_id"].to_numpy(dtype=str) for s, df in frames.items()}
    meta = {s: meta_all[[row_of[c] for c in ids[s]]] for s in frames}
    y = {s: P.targets(df) for s, df in frames.items()}

    # Fusion Scheme 1: weights on MAIN's validation predictions, applied to every split (SUB's held-out cases too)
    names = stage1_branches(P.branches(frames["val"]))
    stage1 = {s: [P.branch_probs(df, b) for b in names] for s, df in frames.items()}
    if len(names) == 1:   # a one-image network: its output is P1
        s1 = None
        p1 = {s: preds[0] for s, preds in stage1.items()}
    else:
        s1 = search_simplex(stage1["val"], y["val"], grid_n)
        p1 = {s: fuse(preds, s1.weights) for s, preds in stage1.items()}

    # Fusion Scheme 2: fitted on the held-out cases only, applied to validation and test
    x = {s: scheme2_features(p1[s], meta[s], tasks) for s in frames}
    x_eval = {s: x[s] for s in ("val", "test")}
    p2: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    per_task = {}
    for t in tasks:
        probs, per_task[t] = _fit_predict(estimator, x[HOLDOUT], y[HOLDOUT][t], len(classes[t]), x_eval)
        for s in p2:
            p2[s][t] = probs[s]
    s2 = search_line(p1["val"], p2["val"], y["val"], W_STEPS)
    w = float(s2.weights[0])
    p3 = {s: fuse([p1[s], p2[s]], [w, 1.0 - w]) for s in ("val", "test")}
    p3_avg = {s: fuse([p1[s], p2[s]], [0.5, 0.5]) for s in ("val", "test")}

    out_frames = {s: P.to_frame(ids[s], y[s], {"p1": p1[s], "p2": p2[s], "p3": p3[s], "p3_avg": p3_avg[s]}, classes)
                  for s in ("val", "test")}
    metrics: dict = {"main_metric": "avg_acc", "reported": "p3", "branches": list(OUTPUT_BRANCHES), "tasks": classes,
                     "params": main_info.get("params")}
    for s, df in out_frames.items():
        metrics[s] = {b: evaluate_predictions(df, b, DATASET) for b in OUTPUT_BRANCHES}
    held = P.to_frame(ids[HOLDOUT], y[HOLDOUT], {"p1": p1[HOLDOUT]}, classes)
    metrics[HOLDOUT] = {"p1": evaluate_predictions(held, "p1", DATASET)}
    weights = dict(zip(names, s1.weights)) if s1 is not None else {names[0]: 1.0}
    metrics["fusion_scheme1"] = {"branches": list(names), "weights": weights, "grid_n": grid_n if s1 else None,
                                 "score": s1.score if s1 else None, "index": s1.index if s1 else None,
                                 "n_candidates": s1.n_candidates if s1 else 1}
    metrics["fusion_scheme2"] = {"classifier": name, "estimator": repr(estimator), "w": w, "n_steps": W_STEPS,
                                 "score": s2.score, "index": s2.index, "tasks": per_task}

    feature_names = [f"p1/{t}/{c}" for t in tasks for c in classes[t]] + [f"m20/{c}" for c in vec.columns]
    fit_frame = pd.DataFrame(x[HOLDOUT], columns=feature_names)
    fit_frame.insert(0, "case_id", ids[HOLDOUT])
    for i, t in enumerate(tasks):
        fit_frame.insert(1 + i, P.TARGET_PREFIX + t, y[HOLDOUT][t])
    settings = {
        "main_run": str(main_dir.resolve()), "sub_run": str(sub_dir.resolve()), "data_root": str(root.resolve()),
        "seed": seed, "stage1_seeds": {"main": main_info.get("seed"), "sub": sub_info.get("seed")},
        "metadata": META_VARIANT,
        "sub_model_split": {"file": TRAIN_INDEX_FILE, "order": "file order",
                            "sub_train_rows": n_train - len(holdout_rows), "holdout_rows": len(holdout_rows)},
        "fusion_scheme1": {"branches": list(names), "grid": {"low": 0.05, "high": 1.0, "n": grid_n}},
        "fusion_scheme2": {"classifier": {"name": name, "spec": spec, "estimator": repr(estimator)},
                           "features": feature_names, "w_grid": {"low": 0.0, "high": 1.0, "n": W_STEPS}},
    }
    record = {"status": "running", "error": None, "dataset": DATASET, "model": "fusionm4net", "method": method,
              "backbone": main_info.get("backbone"), "fold": None, "seed": seed,
              "experiment": main_info.get("experiment"), "reported": "p3", "main_metric": "avg_acc",
              "branches": list(OUTPUT_BRANCHES), "tasks": classes, "params": main_info.get("params"),
              "classifier": name, "overrides": list(main_info.get("overrides") or []),
              "stage1": {"main": str(main_dir.resolve()), "sub": str(sub_dir.resolve())}}
    _write(out, record, out_frames, fit_frame, metrics, settings)
    return {"out_dir": str(out), "weights": weights, "w": w, "classifier": name, "estimator": repr(estimator),
            "seed": seed,
            "avg_acc": {s: {b: _avg_acc(metrics[s][b]) for b in OUTPUT_BRANCHES} for s in ("val", "test")},
            "metrics": metrics}


def _write(out: Path, record: dict, frames: Mapping[str, pd.DataFrame], fit_frame: pd.DataFrame, metrics: dict,
           settings: dict) -> None:
    """Everything is computed before the first write; run.json says ``running`` until the last file is in place,
    so an interrupted write is never mistaken for a finished run."""
    from skinlesion.provenance import environment, write_json, write_parquet

    write_json(out / "run.json", record)
    try:
        for s, df in frames.items():
            write_parquet(out / "predictions" / f"{s}.parquet", df)
        write_parquet(out / "classifier" / "train_features.parquet", fit_frame)
        write_json(out / "metrics.json", metrics)
        write_json(out / "stage2.json", settings)
        write_json(out / "environment.json", environment(Path(__file__).resolve().parents[2]))
    except BaseException as e:
        write_json(out / "run.json", {**record, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    write_json(out / "run.json", {**record, "status": "completed"})


# ----------------------------------------------------------------------------------------------- CLI

def summary(res: Mapping) -> str:
    """The weights, w and the P1/P2/P3 AVG ACC table of a stage-2 result, as printed by the CLIs."""
    s2 = res["metrics"]["fusion_scheme2"]
    lines = ["Fusion Scheme 1 weights: " + ", ".join(f"{b}={v:.4f}" for b, v in res["weights"].items())]
    lines.append(f"Fusion Scheme 2: {res['estimator']} per task, w = {res['w']:.4f} (P3 = w*P1 + (1-w)*P2)")
    unconverged = [t for t, i in s2["tasks"].items() if i.get("converged") is False]
    if unconverged:
        lines.append(f"note: the classifier did not converge for task(s) {unconverged}")
    lines.append(f"{'AVG ACC (%)':<12}{'val':>8}{'test':>8}")
    for b in OUTPUT_BRANCHES:
        lines.append(f"{b.upper():<12}{100 * res['avg_acc']['val'][b]:>8.2f}{100 * res['avg_acc']['test'][b]:>8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinlesion.fusionm4net.stage2",
                                 description="FusionM4Net stage 2 (Fusion Schemes 1 and 2) on two finished stage-1 "
                                             "runs: MAIN (all training cases; validation and test predictions) and "
                                             "SUB (first half of train_indexes.csv; predictions/holdout.parquet).")
    ap.add_argument("main_run")
    ap.add_argument("sub_run")
    ap.add_argument("--out", default=None, help="output run directory (default: MAIN_RUN/../stage2)")
    ap.add_argument("--classifier", default="svm", choices=list(CLASSIFIERS), help="Fusion Scheme 2 classifier")
    ap.add_argument("--seed", type=int, default=None, help="classifier seed and recorded seed (default: MAIN's)")
    ap.add_argument("--grid-n", type=int, default=50,
                    help="points per axis of the Scheme-1 grid: g = linspace(0.05, 1, N)")
    ap.add_argument("--data-root", default=None, help="derm7pt root (default: data.root of MAIN's config.yaml)")
    args = ap.parse_args(argv)
    try:
        res = run_stage2(args.main_run, args.sub_run, args.out, args.classifier, args.seed, args.grid_n,
                         args.data_root)
    except (SkinLesionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(res))
    print(f"wrote {res['out_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
