import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, precision_score,
                             recall_score, roc_auc_score)

from skinlesion.data.tasks import DERM7PT_AUC_CATEGORIES, DERM7PT_MELANOMA_CATEGORIES
from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.metrics import evaluate_predictions, main_score, task_metrics
from skinlesion.evaluation.simulated_runs import dataset_classes, make_predictions, random_probs


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (6, 2), (8, 3)])
def test_task_metrics_match_sklearn(k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 300)
    y[:k] = np.arange(k)  # every class present
    prob = random_probs(rng, y, k, 1.0)
    pred = prob.argmax(1)
    classes = [f"c{i}" for i in range(k)]
    m = task_metrics(y, prob, classes)
    assert m["acc"] == pytest.approx(accuracy_score(y, pred))
    assert m["bac"] == pytest.approx(balanced_accuracy_score(y, pred))
    if k == 2:
        ref_auc = roc_auc_score(y, prob[:, 1])
    else:
        ref_auc = roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(k)))
    assert m["auc"] == pytest.approx(ref_auc)
    assert m["n_classes_present"] == k and m["n_classes_auc"] == k
    rec = recall_score(y, pred, average=None, labels=list(range(k)), zero_division=np.nan)
    pre = precision_score(y, pred, average=None, labels=list(range(k)), zero_division=np.nan)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    assert m["confusion_matrix"] == cm.tolist()
    for i, c in enumerate(classes):
        pc = m["per_class"][c]
        assert pc["sensitivity"] == pytest.approx(rec[i])
        if np.isnan(pre[i]):
            assert pc["precision"] is None
        else:
            assert pc["precision"] == pytest.approx(pre[i])
        tn = cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]
        assert pc["specificity"] == pytest.approx(tn / (cm.sum() - cm[i].sum()))
        assert pc["auc"] == pytest.approx(roc_auc_score(y == i, prob[:, i]))
        assert pc["support"] == int((y == i).sum())
    json.dumps(m, allow_nan=False)
    assert all(type(v) in (int, float) for v in (m["acc"], m["bac"], m["auc"]))


def test_absent_class_is_undefined_not_zero():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 200)  # class 3 ("d") never occurs
    prob = random_probs(rng, np.where(y == 0, 3, y), 4, 2.0)  # and is often predicted
    m = task_metrics(y, prob, ["a", "b", "c", "d"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_bac = balanced_accuracy_score(y, prob.argmax(1))
    assert m["bac"] == pytest.approx(ref_bac)
    assert m["n_classes_present"] == 3 and m["n_classes_auc"] == 3
    assert m["per_class"]["d"]["sensitivity"] is None and m["per_class"]["d"]["auc"] is None
    assert m["per_class"]["d"]["support"] == 0
    assert m["per_class"]["d"]["precision"] == 0.0  # predicted but never right
    ref_auc = np.mean([roc_auc_score(y == i, prob[:, i]) for i in range(3)])
    assert m["auc"] == pytest.approx(ref_auc)
    s = json.dumps(m, allow_nan=False)
    assert '"sensitivity": null' in s


def test_never_predicted_class_has_undefined_precision():
    y = np.array([0, 0, 1, 1, 2])
    prob = np.array([[.9, .1, 0], [.8, .2, 0], [.1, .9, 0], [.6, .4, 0], [.5, .3, .2]])
    m = task_metrics(y, prob, ["a", "b", "c"])
    assert m["per_class"]["c"]["precision"] is None
    assert m["per_class"]["c"]["sensitivity"] == 0.0
    assert m["bac"] == pytest.approx((1 + .5 + 0) / 3)
    assert m["acc"] == pytest.approx(3 / 5)


def test_single_class_split_has_no_auc():
    m = task_metrics(np.zeros(4, int), np.tile([.7, .3], (4, 1)), ["a", "b"])
    assert m["auc"] is None and m["n_classes_auc"] == 0 and m["bac"] == 1.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        task_metrics(np.zeros(3, int), np.zeros((3, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        task_metrics(np.array([0, 5]), np.zeros((2, 2)), ["a", "b"])


def test_combine_branch_all_and_weights():
    rng = np.random.default_rng(0)
    cls = dataset_classes("pad_ufes")
    df = make_predictions(cls, 50, ["image", "meta", "fusion"], rng)
    assert P.branches(df) == ["image", "meta", "fusion"]
    assert P.task_classes(df) == cls
    pi, pm, pf = (P.branch_probs(df, b)["diagnostic"] for b in ("image", "meta", "fusion"))
    np.testing.assert_allclose(P.combine(df, "fusion")["diagnostic"], pf)
    np.testing.assert_allclose(P.combine(df, "all")["diagnostic"], (pi + pm + pf) / 3)
    np.testing.assert_allclose(P.combine(df, {"image": 0.2, "fusion": 0.6})["diagnostic"], 0.25 * pi + 0.75 * pf)
    with pytest.raises(KeyError):
        P.combine(df, "derm")


def test_derm7pt_averages_by_hand():
    rng = np.random.default_rng(7)
    cls = dataset_classes("derm7pt")
    df = make_predictions(cls, 400, ["derm", "clinic", "fusion"], rng, signal={"derm": 1.5, "clinic": .5, "fusion": 1.})
    m = evaluate_predictions(df, "all")
    assert m["dataset"] == "derm7pt"
    probs = {t: sum(df[[f"prob/{b}/{t}/{c}" for c in cs]].to_numpy() for b in ("derm", "clinic", "fusion")) / 3
             for t, cs in cls.items()}
    ys = {t: df[f"target/{t}"].to_numpy() for t in cls}
    accs = [np.mean(probs[t].argmax(1) == ys[t]) for t in cls]
    assert m["avg_acc"] == pytest.approx(np.mean(accs))
    aucs = [roc_auc_score(ys[t] == cls[t].index(c), probs[t][:, cls[t].index(c)]) for t, c in DERM7PT_AUC_CATEGORIES]
    assert len(aucs) == 17 and m["avg_auc_n"] == 17
    assert m["avg_auc"] == pytest.approx(np.mean(aucs))
    sens = []
    for t, c in DERM7PT_MELANOMA_CATEGORIES:
        i = cls[t].index(c)
        pred = probs[t].argmax(1)
        sens.append(np.sum((pred == i) & (ys[t] == i)) / np.sum(ys[t] == i))
    assert m["melanoma"]["mean"]["sensitivity"] == pytest.approx(np.mean(sens))
    assert m["melanoma"]["mean_n"]["auc"] == 8
    assert main_score(m, "avg_acc") == pytest.approx(np.mean(accs))
    assert main_score(m, "bac") == pytest.approx(np.mean([m["tasks"][t]["bac"] for t in cls]))
    json.dumps(m, allow_nan=False)


def test_derm7pt_avg_auc_skips_undefined_category():
    rng = np.random.default_rng(3)
    cls = dataset_classes("derm7pt")
    y = {t: rng.integers(0, len(c), 120) for t, c in cls.items()}
    y["VS"] = np.where(y["VS"] == 2, 0, y["VS"])  # VS-IR absent from the split
    df = make_predictions(cls, 120, ["fusion"], rng, y=y)
    m = evaluate_predictions(df, "fusion")
    assert m["avg_auc_n"] == 16 and m["category_auc"]["VS-IR"] is None
    defined = [v for v in m["category_auc"].values() if v is not None]
    assert m["avg_auc"] == pytest.approx(np.mean(defined))
    assert m["melanoma"]["mean_n"]["sensitivity"] == 7


def test_single_task_main_score_is_bac():
    rng = np.random.default_rng(1)
    df = make_predictions(dataset_classes("isic2019"), 200, ["image"], rng)
    m = evaluate_predictions(df, "image")
    assert m["dataset"] == "isic2019" and "avg_auc" not in m
    assert main_score(m, "bac") == m["tasks"]["diagnosis"]["bac"]
    with pytest.raises(ValueError):
        main_score(m, "f1")


# Hand-worked frame: one binary task T (classes a, b), branches x and y, 4 cases, targets 0, 0, 1, 0.
#   x: (.9,.1) (.4,.6) (.3,.7) (.2,.8)      y: (.7,.3) (.6,.4) (.5,.5) (.6,.4)
# {x: 3, y: 1} -> weights .75/.25: P(b) = .15, .55, .65, .70 -> predicted a, b, b, b
#   ACC 2/4; recall a 1/3, b 1/1 -> BAC 2/3; AUC: the positive (.65) beats .15 and .55, not .70 -> 2/3;
#   class b: TP 1, FP 2, TN 1 -> precision 1/3, specificity 1/3; class a: precision 1, sensitivity 1/3.
# y alone: P(b) = .3, .4, .5, .4 -> case 3 is an exact tie, argmax takes a: predicted a, a, a, a
#   ACC 3/4; recall a 3/3, b 0/1 -> BAC 1/2; AUC: .5 beats .3, .4, .4 -> 1; class b never predicted.
HAND = pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "target/T": [0, 0, 1, 0],
                     "prob/x/T/a": [.9, .4, .3, .2], "prob/x/T/b": [.1, .6, .7, .8],
                     "prob/y/T/a": [.7, .6, .5, .6], "prob/y/T/b": [.3, .4, .5, .4]})


def test_hand_worked_four_cases():
    m = evaluate_predictions(HAND, {"x": 3, "y": 1})
    t = m["tasks"]["T"]
    assert m["n"] == 4 and m["combination"] == {"x": 3.0, "y": 1.0}
    assert t["acc"] == pytest.approx(2 / 4) and t["bac"] == pytest.approx(2 / 3) and t["auc"] == pytest.approx(2 / 3)
    assert t["confusion_matrix"] == [[1, 2], [0, 1]]
    assert t["per_class"]["b"]["precision"] == pytest.approx(1 / 3)
    assert t["per_class"]["b"]["specificity"] == pytest.approx(1 / 3)
    assert t["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert t["per_class"]["a"]["sensitivity"] == pytest.approx(1 / 3)
    assert m["avg_acc"] == pytest.approx(0.5) and main_score(m, "bac") == pytest.approx(2 / 3)
    alone = evaluate_predictions(HAND, "y")["tasks"]["T"]
    assert alone["acc"] == pytest.approx(3 / 4) and alone["bac"] == pytest.approx(1 / 2)
    assert alone["auc"] == pytest.approx(1.0) and alone["per_class"]["b"]["precision"] is None
    # the same numbers from scikit-learn on the hand-fused probabilities
    y = np.array([0, 0, 1, 0])
    pb = np.array([.15, .55, .65, .70])
    assert balanced_accuracy_score(y, (pb > .5).astype(int)) == pytest.approx(2 / 3)
    assert roc_auc_score(y, pb) == pytest.approx(2 / 3)
    from skinlesion.evaluation.metrics import evaluate_probs
    arr = evaluate_probs({"T": y}, {"T": np.stack([1 - pb, pb], 1)}, {"T": ["a", "b"]})
    assert arr["tasks"]["T"]["bac"] == pytest.approx(2 / 3) and arr["tasks"]["T"]["auc"] == pytest.approx(2 / 3)


def test_all_logits_combination_equals_softmax_of_mean_logits():
    """The logit reading of JIF(All) is recovered exactly from the saved probabilities."""
    from skinlesion.evaluation.predictions import combine
    rng = np.random.default_rng(0)
    logits = {b: rng.normal(size=(6, 3)) * 3 for b in ("image", "meta", "fusion")}
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    cols = {"case_id": [str(i) for i in range(6)], "target/T": [0, 1, 2, 0, 1, 2]}
    for b, z in logits.items():
        for k in range(3):
            cols[f"prob/{b}/T/c{k}"] = softmax(z)[:, k]
    df = pd.DataFrame(cols)
    assert np.allclose(combine(df, "all_logits")["T"], softmax(sum(logits.values()) / 3))
    assert not np.allclose(combine(df, "all")["T"], combine(df, "all_logits")["T"])
