"""Calibration of saved predictions: ECE, Brier, NLL, reliability bins and temperature scaling, on generated
predictions with a planted miscalibration."""
import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from skinlesion.evaluation import calibration as C
from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.simulated_runs import make_predictions


def _calibrated(n: int, k: int, seed: int, scale: float = 1.0):
    """Logits whose softmax is the true class distribution (targets drawn from it), so they are calibrated by
    construction; ``scale`` > 1 makes them over-confident without changing any argmax."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    p = softmax(z, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * z, y


def test_ece_matches_a_hand_computation():
    # 4 cases, 2 bins [0, .5) and [.5, 1]: confidences .9, .8 (bin 2, one correct), .6 (bin 2, correct), .45 (bin 1)
    prob = np.array([[.9, .1, 0], [.1, .8, .1], [.6, .3, .1], [.45, .35, .2]])
    y = np.array([0, 2, 0, 1])
    # bin 2: 3 cases, mean confidence (.9 + .8 + .6) / 3, accuracy 2/3; bin 1: 1 case, confidence .45, accuracy 0
    by_hand = 3 / 4 * abs(2 / 3 - (.9 + .8 + .6) / 3) + 1 / 4 * abs(0 - .45)
    assert C.ece(prob, y, n_bins=2) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.1875)
    bins = C.confidence_bins(prob, y, n_bins=2)
    assert bins["count"].tolist() == [1, 3] and bins["correct"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="expected"):
        C.ece(prob[:, :2].T, y)


def test_scores_agree_with_torchmetrics_and_scikit_learn():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_calibration_error

    z, y = _calibrated(500, 4, seed=1, scale=2.0)
    prob = softmax(z, axis=1)
    ref = multiclass_calibration_error(torch.from_numpy(prob), torch.from_numpy(y), num_classes=4, n_bins=15,
                                       norm="l1")
    assert C.ece(prob, y) == pytest.approx(float(ref), rel=1e-6)   # torchmetrics sums in float32
    assert C.brier(prob, y) == pytest.approx(brier_score_loss(y, prob, labels=[0, 1, 2, 3]))
    assert C.nll(prob, y) == pytest.approx(log_loss(y, prob, labels=[0, 1, 2, 3]))
    # the reliability curve is scikit-learn's calibration curve of correct-or-not against confidence
    rel = C.reliability(prob, y, n_bins=10)
    acc, conf = calibration_curve(prob.argmax(1) == y, prob.max(1), n_bins=10, strategy="uniform")
    assert np.allclose(rel["accuracy"], acc) and np.allclose(rel["confidence"], conf)
    assert rel["counts"].sum() == 500


def test_temperature_scaling_repairs_planted_over_confidence():
    z_val, y_val = _calibrated(2000, 5, seed=2, scale=3.0)      # logits scaled up three times
    z_test, y_test = _calibrated(2000, 5, seed=3, scale=3.0)
    good, _ = _calibrated(2000, 5, seed=3)
    over = C.scores(softmax(z_test, axis=1), y_test)
    calibrated = C.scores(softmax(good, axis=1), y_test)
    assert over["ece"] > calibrated["ece"] + 0.1                  # the planted over-confidence shows in the ECE
    t = C.fit_temperature(z_val, y_val)
    assert 2.5 < t < 3.5                                           # T > 1 undoes the scaling
    after = C.scores(C.apply_temperature(z_test, t), y_test)
    assert after["ece"] < over["ece"] / 3 and after["nll"] < over["nll"]
    # the accuracy is untouched: temperature scaling does not move any argmax
    assert (C.apply_temperature(z_test, t).argmax(1) == z_test.argmax(1)).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        C.fit_temperature(np.full((3, 2), np.nan), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="positive"):
        C.apply_temperature(z_test, 0.0)


def test_outputs_without_logits_are_scaled_on_their_log_probabilities():
    rng = np.random.default_rng(4)
    classes = {"diagnostic": ["A", "B", "C"]}
    val = make_predictions(classes, 300, ["image", "meta", "fusion"], rng, 2.0, prefix="v", logits=True)
    test = make_predictions(classes, 300, ["image", "meta", "fusion"], rng, 2.0, prefix="t", logits=True)
    branch = C.output_calibration(test, "fusion", val)[0]
    assert branch["temperature"] is not None and branch["ece_ts"] is not None and branch["note"] is None
    logit_mean = C.output_calibration(test, "all_logits", val)[0]
    z = sum(P.branch_logits(val, b)["diagnostic"] for b in ("image", "meta", "fusion")) / 3
    assert logit_mean["temperature"] == pytest.approx(C.fit_temperature(z, val["target/diagnostic"]))
    mixture = C.output_calibration(test, "all", val)[0]   # JIF(All): an average of probabilities
    assert "log-probabilities" in mixture["note"]
    log_p = np.log(P.combine(val, "all")["diagnostic"])
    assert mixture["temperature"] == pytest.approx(C.fit_temperature(log_p, val["target/diagnostic"]))
    assert mixture["ece"] == pytest.approx(C.ece(P.combine(test, "all")["diagnostic"], test["target/diagnostic"]))
    # at T = 1 the log-probabilities give back the output itself
    assert np.allclose(C.apply_temperature(np.log(P.combine(test, "all")["diagnostic"]), 1.0),
                       P.combine(test, "all")["diagnostic"])
    old = test[[c for c in test.columns if not c.startswith("logit/")]]   # files from before logits were saved
    rec = C.output_calibration(old, "fusion", val)[0]                     # (and a validation file with them)
    assert "no logit/ columns" in rec["note"] and rec["temperature"] == pytest.approx(
        C.fit_temperature(np.log(P.branch_probs(val, "fusion")["diagnostic"]), val["target/diagnostic"]))
    searched = P.to_frame(test["case_id"], P.targets(test), {"searched": P.combine(test, "all")}, classes)
    searched_val = P.to_frame(val["case_id"], P.targets(val), {"searched": P.combine(val, "all")}, classes)
    rec = C.output_calibration(searched, "searched", searched_val)[0]
    assert rec["temperature"] == pytest.approx(mixture["temperature"]) and "searched" in rec["note"]
    # no test split (ISIC-2019): scored on validation, nothing fitted
    nothing = C.output_calibration(val, "fusion", None, scored_split="val")[0]
    assert "no test split" in nothing["note"] and nothing["temperature"] is None and nothing["brier"] > 0
    assert C.output_calibration(test, "all", None)[0]["temperature"] is None      # no validation to fit on


def test_an_over_confident_probability_average_is_mended_by_scaling_its_log_probabilities():
    """JIF's All output has no logits: two branches that agree, both sharpened (p^4, renormalised), make the
    average over-confident, and the temperature fitted on validation log-probabilities lowers its test ECE."""
    rng = np.random.default_rng(5)
    classes = {"diagnostic": ["A", "B", "C", "D"]}

    def sharpened(prefix):
        df = make_predictions(classes, 1500, ["image", "meta"], rng, 1.0, prefix=prefix)
        p = df[[c for c in df.columns if c.startswith("prob/image/")]].to_numpy() ** 4
        for b in ("image", "meta"):
            df[[c for c in df.columns if c.startswith(f"prob/{b}/")]] = p / p.sum(axis=1, keepdims=True)
        return df

    val, test = sharpened("v"), sharpened("t")
    rec = C.output_calibration(test, "all", val)[0]
    assert 3 < rec["temperature"] < 5                             # the planted power 4, undone
    assert rec["ece_ts"] < rec["ece"] / 2 and rec["nll_ts"] < rec["nll"]


def test_summary_over_runs_is_mean_and_sample_std():
    rows = pd.DataFrame({"method": ["A", "A", "A", "B"], "ece": [.1, .2, .3, .5], "brier": [1, 1, 1, 1],
                         "nll": [1, 2, 3, 4], "ece_ts": [.05, .05, None, None], "brier_ts": [1, 1, None, None],
                         "nll_ts": [1, 1, None, None], "temperature": [2.0, 3.0, None, None],
                         "note": [None, None, "x", "y"]})
    s = C.summarise_runs(rows, ["method"]).set_index("method")
    assert s.loc["A", "ece"] == pytest.approx(.2) and s.loc["A", "ece_std"] == pytest.approx(.1)
    assert s.loc["A", "runs"] == 3 and s.loc["A", "runs_ts"] == 2 and pd.isna(s.loc["B", "ece_std"])
    assert pd.isna(s.loc["B", "temperature"]) and s.loc["B", "note"] == "y"
    assert s.loc["A", "temperature"] == pytest.approx(2.5) and s.loc["A", "ece_ts"] == pytest.approx(.05)
