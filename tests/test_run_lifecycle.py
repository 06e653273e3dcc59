"""How a run ends when it does not complete: a diverging loss, SIGTERM or Ctrl-C; and files written so that an
interrupted write never leaves a truncated one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from skinlesion.provenance import atomic_path, write_csv, write_parquet
from skinlesion.testing import TINY, run_record, started, sweep, train

META = ["data=pad_ufes", "model=meta_only", "tta=none"]


def test_diverging_loss_stops_at_the_step_and_is_recorded(pad_root, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: loss diverged at epoch 0, step 1 \(loss=(nan|inf)\)"):
        train([*META, f"data.root={pad_root}", "optim.optimizer.lr=1e30", "trainer.max_epochs=3"], tmp_path / "run")
    rec = run_record(tmp_path / "run")
    assert rec["status"] == "failed" and rec["failed_at"] == {"epoch": 0, "step": 1}
    assert "loss diverged" in rec["error"] and "\n" not in rec["error"]
    assert not (tmp_path / "run" / "predictions").exists()   # stopped before any evaluation


def test_a_diverged_job_does_not_stop_the_sweep(pad_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep([*TINY, *META, f"data.root={pad_root}", "trainer.limit_train_batches=3", "optim.optimizer.lr=1e30,0.005",
           f"hydra.sweep.dir={out}"])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    records = {}
    for d in out.iterdir():
        if (d / "run.json").is_file():
            rec = json.loads((d / "run.json").read_text())
            records[float(next(o for o in rec["overrides"] if o.startswith("optim.optimizer.lr=")).split("=")[1])] = rec
    assert len(records) == 2
    assert records[1e30]["status"] == "failed"
    assert records[1e30]["failed_at"]["epoch"] == 0
    assert records[0.005]["status"] == "completed"
    assert "loss diverged at epoch 0" in output
    assert "Traceback" not in output


def test_sigterm_during_training_records_interrupted(pad_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *TINY, *META, f"data.root={pad_root}", "trainer.max_epochs=100000",
           "callbacks.early_stopping=null", f"hydra.run.dir={run}"]
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("*.ckpt")):    # an epoch has been trained and validated
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.2)
        assert run_record(run)["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    rec = run_record(run)
    assert rec["status"] == "interrupted" and rec["error"] == "interrupted by SIGTERM"
    assert rec["interrupted_at"]["step"] > 0                 # stopped during training, after some steps
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in stdout + stderr and "Traceback" not in stdout + stderr


def test_ctrl_c_records_interrupted(pad_root, tmp_path, monkeypatch):
    from skinlesion.module import MultiTaskModule

    original = MultiTaskModule.training_step

    def press_ctrl_c(self, batch, batch_idx):
        if self.global_step == 2:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MultiTaskModule, "training_step", press_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        train([*META, f"data.root={pad_root}", "trainer.max_epochs=3"], tmp_path / "run")
    assert exit_info.value.code == 128 + signal.SIGINT
    rec = run_record(tmp_path / "run")
    assert rec["status"] == "interrupted" and rec["interrupted_at"] == {"epoch": 0, "step": 2}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored


# --- atomic writes -----------------------------------------------------------------------------------
def _fail_midway(monkeypatch, method):
    """Make DataFrame.<method> write a partial file and then die, as a killed process would."""
    def partial(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(pd.DataFrame, method, partial)


@pytest.mark.parametrize("writer,reader,method", [(write_parquet, pd.read_parquet, "to_parquet"),
                                                   (write_csv, pd.read_csv, "to_csv")])
def test_interrupted_write_leaves_the_previous_file_intact(writer, reader, method, tmp_path, monkeypatch):
    path = tmp_path / f"predictions.{method}"
    before = pd.DataFrame({"case_id": ["a", "b"], "x": [1.0, 2.0]})
    writer(path, before)
    _fail_midway(monkeypatch, method)
    with pytest.raises(KeyboardInterrupt):
        writer(path, pd.DataFrame({"case_id": ["c"], "x": [3.0]}))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(reader(path), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no temporary file left behind


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("new: ")
            raise RuntimeError("killed")
    assert path.read_text() == "old: 1\n"
    with atomic_path(path) as tmp:
        tmp.write_text("new: 2\n")
    assert path.read_text() == "new: 2\n" and len(list(tmp_path.iterdir())) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask   # usual permissions, not the temp file's 0600


def test_a_divergence_checked_every_few_steps_still_stops_the_run_and_names_its_step(pad_root, tmp_path, monkeypatch):
    """On an accelerator the loss check stays on the device and is read every few steps (no sync per step); the run
    still stops, naming the step whose loss was NaN, not the step that read it."""
    from skinlesion.module import MultiTaskModule

    monkeypatch.setattr(MultiTaskModule, "divergence_check_every", 3)
    original = MultiTaskModule.loss

    def nan_at_step_1(self, logits, target, absent=None):
        total, parts = original(self, logits, target, absent)
        return (total * float("nan") if self.global_step == 1 else total), parts

    monkeypatch.setattr(MultiTaskModule, "loss", nan_at_step_1)
    with pytest.raises(SystemExit, match=r"^error: loss diverged at epoch 0, step 1 \(loss=nan\)"):
        train([*META, f"data.root={pad_root}", "trainer.max_epochs=2", "trainer.limit_train_batches=6"],
              tmp_path / "run")
    rec = run_record(tmp_path / "run")
    assert rec["status"] == "failed" and rec["failed_at"] == {"epoch": 0, "step": 1}
    assert not (tmp_path / "run" / "predictions").exists()
