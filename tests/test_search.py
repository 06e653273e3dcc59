import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.evaluation import predictions as P
from skinlesion.evaluation import search as S
from skinlesion.evaluation.synthetic import dataset_classes, make_predictions, write_run

CLASSES = dataset_classes("derm7pt")


def _problem(seed, n=60, quantise=None):
    rng = np.random.default_rng(seed)
    y = {t: rng.integers(0, len(c), n) for t, c in CLASSES.items()}
    preds = []
    for sig in (1.2, 0.6, 1.0):
        p = make_predictions(CLASSES, n, ["b"], rng, signal=sig, y=y)
        probs = P.branch_probs(p, "b")
        if quantise:  # coarse probabilities create exact class ties and boundary hits
            probs = {t: np.round(v * quantise) / quantise for t, v in probs.items()}
        preds.append(probs)
    return preds, y


@pytest.mark.parametrize("seed,grid_n,quantise", [(0, 8, None), (1, 10, None), (2, 8, 10), (3, 9, 4)])
@pytest.mark.parametrize("method", ["sweep", "exact"])
def test_simplex_search_matches_brute_force(seed, grid_n, quantise, method):
    preds, y = _problem(seed, quantise=quantise)
    w, correct, idx, n_cand = S.search_simplex_loop(preds, y, grid_n)
    res = S.search_simplex(preds, y, grid_n, method=method)
    assert res.n_candidates == n_cand
    assert res.index == idx
    assert res.correct == correct
    np.testing.assert_allclose(res.weights, w, rtol=0, atol=1e-15)
    assert res.score == pytest.approx(correct / (60 * len(y)))
    assert res.score == pytest.approx(S.mean_task_accuracy(S.fuse(preds, res.weights), y))


def test_sweep_and_exact_scores_agree_everywhere():
    preds, y = _problem(11, n=80)
    w, flat = S.simplex_candidates(3, 15)
    sweep = S.correct_counts_sweep(preds, y, np.linspace(0.05, 1, 15))[flat]
    exact = S.correct_counts_exact(preds, y, w)
    np.testing.assert_array_equal(sweep, exact)


def test_all_tied_candidates_pick_first():
    preds, y = _problem(4)
    same = [preds[0]] * 3  # every weight vector gives the same fused argmax
    res = S.search_simplex(same, y, 6)
    assert res.index == 0
    np.testing.assert_allclose(res.weights, [1 / 3] * 3)


def test_candidates_deduplicated_in_lexicographic_order():
    w, flat = S.simplex_candidates(3, 6)
    assert np.all(np.diff(flat) > 0)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert len({tuple(np.round(r, 9)) for r in w}) == len(w)
    # (0.05, 0.05, 0.05) and (1, 1, 1) are the same direction: only the first survives
    assert flat[0] == 0 and (6 ** 3 - 1) not in set(flat.tolist())
    full, _ = S.simplex_candidates(3, 50)
    assert 120_000 < len(full) < 125_000


def test_line_search_matches_loop():
    preds, y = _problem(5)
    p1, p2 = preds[0], preds[1]
    best, best_w = -1, None
    for w in np.linspace(0, 1, 100):
        c = sum(int(np.sum((w * p1[t] + (1 - w) * p2[t]).argmax(1) == y[t])) for t in y)
        if c > best:
            best, best_w = c, w
    res = S.search_line(p1, p2, y)
    assert res.correct == best and res.weights[0] == pytest.approx(best_w) and res.n_candidates == 100
    assert res.weights[1] == pytest.approx(1 - best_w)


def test_search_run_cli(tmp_path, capsys):
    rng = np.random.default_rng(9)
    branches = ["derm", "clinic", "fusion"]
    sig = {"derm": 1.5, "clinic": 0.7, "fusion": 1.3}
    val = make_predictions(CLASSES, 90, branches, rng, sig, prefix="v")
    test = make_predictions(CLASSES, 70, branches, rng, sig, prefix="t")
    run = write_run(tmp_path / "run", {"dataset": "derm7pt", "status": "completed"}, val, test)
    assert S.main([str(run), "--grid-n", "12"]) == 0
    out = capsys.readouterr().out
    assert "weights: derm=" in out and "test AVG ACC" in out
    rep = json.loads((run / "search" / "weights.json").read_text())
    assert rep["kind"] == "simplex" and rep["branches"] == branches
    assert sum(rep["weights"].values()) == pytest.approx(1.0)
    fused = pd.read_parquet(run / "search" / "test_fused.parquet")
    assert P.branches(fused) == ["searched"] and P.task_classes(fused) == CLASSES
    assert list(fused["case_id"]) == list(test["case_id"])
    ref = S.fuse([P.branch_probs(test, b) for b in branches], [rep["weights"][b] for b in branches])
    np.testing.assert_allclose(P.branch_probs(fused, "searched")["DIAG"], ref["DIAG"])
    assert rep["test"]["avg_acc"] == pytest.approx(S.mean_task_accuracy(ref, P.targets(test)))
    direct = S.search_simplex([P.branch_probs(val, b) for b in branches], P.targets(val), 12)
    assert rep["val"]["avg_acc"] == pytest.approx(direct.score)
    assert "avg_auc" in rep["test"]


def test_search_run_two_branches_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(2)
    val = make_predictions(CLASSES, 50, ["p1", "p2"], rng, prefix="v")
    run = write_run(tmp_path / "r2", {"dataset": "derm7pt"}, val)
    assert S.main([str(run)]) == 0
    rep = json.loads((run / "search" / "weights.json").read_text())
    assert rep["kind"] == "line" and rep["test"] is None
    assert S.main([str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err
