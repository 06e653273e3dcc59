import itertools
import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.evaluation import predictions as P
from skinlesion.evaluation import search as S
from skinlesion.evaluation.simulated_runs import dataset_classes, make_predictions, write_run

CLASSES = dataset_classes("derm7pt")


def reference_search(preds, y, grid_n, low=0.05, high=1.0):
    """The search written out candidate by candidate, independently of the package: lexicographic
    (i, j, k), weights g/sum(g), skip a direction already seen (rounded to 1e-9), fuse in float64 as
    w0*P0 + w1*P1 + w2*P2, np.argmax, count correct (case, task) pairs, keep the first strict maximum.
    Returns (weights of every candidate, their counts, index of the choice)."""
    g = np.linspace(low, high, grid_n)
    seen, weights, counts = set(), [], []
    for i, j, k in itertools.product(range(grid_n), repeat=3):
        s = g[i] + g[j] + g[k]
        w = (g[i] / s, g[j] / s, g[k] / s)
        key = tuple(np.round(w, 9))
        if key in seen:
            continue
        seen.add(key)
        correct = 0
        for t in y:
            fused = w[0] * preds[0][t] + w[1] * preds[1][t] + w[2] * preds[2][t]
            correct += int(np.sum(fused.argmax(1) == y[t]))
        weights.append(w)
        counts.append(correct)
    best = 0
    for idx, c in enumerate(counts):
        if c > counts[best]:
            best = idx
    return np.array(weights), np.array(counts), best


def _problem(seed, n=60):
    rng = np.random.default_rng(seed)
    y = {t: rng.integers(0, len(c), n) for t, c in CLASSES.items()}
    preds = [P.branch_probs(make_predictions(CLASSES, n, ["b"], rng, signal=sig, y=y), "b") for sig in (1.2, 0.6, 1.0)]
    return preds, y


def _coarse_problem(seed, n=30, classes=(3, 2), levels=10):
    """Probabilities on a coarse lattice (multiples of 1/levels): many exact class ties and candidates
    lying exactly on a decision boundary, where rounding decides the float64 argmax."""
    rng = np.random.default_rng(seed)
    y = {f"t{i}": rng.integers(0, k, n) for i, k in enumerate(classes)}
    preds = [{f"t{i}": rng.integers(0, levels + 1, size=(n, k)) / levels for i, k in enumerate(classes)}
             for _ in range(3)]
    return preds, y


# Hand-worked case: 3 cases x 2 binary tasks, grid_n = 2 (g = 0.05, 1). The 8 grid cells give 7
# directions (1,1,1) repeats (0.05,0.05,0.05)), with weights (derm, clinic, fusion):
#   c0 (1/3, 1/3, 1/3)  c1 (1, 1, 20)/22  c2 (1, 20, 1)/22  c3 (1, 20, 20)/41
#   c4 (20, 1, 1)/22    c5 (20, 1, 20)/41 c6 (20, 20, 1)/41
# (case, task): derm / clinic / fusion probabilities -> target: candidates where it is right
#   (1, A) (0,1)/(1,0)/(.5,.5) -> 0: class 0 iff w_clinic >= w_derm (equal weights tie exactly in
#          float64 and argmax takes class 0): c0 c1 c2 c3 c6
#   (1, B) (1,0)/(1,0)/(0,1)   -> 1: iff w_fusion > w_derm + w_clinic: c1
#   (2, A) (0,1)/(1,0)/(.5,.5) -> 1: iff w_derm > w_clinic strictly: c4 c5
#   (2, B) (0,1)/(1,0)/(1,0)   -> 1: iff w_derm > w_clinic + w_fusion: c4
#   (3, A) all (.8,.2)         -> 0: always
#   (3, B) all (.5,.5)         -> 0: an exact tie in every fusion, decided for class 0: always
# Counts c0..c6 = 3 4 3 3 4 3 3: c1 and c4 tie at the maximum and the first, c1, wins.
HAND_PREDS = [
    {"A": np.array([[0, 1], [0, 1], [.8, .2]]), "B": np.array([[1, 0], [0, 1], [.5, .5]])},   # derm
    {"A": np.array([[1, 0], [1, 0], [.8, .2]]), "B": np.array([[1, 0], [1, 0], [.5, .5]])},   # clinic
    {"A": np.array([[.5, .5], [.5, .5], [.8, .2]]), "B": np.array([[0, 1], [1, 0], [.5, .5]])},  # fusion
]
HAND_Y = {"A": np.array([0, 1, 0]), "B": np.array([1, 1, 0])}


def test_hand_worked_case_with_ties():
    res = S.search_simplex(HAND_PREDS, HAND_Y, 2)
    assert (res.index, res.correct, res.n_candidates) == (1, 4, 7)
    np.testing.assert_allclose(res.weights, [1 / 22, 1 / 22, 20 / 22])
    assert res.score == pytest.approx(4 / 6)
    weights, flat = S.simplex_candidates(3, 2)
    assert len(weights) == 7
    np.testing.assert_allclose(weights[1], [1 / 22, 1 / 22, 20 / 22])
    np.testing.assert_allclose(weights[4], [20 / 22, 1 / 22, 1 / 22])
    assert S.correct_counts_grid(HAND_PREDS, HAND_Y, 2)[flat].tolist() == [3, 4, 3, 3, 4, 3, 3]
    _, counts, best = reference_search(HAND_PREDS, HAND_Y, 2)
    assert counts.tolist() == [3, 4, 3, 3, 4, 3, 3] and best == 1


@pytest.mark.parametrize("seed,grid_n,levels", [(3, 11, 10), (7, 11, 10), (4, 7, 4), (18, 7, 4), (2, 20, 20),
                                                 (28, 20, 20), (11, 9, 8)])
def test_every_candidate_count_equals_the_float64_argmax(seed, grid_n, levels):
    preds, y = _coarse_problem(seed, levels=levels)
    weights, counts, best = reference_search(preds, y, grid_n)
    res = S.search_simplex(preds, y, grid_n)   # the default scorer
    assert (res.index, res.correct) == (best, counts[best]) and res.weights == list(weights[best])
    w, flat = S.simplex_candidates(3, grid_n)
    np.testing.assert_array_equal(w, weights)   # the very weights the loop fuses with
    np.testing.assert_array_equal(S.correct_counts_grid(preds, y, grid_n)[flat], counts)
    assert res.method == "interval"


@pytest.mark.parametrize("seed,grid_n", [(0, 8), (1, 10), (5, 12)])
def test_simplex_search_matches_reference_loop(seed, grid_n):
    preds, y = _problem(seed)
    weights, counts, best = reference_search(preds, y, grid_n)
    res = S.search_simplex(preds, y, grid_n)
    assert res.n_candidates == len(counts) and res.index == best and res.correct == counts[best]
    assert res.weights == list(weights[best])
    assert res.score == pytest.approx(counts[best] / (60 * len(y)))
    assert res.score == pytest.approx(S.mean_task_accuracy(S.fuse(preds, res.weights), y))


def test_identical_predictions_and_other_prediction_counts():
    preds, y = _problem(4)
    same = [preds[0]] * 3  # every weight vector gives the same fused argmax: the first candidate wins
    res = S.search_simplex(same, y, 6)
    assert res.index == 0
    np.testing.assert_allclose(res.weights, [1 / 3] * 3)
    # four predictions go through batched fusion; checked against fusing each candidate directly
    four = preds + [preds[1]]
    res4 = S.search_simplex(four, y, 4)
    w, _ = S.simplex_candidates(4, 4)
    direct = [sum(int(np.sum(sum(wm * p[t] for wm, p in zip(row, four)).argmax(1) == y[t])) for t in y) for row in w]
    assert res4.method == "fused" and res4.correct == max(direct) and res4.index == int(np.argmax(direct))


def test_candidates_deduplicated_in_lexicographic_order():
    w, flat = S.simplex_candidates(3, 6)
    assert np.all(np.diff(flat) > 0)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert len({tuple(np.round(r, 9)) for r in w}) == len(w)
    # (0.05, 0.05, 0.05) and (1, 1, 1) are the same direction: only the first survives
    assert flat[0] == 0 and (6 ** 3 - 1) not in set(flat.tolist())
    for grid_n, low in ((50, 0.05), (37, 0.01)):
        g = np.linspace(low, 1.0, grid_n)
        raw = np.array(list(itertools.product(g, repeat=3)))
        full = raw / raw.sum(1, keepdims=True)
        _, first = np.unique(np.round(full, 9), axis=0, return_index=True)
        _, flat = S.simplex_candidates(3, grid_n, low)
        np.testing.assert_array_equal(flat, np.sort(first))
    assert 120_000 < len(S.simplex_candidates(3, 50)[0]) < 125_000


def test_bad_predictions_are_refused():
    preds, y = _problem(6)
    broken = [dict(p) for p in preds]
    broken[1]["DIAG"] = broken[1]["DIAG"].copy()
    broken[1]["DIAG"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        S.search_simplex(broken, y, 5)
    with pytest.raises(ValueError, match="same tasks"):
        S.search_simplex([preds[0], preds[1], {"DIAG": preds[2]["DIAG"]}], y, 5)


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


def test_nearly_flat_and_one_class_tasks():
    # a fusion branch that separates two classes by a subnormal amount and a task with a single class
    preds, y = _coarse_problem(9, levels=5)
    preds = [dict(p) for p in preds]
    f = preds[2]["t1"].copy()
    f[:, 1] = f[:, 0] + np.where(np.arange(len(f)) % 2, 1e-310, -1e-310)
    preds[2]["t1"] = f
    for p in preds:
        p["one"] = np.ones((len(y["t0"]), 1))
    y = {**y, "one": np.zeros(len(y["t0"]), dtype=int)}
    weights, counts, best = reference_search(preds, y, 6)
    _, flat = S.simplex_candidates(3, 6)
    np.testing.assert_array_equal(S.correct_counts_grid(preds, y, 6)[flat], counts)
