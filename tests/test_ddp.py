"""Data-parallel training (two CPU processes, gloo): predictions gathered across ranks, one row per case,
bookkeeping written once. Slow: run with `make test-all`."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from skinlesion.testing import REPO

pytestmark = pytest.mark.slow


def test_ddp_gathers_every_case_once(pad_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"data.root={pad_root}", "backbone=test_resnet", "trainer=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "data.image_size=32", "data.batch_size=16",
           "data.num_workers=0", "trainer.max_epochs=1", "tta=flips", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    folds = pd.read_csv(run / "folds.csv")
    for part in ("val", "test"):
        pred = pd.read_parquet(run / "predictions" / f"{part}.parquet")
        expected = set(folds.loc[folds["partition"] == part, "case_id"])
        assert len(pred) == len(expected) and set(pred["case_id"]) == expected
