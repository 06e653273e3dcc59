"""Data-parallel training (two CPU processes, gloo): predictions gathered across ranks, one row per case,
bookkeeping written once. Slow: run with `make test-all`."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from skinlesion.testing import python, run_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # two DDP processes per run


def test_ddp_gathers_every_case_once(pad_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"data.root={pad_root}", "backbone=test_resnet", "trainer=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "data.image_size=32", "data.batch_size=16",
           "data.num_workers=0", "trainer.max_epochs=1", "tta=flips", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run}"]
    proc = run_command(cmd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    folds = pd.read_csv(run / "folds.csv")
    for part in ("val", "test"):
        pred = pd.read_parquet(run / "predictions" / f"{part}.parquet")
        expected = set(folds.loc[folds["partition"] == part, "case_id"])
        assert len(pred) == len(expected) and set(pred["case_id"]) == expected


@pytest.mark.parametrize("strategy", ["ddp", "auto"])
def test_a_zero_weight_branch_trains_under_ddp_as_on_one_device(derm7pt_root, tmp_path, strategy):
    """PEMM with W=0 (Table 5.17): the clinical head's loss weight is 0, so it gets no gradient. Under DDP it
    trains (DDP expects the unused head) and the head stays exactly as on one device: untouched by the loss."""
    import torch

    point = ["data=derm7pt", f"data.root={derm7pt_root}", "model=pemm", "model.loss.w=0", "backbone=test_resnet",
             "trainer=cpu", "data.image_size=32", "data.batch_size=16", "data.num_workers=0", "trainer.max_epochs=1",
             "trainer.limit_train_batches=2", "tta=none", "callbacks.swa=null", "trainer.enable_progress_bar=false"]
    heads = {}
    for name, extra in (("ddp", ["trainer.devices=2", f"trainer.strategy={strategy}"]), ("one", [])):
        run = tmp_path / name
        proc = python("train.py", *point, *extra, f"hydra.run.dir={run}", timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((run / "run.json").read_text())["world_size"] == (2 if name == "ddp" else 1)
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        heads[name] = {k: v for k, v in state.items() if "head" in k}
    # the clinical head's parameters (BatchNorm's running statistics are buffers, updated by the forward pass on
    # each rank's data)
    clinic = [k for k in heads["one"] if "clinic" in k and "running_" not in k and "num_batches" not in k]
    assert clinic and all(torch.equal(heads["ddp"][k], heads["one"][k]) for k in clinic)


def test_fusionm4net_trains_under_ddp_without_waiting_on_itself(derm7pt_root, tmp_path):
    """Rank 1 re-runs the pipeline's command; it must not wait on the shared-run lock that rank 0 holds while
    rank 0 waits for it to join (the deadlock): only rank 0 takes locks and does stage 2."""
    out = tmp_path / "run"
    proc = python("fusionm4net.py", f"data.root={derm7pt_root}", "backbone=test_resnet", "trainer=ddp",
                  "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
                  "trainer.precision=32-true", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=2", "tta=none", "stage2.grid_n=5",
                  "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name in ("main", "sub"):
        record = json.loads((out / "stage1" / name / "run.json").read_text())
        assert record["status"] == "completed" and record["world_size"] == 2 and len(record["attempts"]) == 1
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
