"""Subgroup attributes, the vectorised case-level bootstrap, subgroup scores with planted errors, the paired
bootstrap and the end-of-training summary."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from skinlesion.evaluation import bootstrap as B
from skinlesion.evaluation import predictions as P
from skinlesion.evaluation import subgroups as S
from skinlesion.evaluation.metrics import task_metrics
from skinlesion.evaluation.simulated_runs import dataset_classes, make_predictions, random_probs, run_info, write_run
from skinlesion.evaluation.stats import NO_BACKBONE, paired_bootstrap


def _table(dataset, **columns):
    frame = pd.DataFrame(columns)
    return SimpleNamespace(dataset=dataset, frame=frame, case_ids=np.array([f"c{i}" for i in range(len(frame))]))


def test_attributes_are_banded_and_normalised():
    pad = S.subgroup_frame(_table("pad_ufes", fitspatrick=[3.0, np.nan, 7.0, 1.0, 6.0, 2.0],
                                  age=[39, 40, 59, 60, 80, np.nan], gender=["FEMALE", "MALE", "", None, "male", "UNK"],
                                  region=["ARM", " face ", "", "NOSE", None, "BACK"]))
    assert list(pad.columns) == ["case_id", "fitzpatrick", "age", "sex", "region"]
    assert pad["fitzpatrick"].tolist() == ["3", "unknown", "unknown", "1", "6", "2"]
    assert pad["age"].tolist() == ["<40", "40-59", "40-59", "60-79", ">=80", "unknown"]
    assert pad["sex"].tolist() == ["female", "male", "unknown", "unknown", "male", "unknown"]
    assert pad["region"].tolist() == ["arm", "face", "unknown", "nose", "unknown", "back"]
    isic = S.subgroup_frame(_table("isic2019", age_approx=[85, 15, np.nan], sex=["male", "female", np.nan],
                                   anatom_site_general=["head/neck", np.nan, "palms/soles"]))
    assert isic[["age", "sex", "site"]].values.tolist() == [[">=80", "male", "head/neck"], ["<40", "female", "unknown"],
                                                            ["unknown", "unknown", "palms/soles"]]
    derm = S.subgroup_frame(_table("derm7pt", sex=["female", "male"], location=["head neck", "acral"]))
    assert derm["location"].tolist() == ["head neck", "acral"] and derm["case_id"].tolist() == ["c0", "c1"]
    assert S.group_order(["unknown", ">=80", "<40", "60-79", "40-59"]) == ["<40", "40-59", "60-79", ">=80", "unknown"]
    with pytest.raises(ValueError, match="no subgroup attributes defined for dataset 'other'"):
        S.subgroup_frame(_table("other", x=[1]))


def test_a_generated_dataset_gets_every_case_and_attribute(pad_root):
    from skinlesion.data import pad_ufes

    table = pad_ufes.read(pad_root)
    frame = S.subgroup_frame(table)
    assert frame["case_id"].tolist() == list(table.case_ids)
    assert set(frame["fitzpatrick"]) <= {"1", "2", "3", "4", "5", "6", "unknown"} and frame["fitzpatrick"].nunique() > 2
    assert set(frame["sex"]) <= {"female", "male", "unknown"} and set(frame["age"]) - {"unknown"}
    assert frame["region"].str.islower().all()


def test_weighted_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    prob = random_probs(rng, y, k, 1.0)
    prob[:40, 0] = 0.25   # ties in one class's score
    w = B.resample_counts(n, 50, seed=1)
    bac, acc = B.grouped_bac_acc(w, y, prob.argmax(1), k)
    auc = B.nanmean(B.class_aucs(w, y, prob)[:, 0], axis=0)
    ref = task_metrics(y, prob, list("abcd"))
    assert (bac[0, 0], acc[0, 0], auc[0]) == pytest.approx((ref["bac"], ref["acc"], ref["auc"]))
    for r in (1, 17, 50):
        weights = w[:, r]
        assert bac[0, r] == pytest.approx(balanced_accuracy_score(y, prob.argmax(1), sample_weight=weights))
        assert acc[0, r] == pytest.approx(accuracy_score(y, prob.argmax(1), sample_weight=weights))
        per_class = [roc_auc_score(y == c, prob[:, c], sample_weight=weights) for c in range(k)]
        assert auc[r] == pytest.approx(np.mean(per_class))
    # the resamples depend on the seed and the set of cases only
    assert np.array_equal(B.resample_counts(n, 5, 1, key=9), B.resample_counts(n, 5, 1, key=9))
    assert B.case_set_key(["b", "a"]) == B.case_set_key(["a", "b"]) != B.case_set_key(["a", "c"])
    with pytest.raises(ValueError, match="at least one case"):
        B.resample_counts(0)


def test_planted_subgroup_errors_show_in_the_gap_and_intervals():
    rng = np.random.default_rng(1)
    groups = np.array(["good"] * 300 + ["bad"] * 300 + ["tiny"] * 12 + ["unknown"] * 40)
    n, k = len(groups), 3
    y = rng.integers(0, k, n)
    right = np.where(groups == "bad", rng.random(n) < 0.55, rng.random(n) < 0.9)   # planted: 'bad' is mostly wrong
    pred = np.where(right, y, (y + rng.integers(1, k, n)) % k)
    prob = np.full((n, k), 0.1)
    prob[np.arange(n), pred] = 0.8
    w = B.resample_counts(n, 1000, seed=2)
    res = S.group_scores(w, w[:, :201], y, prob, pd.DataFrame({"attr": groups}), min_size=30)["attr"]
    at = {g: i for i, g in enumerate(res["groups"])}
    good, bad, tiny = at["good"], at["bad"], at["tiny"]
    assert not res["scored"][tiny] and np.isnan(res["bac"][tiny]).all() and res["n"][tiny] == 12
    _, bad_hi = B.interval(res["bac"][bad, 1:])
    good_lo, _ = B.interval(res["bac"][good, 1:])
    assert bad_hi < res["bac"][good, 0] and good_lo > res["bac"][bad, 0]   # each interval excludes the other group
    d, best, worst = S.gap(res["bac"], res["groups"], res["scored"])
    assert (best, worst) == ("good", "bad") and d[0] == pytest.approx(res["bac"][good, 0] - res["bac"][bad, 0])
    assert 0.25 < d[0] < 0.45 and B.interval(d[1:])[0] > 0.15
    gaps = S.point_gaps(y, prob, pd.DataFrame({"attr": groups}))
    assert gaps["worst_group_gap"] == pytest.approx(d[0]) and gaps["attributes"]["attr"]["worst"] == "bad"
    assert gaps["attributes"]["attr"]["groups"]["tiny"] == {"n": 12, "bac": None}


def _blocks(signal_a: float, signal_b: float, seed: int, n_blocks: int = 5, n: int = 400):
    """Main-score resamples of two methods on one shared test set (the same resamples for every block)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    w = B.resample_counts(n, 1000, seed=seed)
    out = {"A": {}, "B": {}}
    for b in range(n_blocks):
        for name, sig in (("A", signal_a), ("B", signal_b)):
            bac, _ = B.grouped_bac_acc(w, y, random_probs(rng, y, 4, sig).argmax(1), 4)
            out[name][("densenet", f"fold {b}")] = [bac[0]]
    return out


def test_paired_bootstrap_finds_a_planted_difference_and_not_a_null_one():
    planted = paired_bootstrap(_blocks(1.6, 1.0, seed=3), ["A", "B"])[0]
    assert planted["diff"] > 0.05 and planted["lo"] > 0 and planted["p"] < 0.01 and planted["n_blocks"] == 5
    assert planted["wilcoxon_p"] == pytest.approx(2 / 2 ** 5)   # every block favours A
    null = paired_bootstrap(_blocks(1.2, 1.2, seed=4), ["A", "B"])[0]
    assert null["lo"] < 0 < null["hi"] and null["p"] > 0.05
    # a method without an image backbone is paired fold by fold with every backbone
    blocks = _blocks(1.6, 1.0, seed=3, n_blocks=2)
    blocks["B"] = {(NO_BACKBONE, k[1]): v for k, v in blocks["B"].items()}
    assert paired_bootstrap(blocks, ["A", "B"])[0]["n_blocks"] == 2
    with pytest.raises(ValueError, match="matched blocks"):
        B.paired_difference([np.zeros(3)], [])


def test_end_of_training_summary_and_wandb_keys(tmp_path):
    from skinlesion.final_evaluation import case_summary
    from skinlesion.tracking import wandb_summary

    rng = np.random.default_rng(5)
    classes = dataset_classes("pad_ufes")
    frames = {p: make_predictions(classes, 200, ["image"], rng, 1.5, prefix="c", logits=True) for p in ("val", "test")}
    write_run(tmp_path, run_info("pad_ufes", "image_only", "Image", "densenet121", 0, 0, ["image"]), frames["val"],
              frames["test"])
    sex = np.where(np.arange(200) < 100, "FEMALE", "MALE")
    table = SimpleNamespace(dataset="pad_ufes", case_ids=frames["test"]["case_id"].to_numpy(),
                            frame=pd.DataFrame({"gender": sex, "age": 50, "fitspatrick": np.nan, "region": "ARM"}))
    S.subgroup_frame(table).to_csv(tmp_path / S.FILE, index=False)   # as training writes it
    metrics = {"reported": "image", "main_metric": "bac", "test": {}, "val": {}}
    summary = case_summary(tmp_path, metrics, "pad_ufes")
    cal, sub = summary["calibration"], summary["subgroups"]
    assert cal["split"] == "test" and cal["temperature"] > 0 and cal["ece"] > 0 and cal["ece_ts"] is not None
    assert sub["worst_attribute"] == "sex" and sub["attributes"]["age"]["gap"] is None   # one age band only
    y, prob = P.targets(frames["test"])["diagnostic"], P.branch_probs(frames["test"], "image")["diagnostic"]
    by_sex = [task_metrics(y[sex == s], prob[sex == s], classes["diagnostic"])["bac"] for s in ("FEMALE", "MALE")]
    assert sub["worst_group_gap"] == pytest.approx(abs(by_sex[0] - by_sex[1]))
    json.dumps(summary)   # metrics.json must stay plain JSON
    flat = wandb_summary({"reported": "image", "main_metric": "bac", **summary})
    assert flat["final/test/ece"] == cal["ece"] and flat["final/test/ece_ts"] == cal["ece_ts"]
    assert flat["final/test/worst_group_gap"] == flat["final/test/group_gap/sex"] == sub["worst_group_gap"]
    assert "final/test/group_gap/age" not in flat
    broken = case_summary(tmp_path / "nowhere", metrics, "pad_ufes")   # no predictions: recorded in words, not raised
    assert broken["calibration"]["error"].startswith("FileNotFoundError: no ") and "to score the 'image'" in \
        broken["calibration"]["error"]
