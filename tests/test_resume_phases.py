"""A run stopped at any moment and run again ends exactly as an uninterrupted one: the same epochs trained, the same
checkpoint chosen, the same early-stopping decision and weight average, the same predictions.

Two presets: a chapter-4 run whose early stopping fires (PAD-UFES-20, patience 2, a gain no epoch can reach: it stops
after its third of six epochs) and a chapter-5 AMMFM run that averages the weights of its last two of four epochs.
Each is stopped inside and after training — by Ctrl-C in process for every phase, and by a real SIGKILL to a
subprocess for one phase — then the same command runs again in the same directory."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.testing import TINY, epochs_logged, python, run_record, signal_at, train

CH4 = ["trainer.max_epochs=6", "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=0.5",
       "tta=none"]
CH5 = ["model=ammfm", "data=derm7pt", "backbone=test_resnet", "structure.clinic_backbone.name=test_efficientnet",
       "trainer.max_epochs=4", "callbacks.swa.last_epochs=2", "trainer.limit_train_batches=2",
       "trainer.limit_val_batches=1", "data.batch_size=16", "tta=none"]


def _ch4(pad_root, base) -> list[str]:
    return [f"data.root={pad_root}", *CH4, f"paths.cache_dir={base / 'cache'}"]


def _ch5(derm7pt_root) -> list[str]:
    return [f"data.root={derm7pt_root}", *CH5]


def _probs(run_dir, name: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / name)


def _same_end(run_dir, reference) -> None:
    """Same evaluated and best checkpoint names, same epochs logged, same weight average, same predictions."""
    m = [json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference)]
    for key in ("best_checkpoint", "evaluated_checkpoint"):
        assert m[0][key].rsplit("/", 1)[1] == m[1][key].rsplit("/", 1)[1], key
    assert m[0]["weight_averaging"] == m[1]["weight_averaging"]
    assert epochs_logged(run_dir) == epochs_logged(reference)
    files = ["predictions/val.parquet", "predictions/test.parquet"]
    files += ["search/test_fused.parquet"] if (reference / "search").is_dir() else []
    for name in files:
        a, b = _probs(run_dir, name), _probs(reference, name)
        assert list(a["case_id"]) == list(b["case_id"]), name
        cols = [c for c in a.columns if c.startswith("prob/")]
        assert cols and np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-5, name
    record = run_record(run_dir)
    assert record["status"] == "completed"
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "completed"]


@pytest.fixture(scope="module")
def ch4_reference(pad_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("ch4_reference")
    run = train(_ch4(pad_root, base), base / "run")
    assert epochs_logged(run) == [0, 1, 2]            # early stopping fired: three of six epochs
    return run


@pytest.fixture(scope="module")
def ch5_reference(derm7pt_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("ch5_reference")
    run = train(_ch5(derm7pt_root), base / "run")
    assert json.loads((run / "metrics.json").read_text())["weight_averaging"] == {"states": 2, "last_epochs": 2}
    return run


def _stop_and_rerun(overrides, run_dir, phase, epoch) -> dict:
    stop = [*overrides, *signal_at("SIGINT", run_dir.parent / f"{run_dir.name}.once", phase, epoch)]
    with pytest.raises(SystemExit):
        train(stop, run_dir)
    stopped = run_record(run_dir)
    assert stopped["status"] == "interrupted"
    train(stop, run_dir)
    return stopped


@pytest.mark.parametrize("phase,epoch", [("validation", 1), ("after_training", 0), ("test", 0), ("predictions", 0)])
def test_a_chapter4_run_whose_early_stopping_fired_resumes_to_the_same_end(ch4_reference, pad_root, tmp_path,
                                                                           phase, epoch):
    run = tmp_path / "run"
    _stop_and_rerun(_ch4(pad_root, tmp_path), run, phase, epoch)
    _same_end(run, ch4_reference)
    resumed = run_record(run)["attempts"][-1]["resumed_from"]
    assert resumed.get("training_finished", False) == (phase != "validation")   # no epoch trained again


@pytest.mark.parametrize("phase,epoch", [("mid_epoch", 3), ("validation", 3), ("after_training", 0), ("test", 0),
                                         ("predictions", 0)])
def test_a_chapter5_run_resumes_to_the_same_weight_average_and_predictions(ch5_reference, derm7pt_root, tmp_path,
                                                                           phase, epoch):
    run = tmp_path / "run"
    _stop_and_rerun(_ch5(derm7pt_root), run, phase, epoch)
    _same_end(run, ch5_reference)


def _killed_and_rerun(overrides, run_dir, phase):
    command = ["train.py", *TINY, *overrides, *signal_at("SIGKILL", run_dir.parent / "once", phase),
               f"hydra.run.dir={run_dir}"]
    assert python(*command, timeout=300).returncode == -9
    assert run_record(run_dir)["status"] == "running"          # SIGKILL: no chance to write anything
    again = python(*command, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training is finished: evaluating" in again.stdout + again.stderr


def test_a_chapter4_run_killed_at_its_test_is_evaluated_not_trained_on(ch4_reference, pad_root, tmp_path):
    run = tmp_path / "run"
    _killed_and_rerun(_ch4(pad_root, tmp_path), run, "test")
    m = [json.loads((d / "metrics.json").read_text()) for d in (run, ch4_reference)]
    assert m[0]["best_checkpoint"].rsplit("/", 1)[1] == m[1]["best_checkpoint"].rsplit("/", 1)[1]
    assert epochs_logged(run) == [0, 1, 2]
    for part in ("val", "test"):
        a, b = (_probs(d, f"predictions/{part}.parquet") for d in (run, ch4_reference))
        cols = [c for c in a.columns if c.startswith("prob/")]
        assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-5


def test_a_chapter5_run_killed_between_training_and_test_evaluates_the_average(ch5_reference, derm7pt_root,
                                                                               tmp_path):
    run = tmp_path / "run"
    _killed_and_rerun(_ch5(derm7pt_root), run, "after_training")
    m = json.loads((run / "metrics.json").read_text())
    assert m["evaluated_checkpoint"].endswith("swa.ckpt") and m["weight_averaging"]["states"] == 2
    for name in ("predictions/test.parquet", "search/test_fused.parquet"):
        a, b = (_probs(d, name) for d in (run, ch5_reference))
        cols = [c for c in a.columns if c.startswith("prob/")]
        assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-5


def test_the_phases_are_known():
    from skinlesion.testing import SignalAtEpoch

    with pytest.raises(ValueError, match="phase='later': expected one of"):
        SignalAtEpoch(0, "SIGINT", "/tmp/x", phase="later")
