"""A trained run in one call: load_run(run_dir).predict(...) reproduces the run's saved predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinlesion import load_run
from skinlesion.errors import ConfigError
from skinlesion.testing import train


@pytest.fixture(scope="module")
def trained(pad_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("load_run") / "run"
    return train(["data=pad_ufes", f"data.root={pad_root}", "model=jif_cat", "tta=flips", "trainer.max_epochs=1",
                  "trainer.limit_train_batches=2"], out)


def _columns(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return frame[[c for c in frame.columns if c.startswith(prefix)]]


def test_predict_reproduces_the_saved_validation_predictions(trained):
    run = load_run(trained)
    best = json.loads((trained / "metrics.json").read_text())["best_checkpoint"]
    assert run.checkpoint.name == best.rsplit("/", 1)[-1]
    saved = pd.read_parquet(trained / "predictions" / "val.parquet")
    frame = run.predict()                                   # the run's own validation partition, its TTA views
    assert list(frame.columns) == list(saved.columns)
    assert list(frame["case_id"]) == list(saved["case_id"])
    np.testing.assert_allclose(_columns(frame, "prob/").to_numpy(), _columns(saved, "prob/").to_numpy(), atol=1e-5)
    np.testing.assert_allclose(_columns(frame, "logit/").to_numpy(), _columns(saved, "logit/").to_numpy(), atol=1e-4)


def test_predict_takes_a_dataloader_and_other_views(trained):
    run = load_run(trained)
    loader = run.datamodule().test_dataloader()
    saved = pd.read_parquet(trained / "predictions" / "test.parquet")
    frame = run.predict(loader)
    np.testing.assert_allclose(_columns(frame, "prob/").to_numpy(), _columns(saved, "prob/").to_numpy(), atol=1e-5)
    single = run.predict(loader, tta="none")               # one view: differs from the four-view average
    assert np.abs(_columns(single, "prob/").to_numpy() - _columns(saved, "prob/").to_numpy()).max() > 1e-4


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        load_run(tmp_path)
