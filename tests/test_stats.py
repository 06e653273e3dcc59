import numpy as np
import pandas as pd
import pytest
from scipy import stats

from skinlesion.evaluation.stats import (THESIS_METHODS, compare_methods, friedman, holm, select_methods, wide_scores,
                                        wilcoxon_pair)


def _records(rng, methods=("A", "B", "C"), backbones=("r", "d"), folds=5, shift=(0.0, 0.02, 0.05)):
    rows = []
    for bb in backbones:
        for f in range(folds):
            base = rng.normal(0.7, 0.02)
            for m, s in zip(methods, shift):
                rows.append({"backbone": bb, "fold": f, "method": m, "score": base + s + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def test_friedman_matches_scipy():
    rng = np.random.default_rng(0)
    rec = _records(rng)
    res = compare_methods(rec, ["backbone", "fold"], methods=["A", "B", "C"])
    wide = rec.pivot_table(index=["backbone", "fold"], columns="method", values="score")
    ref = stats.friedmanchisquare(wide["A"], wide["B"], wide["C"])
    assert res["friedman"]["p"] == pytest.approx(ref.pvalue)
    assert res["friedman"]["statistic"] == pytest.approx(ref.statistic)
    assert res["friedman"]["n_blocks"] == 10 and res["methods"] == ["A", "B", "C"]


def test_wilcoxon_exact_matches_scipy_and_thesis_floor():
    rng = np.random.default_rng(1)
    x = rng.normal(size=25)
    y = x + 1 + rng.normal(scale=0.01, size=25)  # every difference has the same sign
    r = wilcoxon_pair(x, y)
    ref = stats.wilcoxon(x, y, alternative="two-sided", method="exact")
    assert r["exact"] and r["method"] == "exact"
    assert r["p"] == pytest.approx(ref.pvalue) == pytest.approx(2 / 2 ** 25)  # 5.96e-8, the thesis minimum
    x2, y2 = rng.normal(size=12), rng.normal(size=12)
    r2 = wilcoxon_pair(x2, y2)
    assert r2["p"] == pytest.approx(stats.wilcoxon(x2, y2, method="exact").pvalue)
    assert r2["statistic"] == pytest.approx(stats.wilcoxon(x2, y2, method="exact").statistic)


def test_too_few_blocks_are_said_to_be_unable_to_reach_significance():
    five = wilcoxon_pair(np.arange(5.0) + 1, np.zeros(5))     # all of one sign: p = 2 / 2**5, the floor
    assert five["p"] == pytest.approx(0.0625) and "smallest possible p is 0.0625" in five["note"]
    one = wilcoxon_pair(np.array([0.7]), np.array([0.6]))
    assert one["p"] == 1.0 and one["note"].startswith("n = 1:")
    six = wilcoxon_pair(np.arange(6.0) + 1, np.zeros(6))     # 2 / 2**6 < 0.05: a test that can speak
    assert six["p"] == pytest.approx(2 / 64) and six["note"] is None


def test_wilcoxon_reports_lost_exactness():
    x = np.array([0.70, 0.72, 0.71, 0.69, 0.75, 0.74, 0.73, 0.70])
    y = x - np.array([0.0, 0.01, 0.02, 0.01, 0.03, 0.04, 0.05, 0.06])  # one zero, tied |d| = 0.01
    r = wilcoxon_pair(x, y)
    assert not r["exact"] and r["method"] == "asymptotic"
    assert r["n_zero"] == 1 and r["ties"]
    assert "exactness lost" in r["note"]
    ref = stats.wilcoxon(np.round(x - y, 12), method="asymptotic")
    assert r["p"] == pytest.approx(ref.pvalue)
    same = wilcoxon_pair(x, x)
    assert same["p"] == 1.0 and "zero" in same["note"]
    big = wilcoxon_pair(np.arange(60.0), np.arange(60.0) + np.linspace(0.1, 1, 60))
    assert big["method"] == "asymptotic" and "n = 60" in big["note"]


def test_missing_run_shortens_only_its_pairs():
    rng = np.random.default_rng(2)
    rec = _records(rng)
    rec = rec[~((rec.backbone == "d") & (rec.fold == 3) & (rec.method == "B"))]
    res = compare_methods(rec, ["backbone", "fold"])
    assert res["friedman"]["n_blocks"] == 9 and len(res["all_blocks"]) == 10
    assert any("d / 3 lacks B" in n for n in res["notes"])
    full = rec.pivot_table(index=["backbone", "fold"], columns="method", values="score")
    complete = full.dropna()
    ref = stats.friedmanchisquare(complete["A"], complete["B"], complete["C"])
    assert res["friedman"]["p"] == pytest.approx(ref.pvalue)
    for p in res["pairs"]:
        both = full[[p["a"], p["b"]]].dropna()   # the blocks holding both methods of this pair
        assert p["n"] == len(both) == (9 if "B" in (p["a"], p["b"]) else 10)
        assert p["n_dropped"] == 10 - p["n"]
        ref = stats.wilcoxon(both[p["a"]], both[p["b"]], method="exact")
        assert p["exact"] and p["p"] == pytest.approx(ref.pvalue)
    wide, notes = wide_scores(rec, ["backbone", "fold"])
    assert len(wide) == 9 and any("d / 3 dropped" in n for n in notes)


def test_selected_methods_only():
    rng = np.random.default_rng(5)
    rec = _records(rng, methods=("A", "B", "C", "D"), shift=(0, 0.01, 0.03, 0.05))
    rec = rec[~((rec.fold == 0) & (rec.method == "D"))]   # D's gaps must not touch a comparison without D
    res = compare_methods(rec, ["backbone", "fold"], methods=["C", "A", "B"])
    assert res["methods"] == ["C", "A", "B"] and res["friedman"]["n_blocks"] == 10
    assert [(p["a"], p["b"], p["n"]) for p in res["pairs"]] == [("C", "A", 10), ("C", "B", 10), ("A", "B", 10)]
    assert not res["notes"]


def test_method_selection_spec():
    eight = ["Image", "JF-CAT", "JF-MB", "JF-MN", "JF-MA", "JF-MMFA", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert THESIS_METHODS == eight
    present = ["Image", "JF-CAT", "JIF-CAT(OFB)", "JF-MB", "JIF-MMFA(OFB)", "JIF-MMFA(All)", "FusionNet"]
    chosen, notes = select_methods(present, "thesis")
    assert chosen == ["Image", "JF-CAT", "JF-MB", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert any("JF-MN, JF-MA, JF-MMFA" in n for n in notes) and any("JIF-CAT(OFB), FusionNet" in n for n in notes)
    assert select_methods(present, "all")[0] == present
    assert select_methods(["FusionNet", "FusionM4Net"], "thesis")[0] == ["FusionNet", "FusionM4Net"]
    chosen, notes = select_methods(present, "jif-mmfa (all), image, nope")
    assert chosen == ["JIF-MMFA(All)", "Image"] and any("nope" in n for n in notes)
    empty = wilcoxon_pair(np.array([]), np.array([]))
    assert empty["n"] == 0 and empty["p"] is None


def test_holm():
    p = [0.01, 0.04, 0.03, None, 0.5]
    adj = holm(p)
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1=0.5
    assert adj[0] == pytest.approx(0.04) and adj[2] == pytest.approx(0.09) and adj[1] == pytest.approx(0.09)
    assert adj[3] is None and adj[4] == pytest.approx(0.5)
    res = compare_methods(_records(np.random.default_rng(3)), ["backbone", "fold"])
    assert all(r["p_holm"] >= r["p"] for r in res["pairs"])


def test_friedman_needs_three_methods():
    rec = _records(np.random.default_rng(4), methods=("A", "B"), shift=(0, 0.01))
    res = compare_methods(rec, ["backbone", "fold"])
    assert res["friedman"]["p"] is None and "3 methods" in res["friedman"]["note"]
    assert len(res["pairs"]) == 1
    assert friedman(pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}))["p"] is None
