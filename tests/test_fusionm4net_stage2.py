"""FusionM4Net stage 2 on two simulated stage-1 runs over the real derm7pt CSVs (no images, no training)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from skinlesion.data import derm7pt
from skinlesion.data.metadata import build_vectorizer
from skinlesion.errors import ConfigError, DataError
from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.simulated_runs import dataset_classes, make_predictions, run_info, write_run
from skinlesion.fusionm4net import stage2
from skinlesion.fusionm4net.stage2 import main, run_stage2, sub_model_rows
from skinlesion.testing import shared

BRANCHES = ["derm", "clinic", "fusion"]
SIGNAL = {"derm": 1.0, "clinic": 0.6, "fusion": 1.2}


@pytest.fixture(scope="module")
def d7():
    root = shared("derm7pt")
    table = derm7pt.read(root)
    part = derm7pt.partition(table, root)
    # independent of the code under test: the index file read directly, first 206 rows vs the rest
    rows = pd.read_csv(root / "meta" / "train_indexes.csv")["indexes"].to_numpy()
    return {"root": root, "table": table, "part": part, "train_rows": rows,
            "ids": {"val": table.case_ids[part == "val"], "test": table.case_ids[part == "test"],
                    "holdout": table.case_ids[rows[206:]]}}


def _frame(d7, ids, rng, signal=SIGNAL):
    table = d7["table"]
    pos = {c: i for i, c in enumerate(table.case_ids)}
    idx = np.array([pos[c] for c in ids])
    y = {t.name: table.targets[idx, i] for i, t in enumerate(table.tasks)}
    df = make_predictions(dataset_classes("derm7pt"), len(idx), BRANCHES, rng, signal, y=y)
    df["case_id"] = np.asarray(ids).astype(str)
    return df


def make_runs(tmp: Path, d7, seed: int = 0, holdout_ids=None, edit=None) -> tuple[Path, Path]:
    """MAIN (val + test predictions, config.yaml) and SUB (holdout predictions) run directories."""
    rng = np.random.default_rng(seed)
    frames = {s: _frame(d7, d7["ids"][s] if s != "holdout" or holdout_ids is None else holdout_ids, rng)
              for s in ("val", "test", "holdout")}
    if edit:
        edit(frames)
    main_dir, sub_dir = tmp / "main", tmp / "sub"
    info = run_info("derm7pt", "two_image", "FusionNet", "resnet50", None, 7, BRANCHES, experiment="table6_4")
    write_run(main_dir, info, frames["val"], frames["test"])
    (main_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "derm7pt", "root": str(d7["root"]),
                                                                   "meta": "m20"}}))
    write_run(sub_dir, info, None)
    frames["holdout"].to_parquet(sub_dir / "predictions" / "holdout.parquet", index=False)
    return main_dir, sub_dir


def _accuracy(probs: dict, y: dict) -> float:
    """Mean task accuracy, as an exact fraction: every task has the same cases, so it is the number of correct
    (case, task) pairs over their count (a mean of float means could break exact ties by rounding)."""
    correct = sum(int((probs[t].argmax(1) == y[t]).sum()) for t in probs)
    return correct / (len(probs) * len(next(iter(y.values()))))


@pytest.fixture(scope="module")
def svm_run(tmp_path_factory, d7):
    tmp = tmp_path_factory.mktemp("stage2")
    main_dir, sub_dir = make_runs(tmp, d7)
    calls = []
    from sklearn.svm import SVC
    original = SVC.fit

    def spy(self, X, y, *a, **k):
        calls.append((np.array(X, copy=True), np.array(y, copy=True)))
        return original(self, X, y, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SVC, "fit", spy)
        res = run_stage2(main_dir, sub_dir, grid_n=5)
    return {"main": main_dir, "sub": sub_dir, "out": Path(res["out_dir"]), "res": res, "fit_calls": calls}


# ------------------------------------------------------------------------------------------- data protocol

def test_sub_model_split_follows_file_order(d7):
    sub_train, holdout = sub_model_rows(d7["root"])
    assert len(sub_train) == 206 and len(holdout) == 207
    assert sub_train.tolist() == d7["train_rows"][:206].tolist()
    assert holdout.tolist() == d7["train_rows"][206:].tolist()


def test_holdout_must_be_the_second_half_of_the_index_file(tmp_path, d7):
    # the first 207 rows instead of rows 206.. (e.g. a shuffled or stratified sub split) is refused
    wrong = d7["table"].case_ids[d7["train_rows"][:207]]
    main_dir, sub_dir = make_runs(tmp_path, d7, holdout_ids=wrong)
    with pytest.raises(DataError, match=r"rows 206\.\.412 of meta/train_indexes.csv"):
        run_stage2(main_dir, sub_dir, grid_n=3)
    assert not (tmp_path / "stage2").exists()


def test_holdout_with_validation_cases_is_refused(tmp_path, d7):
    leaky = np.concatenate([d7["ids"]["holdout"][:-1], d7["ids"]["val"][:1]])
    main_dir, sub_dir = make_runs(tmp_path, d7, holdout_ids=leaky)
    with pytest.raises(DataError, match="validation/test partitions"):
        run_stage2(main_dir, sub_dir, grid_n=3)


def test_classifier_sees_only_the_holdout_cases(svm_run, d7):
    calls = svm_run["fit_calls"]
    assert len(calls) == 8                      # one SVC per task
    hold = P.read_predictions(svm_run["sub"] / "predictions" / "holdout.parquet")
    w = json.loads((svm_run["out"] / "metrics.json").read_text())["fusion_scheme1"]["weights"]
    # expected features rebuilt here: weighted SUB probabilities of every task, then the case's m20 row
    p1 = np.concatenate([sum(w[b] * P.branch_probs(hold, b)[t] for b in BRANCHES) for t in P.task_classes(hold)],
                        axis=1)
    table = d7["table"]
    pos = {c: i for i, c in enumerate(table.case_ids)}
    m20 = build_vectorizer("derm7pt", "m20").transform(table.frame.iloc[[pos[c] for c in hold["case_id"]]])
    expected = np.concatenate([p1, m20], axis=1)
    for (X, yfit), t in zip(calls, P.task_classes(hold)):
        assert X.shape == (207, 44)
        np.testing.assert_allclose(X, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(yfit, hold[f"target/{t}"].to_numpy())
    saved = pd.read_parquet(svm_run["out"] / "classifier" / "train_features.parquet")
    assert set(saved["case_id"]) == set(d7["ids"]["holdout"])
    assert not set(saved["case_id"]) & (set(d7["ids"]["val"]) | set(d7["ids"]["test"]))
    # no fitted row is a validation or test feature row
    val = pd.read_parquet(svm_run["out"] / "predictions" / "val.parquet")
    val_p1 = np.concatenate([val[[c for c in val.columns if c.startswith(f"prob/p1/{t}/")]].to_numpy()
                             for t in P.task_classes(val)], axis=1)
    dist = np.abs(calls[0][0][:, None, :24] - val_p1[None]).max(axis=2)
    assert dist.min() > 1e-9


# -------------------------------------------------------------------------------------------- Scheme 1

def test_scheme1_weights_match_brute_force(svm_run):
    val = P.read_predictions(svm_run["main"] / "predictions" / "val.parquet")
    y = P.targets(val)
    probs = {b: P.branch_probs(val, b) for b in BRANCHES}
    g = np.linspace(0.05, 1.0, 5)
    best, best_w, seen = -1.0, None, set()
    for a in g:                       # derm, clinic, fusion in lexicographic order; first strict maximum
        for b in g:
            for c in g:
                w = np.array([a, b, c]) / (a + b + c)
                key = tuple(np.round(w, 9))
                if key in seen:
                    continue
                seen.add(key)
                fused = {t: w[0] * probs["derm"][t] + w[1] * probs["clinic"][t] + w[2] * probs["fusion"][t]
                         for t in y}
                acc = _accuracy(fused, y)
                if acc > best:
                    best, best_w = acc, w
    found = json.loads((svm_run["out"] / "metrics.json").read_text())["fusion_scheme1"]
    np.testing.assert_allclose([found["weights"][b] for b in BRANCHES], best_w, atol=1e-12)
    assert found["score"] == pytest.approx(best)
    # P1 on test = the same weights applied to MAIN's test predictions
    test = P.read_predictions(svm_run["main"] / "predictions" / "test.parquet")
    out = P.read_predictions(svm_run["out"] / "predictions" / "test.parquet")
    for t in y:
        ref = sum(best_w[i] * P.branch_probs(test, b)[t] for i, b in enumerate(BRANCHES))
        np.testing.assert_allclose(P.branch_probs(out, "p1")[t], ref, atol=1e-12)


# -------------------------------------------------------------------------------------------- Scheme 2

def test_w_is_the_first_maximum(tmp_path, d7):
    # a uniform P2 shifts every class by the same amount: every w > 0 keeps P1's argmax and scores the same, so
    # the search must return the smallest of the tied values
    main_dir, sub_dir = make_runs(tmp_path, d7, seed=1)
    res = run_stage2(main_dir, sub_dir, classifier={"_target_": "sklearn.dummy.DummyClassifier",
                                                    "strategy": "uniform"}, grid_n=3)
    val = P.read_predictions(Path(res["out_dir"]) / "predictions" / "val.parquet")
    y, p1, p2 = P.targets(val), P.branch_probs(val, "p1"), P.branch_probs(val, "p2")
    for t in y:
        assert np.ptp(p2[t], axis=0).max() == 0          # constant P2
    scores = [_accuracy({t: w * p1[t] + (1 - w) * p2[t] for t in y}, y) for w in np.linspace(0, 1, 100)]
    assert sum(s == max(scores) for s in scores) > 1     # a real tie
    first = next(i for i, s in enumerate(scores) if s == max(scores))
    assert res["w"] == pytest.approx(np.linspace(0, 1, 100)[first], abs=1e-15)
    p3, p3_avg = P.branch_probs(val, "p3"), P.branch_probs(val, "p3_avg")
    for t in y:
        np.testing.assert_allclose(p3[t], res["w"] * p1[t] + (1 - res["w"]) * p2[t], atol=1e-12)
        np.testing.assert_allclose(p3_avg[t], (p1[t] + p2[t]) / 2, atol=1e-12)   # "P3 (averaged)"


def test_absent_class_keeps_columns_aligned(tmp_path, d7):
    def edit(frames):
        h = frames["holdout"]
        h.loc[h["target/DIAG"] == 1, "target/DIAG"] = 0    # no NEV (class 1 of 5) among the held-out cases
        h["target/BWV"] = 0                                 # a single class: constant prediction
    main_dir, sub_dir = make_runs(tmp_path, d7, seed=2, edit=edit)
    res = run_stage2(main_dir, sub_dir, classifier="logreg", grid_n=3)
    out = Path(res["out_dir"])
    fit = pd.read_parquet(out / "classifier" / "train_features.parquet")
    features = [c for c in fit.columns if c.startswith(("p1/", "m20/"))]
    ref = LogisticRegression(C=0.01, class_weight="balanced", random_state=7).fit(
        fit[features].to_numpy(), fit["target/DIAG"].to_numpy())
    assert ref.classes_.tolist() == [0, 2, 3, 4]
    for split in ("val", "test"):
        df = P.read_predictions(out / "predictions" / f"{split}.parquet")
        saved = json.loads((out / "stage2.json").read_text())["fusion_scheme2"]["features"]
        assert saved == features
        pred_main = P.read_predictions(main_dir / "predictions" / f"{split}.parquet")
        assert (df["case_id"].to_numpy() == pred_main["case_id"].to_numpy()).all()
        p2 = P.branch_probs(df, "p2")
        assert p2["DIAG"].shape[1] == 5
        assert (p2["DIAG"][:, 1] == 0).all()
        x = np.concatenate([P.branch_probs(df, "p1")[t] for t in P.task_classes(df)] +
                           [build_vectorizer("derm7pt", "m20").transform(
                               d7["table"].frame.set_index(d7["table"].case_ids).loc[df["case_id"]])], axis=1)
        np.testing.assert_allclose(p2["DIAG"][:, [0, 2, 3, 4]], ref.predict_proba(x), atol=1e-10)
        np.testing.assert_array_equal(p2["BWV"], np.tile([1.0, 0.0], (len(df), 1)))
    per_task = json.loads((out / "metrics.json").read_text())["fusion_scheme2"]["tasks"]
    assert per_task["DIAG"]["classes_present"] == [0, 2, 3, 4] and per_task["BWV"]["fitted"] is False


# ------------------------------------------------------------------------------------------------ outputs

def test_outputs_are_saved_and_scored(svm_run):
    out = svm_run["out"]
    assert out == svm_run["main"].parent / "stage2"
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        df = P.read_predictions(out / "predictions" / f"{split}.parquet")
        assert P.branches(df) == ["p1", "p2", "p3", "p3_avg"]
        y = P.targets(df)
        for b in ("p1", "p2", "p3", "p3_avg"):
            probs = P.branch_probs(df, b)
            for p in probs.values():
                np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
            accs = [accuracy_score(y[t], probs[t].argmax(1)) for t in y]
            assert metrics[split][b]["avg_acc"] == pytest.approx(np.mean(accs), abs=1e-12)
            assert metrics[split][b]["tasks"]["DIAG"]["bac"] == pytest.approx(
                balanced_accuracy_score(y["DIAG"], probs["DIAG"].argmax(1)), abs=1e-12)
            assert svm_run["res"]["avg_acc"][split][b] == pytest.approx(np.mean(accs), abs=1e-12)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["reported"] == "p3" and run["main_metric"] == "avg_acc"
    assert run["branches"] == ["p1", "p2", "p3", "p3_avg"] and run["seed"] == 7 and run["experiment"] == "table6_4"
    assert run["tasks"] == dataset_classes("derm7pt")
    settings = json.loads((out / "stage2.json").read_text())
    assert settings["fusion_scheme1"]["grid"]["n"] == 5
    assert "SVC" in settings["fusion_scheme2"]["classifier"]["estimator"]
    assert metrics["fusion_scheme2"]["w"] == svm_run["res"]["w"]


def test_report_collects_the_stage2_run(svm_run):
    from skinlesion.evaluation.aggregate import collect_jobs, evaluate_jobs

    jobs, _ = collect_jobs([svm_run["out"]])
    records, _ = evaluate_jobs(jobs)
    assert [j.status for j in jobs] == ["ok"]
    test = records[records["split"] == "test"].set_index("combination")
    metrics = json.loads((svm_run["out"] / "metrics.json").read_text())
    assert list(test["method"]) == ["FusionM4Net(P1)", "FusionM4Net(P2)", "FusionM4Net(P3)", "FusionM4Net(P3 averaged)"]
    for b in ("p1", "p2", "p3", "p3_avg"):   # both fusion schemes and their mixes reach the report
        assert test.loc[b, "score"] == pytest.approx(metrics["test"][b]["avg_acc"])


# ------------------------------------------------------------------------------------------------ errors

def test_cli_missing_holdout_is_one_line(tmp_path, d7, capsys):
    main_dir, sub_dir = make_runs(tmp_path, d7)
    (sub_dir / "predictions" / "holdout.parquet").unlink()
    assert main([str(main_dir), str(sub_dir), "--grid-n", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "holdout.parquet" in err


def test_cli_prints_the_three_outputs(tmp_path, d7, capsys):
    main_dir, sub_dir = make_runs(tmp_path, d7)
    assert main([str(main_dir), str(sub_dir), "--grid-n", "3", "--classifier", "logreg", "--seed", "4",
                 "--out", str(tmp_path / "s2")]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((tmp_path / "s2" / "metrics.json").read_text())
    for b in ("p1", "p2", "p3"):
        line = next(ln for ln in text.splitlines() if ln.startswith(b.upper() + " "))
        assert line.split()[1:] == [f"{100 * metrics[s][b]['avg_acc']:.2f}" for s in ("val", "test")]
    assert f"w = {metrics['fusion_scheme2']['w']:.4f}" in text
    assert json.loads((tmp_path / "s2" / "run.json").read_text())["seed"] == 4


@pytest.mark.parametrize("case, error, match", [
    ("no_branch", DataError, r"branches \['derm', 'fusion'\]: stage 2 reads the derm, clinic and fusion"),
    ("classes", DataError, "same tasks and classes"),
    ("status", DataError, "status 'running'"),
    ("no_config", DataError, "config.yaml: not found"),
    ("classifier", ConfigError, "unknown classifier"),
    ("out_is_main", ConfigError, "is the MAIN run"),
])
def test_bad_inputs(tmp_path, d7, case, error, match):
    def edit(frames):
        if case == "no_branch":
            frames["val"].drop(columns=[c for c in frames["val"].columns if c.startswith("prob/clinic/")],
                               inplace=True)
        if case == "classes":
            frames["holdout"].rename(columns={c: c.replace("/DIAG/SK", "/DIAG/SEK")
                                              for c in frames["holdout"].columns}, inplace=True)
    main_dir, sub_dir = make_runs(tmp_path, d7, edit=edit)
    kwargs = {"grid_n": 3}
    if case == "status":
        info = json.loads((sub_dir / "run.json").read_text())
        (sub_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    if case == "no_config":
        (main_dir / "config.yaml").unlink()
    if case == "classifier":
        kwargs["classifier"] = "rf"
    if case == "out_is_main":
        kwargs["out_dir"] = main_dir
    with pytest.raises(error, match=match) as exc:
        run_stage2(main_dir, sub_dir, **kwargs)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "stage2").exists()


def test_classifier_spec_accepts_target_mappings():
    from omegaconf import OmegaConf

    name, spec = stage2.classifier_spec(OmegaConf.create({"_target_": "sklearn.svm.SVC", "C": 1.0, "kernel": "rbf",
                                                          "gamma": "scale", "probability": True}))
    assert name == "svm" and spec == stage2.CLASSIFIERS["svm"]
    est = stage2.build_classifier(spec, seed=11)
    assert est.get_params()["random_state"] == 11 and est.get_params()["probability"] is True
    with pytest.raises(ConfigError, match="predict_proba"):
        stage2.build_classifier({"_target_": "sklearn.svm.SVC"}, seed=0)
    with pytest.raises(ConfigError, match="cannot be built"):
        stage2.build_classifier({"_target_": "sklearn.nope.Missing"}, seed=0)


def test_p3_weight_is_chosen_on_validation_never_on_test(tmp_path, d7):
    """w is the first maximum of validation AVG ACC over linspace(0, 1, 100). Here the stage-1 test predictions are
    shuffled between cases, so test would pick another w: choosing w on test fails this test."""
    def shuffle_test(frames):
        test = frames["test"]
        cols = [c for c in test.columns if c.startswith("prob/")]
        test[cols] = test[cols].to_numpy()[np.random.default_rng(5).permutation(len(test))]

    main_dir, sub_dir = make_runs(tmp_path, d7, edit=shuffle_test)
    res = run_stage2(main_dir, sub_dir, grid_n=3)
    grid = np.linspace(0, 1, 100)
    chosen = {}
    for split in ("val", "test"):
        df = P.read_predictions(Path(res["out_dir"]) / "predictions" / f"{split}.parquet")
        p1, p2, y = P.branch_probs(df, "p1"), P.branch_probs(df, "p2"), P.targets(df)
        scores = [_accuracy({t: w * p1[t] + (1 - w) * p2[t] for t in y}, y) for w in grid]
        chosen[split] = grid[int(np.argmax(scores))]
    assert chosen["val"] != chosen["test"]
    assert res["w"] == pytest.approx(chosen["val"], abs=1e-15)
