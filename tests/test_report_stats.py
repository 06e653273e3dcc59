"""The report's statistics on a table4_2-shaped sweep (derm7pt, 5 backbones x 11 chapter-4 models x 5 seeds)
with one run deleted: Friedman over the thesis's eight methods, Wilcoxon per pair over that pair's blocks."""
import csv
import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from skinlesion.evaluation.simulated_runs import CHAPTER4_BACKBONES, CHAPTER4_MODELS, make_sweep
from skinlesion.report import main

# Tables 4.4-4.6 compare these eight, in this order
EIGHT = ["Image", "JF-CAT", "JF-MB", "JF-MN", "JF-MA", "JF-MMFA", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
# job number of (jf_metablock, efficientnet_b3, seed 3): models outermost, then backbones, then seeds
DELETED = CHAPTER4_MODELS.index("jf_metablock") * 25 + CHAPTER4_BACKBONES.index("efficientnet_b3") * 5 + 3


def _bac_by_hand(run_dir):
    """Per-run test BAC of every reported output, straight from the parquet columns."""
    info = json.loads((run_dir / "run.json").read_text())
    df = pd.read_parquet(run_dir / "predictions" / "test.parquet")
    y = df["target/DIAG"].to_numpy()
    probs = {b: df[[c for c in df.columns if c.startswith(f"prob/{b}/DIAG/")]].to_numpy() for b in info["branches"]}
    if len(probs) == 3:
        outs = {f"{info['method']}(OFB)": probs["fusion"], f"{info['method']}(All)": sum(probs.values()) / 3}
    else:
        outs = {info["method"]: next(iter(probs.values()))}
    block = (info["backbone"], info["seed"])
    return {(m, block): balanced_accuracy_score(y, p.argmax(1)) for m, p in outs.items()}


@pytest.fixture(scope="module")
def table4_2_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("t42")
    sweep = make_sweep(root / "sweep", "derm7pt", models=CHAPTER4_MODELS, backbones=CHAPTER4_BACKBONES,
                       runs=range(5), n_val=10, n_test=150, tasks=["DIAG"], main_metric="bac",
                       experiment="table4_2", sweeper_params=True)
    assert json.loads((sweep / str(DELETED) / "run.json").read_text())["method"] == "JF-MB"
    shutil.rmtree(sweep / str(DELETED))
    scores = {}
    for d in sweep.iterdir():
        if (d / "run.json").exists():
            scores.update(_bac_by_hand(d))
    return sweep, root / "report", scores


def test_friedman_over_the_eight_and_wilcoxon_per_pair(table4_2_report, capsys):
    sweep, out, scores = table4_2_report
    # the case-level sections are tested on smaller sweeps (test_report.py, test_subgroups.py)
    assert main([str(sweep), "--out", str(out), "--format", "md,csv", "--no-figures", "--no-case-level"]) == 0
    stdout = capsys.readouterr().out
    assert "Friedman over 8 methods (" + ", ".join(EIGHT) + ") × 24 complete blocks" in stdout
    assert "| Pair | n |" in stdout and "| JF-MB - JF-MN | 24 |" in stdout and "| Image - JF-CAT | 25 |" in stdout

    res = json.loads((out / "stats" / "derm7pt_test_bac.json").read_text())
    assert res["methods"] == EIGHT
    blocks = sorted({b for _, b in scores})
    assert len(blocks) == 25
    complete = [b for b in blocks if all((m, b) in scores for m in EIGHT)]
    assert len(complete) == 24
    ref = stats.friedmanchisquare(*[[scores[(m, b)] for b in complete] for m in EIGHT])
    assert res["friedman"]["n_blocks"] == 24 and res["friedman"]["n_methods"] == 8
    assert res["friedman"]["statistic"] == pytest.approx(ref.statistic) and res["friedman"]["p"] == pytest.approx(ref.pvalue)

    pairs = {(r["a"], r["b"]): r for r in res["pairs"]}
    assert list(pairs) == list(itertools.combinations(EIGHT, 2))
    n_exact_complete = 0
    for (a, b), r in pairs.items():
        shared = [blk for blk in blocks if (a, blk) in scores and (b, blk) in scores]
        assert r["n"] == len(shared) == (24 if "JF-MB" in (a, b) else 25)
        d = np.array([scores[(a, blk)] - scores[(b, blk)] for blk in shared])
        untied = len(np.unique(np.round(np.abs(d), 12))) == len(d) and np.all(np.round(d, 12) != 0)
        assert r["exact"] == untied
        if untied:
            assert r["p"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
            n_exact_complete += len(shared) == 25
    assert n_exact_complete == 21 and all(r["exact"] for r in pairs.values())  # simulated scores: no ties

    with open(out / "tables" / "derm7pt_test_bac_stats.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["Pair", "n"] and len(rows) == 1 + 28
    assert {r[0]: r[1] for r in rows[1:]}["JF-MB - JIF-MMFA(All)"] == "24"
