"""Resume: a run stopped after its second epoch (Ctrl-C in process; a real SIGKILL to a subprocess in the slow
test), rerun with the same command in the same directory, ends exactly as an uninterrupted run; a completed run is
skipped; ``ckpt_path=`` resumes explicitly; a directory of another experiment is refused; random states and the
training order survive a checkpoint; a run that several jobs share is trained once."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.resume import RandomState, config_differences
from skinlesion.testing import (
    epochs_logged,
    final_scores,
    four_epochs,
    python,
    run_command,
    run_record,
    signal_at_epoch_2,
    train,
)


def _cmd(pad_root, run_dir, *extra) -> list[str]:
    return [sys.executable, "train.py", *four_epochs(pad_root, run_dir.parent / "cache"), f"hydra.run.dir={run_dir}",
            *extra]


def _same_results(run_dir, reference) -> None:
    """Same final metrics, same best checkpoint, same per-case probabilities, every epoch logged once."""
    assert final_scores(run_dir) == final_scores(reference)
    names = [json.loads((d / "metrics.json").read_text())["best_checkpoint"].rsplit("/", 1)[1]
             for d in (run_dir, reference)]
    assert names[0] == names[1]
    for part in ("val", "test"):
        a = pd.read_parquet(run_dir / "predictions" / f"{part}.parquet")
        b = pd.read_parquet(reference / "predictions" / f"{part}.parquet")
        pd.testing.assert_frame_equal(a, b)
    assert epochs_logged(run_dir) == epochs_logged(reference) == [0, 1, 2, 3]


# --- in process: interrupted at the start of the third epoch, rerun, rerun again ------------------------------
@pytest.fixture(scope="module")
def resumed_in_process(pad_root, tmp_path_factory):
    """(uninterrupted run, resumed run, its run.json after the stop, after completion, the skipping rerun's log)."""
    base = tmp_path_factory.mktemp("resume_in_process")
    plain = train(four_epochs(pad_root, base / "cache"), base / "plain", tiny=False)
    run_dir = base / "stopped"
    stop = [*four_epochs(pad_root, base / "cache"), *signal_at_epoch_2("SIGINT", base / "stopped-once")]
    with pytest.raises(SystemExit):
        train(stop, run_dir, tiny=False)
    stopped = run_record(run_dir)
    stopped_epoch = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    train(stop, run_dir, tiny=False)                       # the same command again: resumes
    completed = (run_dir / "run.json").read_bytes()
    return plain, run_dir, stopped, stopped_epoch, completed, stop


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(resumed_in_process):
    plain, run_dir, stopped, stopped_epoch, _, _ = resumed_in_process
    assert stopped["status"] == "interrupted" and stopped["interrupted_at"]["epoch"] == 2
    assert stopped_epoch == 1                             # last.ckpt: two epochs done
    record = run_record(run_dir)
    assert record["status"] == "completed"
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "completed"]
    assert record["attempts"][-1]["resumed_from"]["epochs_done"] == 2
    _same_results(run_dir, plain)


def test_a_completed_run_is_skipped(resumed_in_process, caplog):
    _, run_dir, _, _, completed, stop = resumed_in_process
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".run.lock"}
    with caplog.at_level("INFO", logger="skinlesion"):
        train(stop, run_dir, tiny=False)
    assert "already completed; skipped" in caplog.text
    assert (run_dir / "run.json").read_bytes() == completed                      # nothing rewritten ...
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if p.is_file() and p.name != ".run.lock"} == mtimes                   # ... or touched


def test_ckpt_path_resumes_explicitly_in_a_new_directory(resumed_in_process, pad_root, tmp_path):
    plain = resumed_in_process[0]
    ckpt = tmp_path / "four-epochs.ckpt"   # the finished run's last checkpoint, continued for a fifth epoch
    ckpt.write_bytes((plain / "checkpoints" / "last.ckpt").read_bytes())
    out = train([f"data.root={pad_root}", "trainer.max_epochs=5", f"ckpt_path={ckpt}"], tmp_path / "run")
    record = run_record(out)
    assert record["status"] == "completed"
    assert record["attempts"][0]["resumed_from"] == {"checkpoint": str(ckpt), "epochs_done": 4}
    assert epochs_logged(out) == [4]                    # only the fifth epoch was trained here


def test_last_checkpoint_is_written_every_epoch_not_only_on_improvement(resumed_in_process):
    plain = resumed_in_process[0]
    scores = pd.read_csv(plain / "csv" / "metrics.csv").dropna(subset=["val/main"])["val/main"].tolist()
    assert len(scores) == 4
    assert torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


# --- a real SIGKILL to a subprocess ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_and_resumed(pad_root, tmp_path_factory):
    """(run dir, results of the two invocations: killed, resumed)."""
    base = tmp_path_factory.mktemp("resume")
    run_dir = base / "killed"
    cmd = _cmd(pad_root, run_dir, *signal_at_epoch_2("SIGKILL", base / "killed-once"))
    killed = run_command(cmd, timeout=600)
    killed.record = run_record(run_dir)
    killed.last_epoch = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    return run_dir, killed, run_command(cmd, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(killed_and_resumed, uninterrupted):
    run_dir, killed, resumed = killed_and_resumed
    assert killed.returncode == -9                       # SIGKILL: no chance to clean up
    assert killed.record["status"] == "running"
    assert killed.last_epoch == 1                        # two epochs done (0-based epoch 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = run_record(run_dir)
    assert record["status"] == "completed"
    assert record["attempts"][-1]["resumed_from"]["epochs_done"] == 2
    assert "resuming from" in resumed.stdout + resumed.stderr
    _same_results(run_dir, uninterrupted)


def test_a_missing_ckpt_path_is_a_clear_error(pad_root, tmp_path):
    with pytest.raises(SystemExit, match=r"ckpt_path='.*nope.ckpt': no such checkpoint file"):
        train([f"data.root={pad_root}", f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_directory_of_another_experiment_is_refused(resumed_in_process, pad_root):
    plain = resumed_in_process[0]
    before = (plain / "run.json").read_bytes()
    with pytest.raises(SystemExit, match=r"holds a run of a different experiment .*optim\.optimizer\.lr"):
        train([*four_epochs(pad_root, plain.parent / "cache"), "optim.optimizer.lr=0.1"], plain, tiny=False)
    assert (plain / "run.json").read_bytes() == before


def test_runtime_settings_may_change_between_attempts():
    saved = {"seed": 1, "data": {"num_workers": 4, "batch_size": 32}, "trainer": {"enable_progress_bar": True}}
    assert config_differences(saved, {"seed": 1, "data": {"num_workers": 16, "batch_size": 32},
                                      "trainer": {"enable_progress_bar": False}}) == []
    assert config_differences(saved, {"seed": 2, "data": {"num_workers": 4, "batch_size": 64},
                                      "trainer": {"enable_progress_bar": True}}) == ["data.batch_size", "seed"]


def test_a_run_saved_before_input_dropout_existed_continues_unless_the_dropout_is_switched_on():
    saved = {"seed": 1, "model": {"beta": 0.5}}   # written by a version without model.input_dropout or robustness
    current = {"seed": 1, "model": {"beta": 0.5, "input_dropout": {"meta": 0.0, "clinic": 0.0, "derm": 0.0}},
               "robustness": True}
    assert config_differences(saved, current) == []
    current["model"]["input_dropout"]["meta"] = 0.3
    assert config_differences(saved, current) == ["model.input_dropout.meta"]


def test_random_states_travel_with_the_checkpoint():
    callback = RandomState()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    buffer = __import__("io").BytesIO()
    torch.save({"state": saved}, buffer)   # plain types: loadable with weights_only=True
    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True)["state"])
    callback.on_train_start(None, None)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_training_order_and_augmentation_depend_on_seed_and_epoch_only(pad_root):
    from skinlesion.data import PadUfes20DataModule

    def loader_batches(epoch: int, workers: int):
        torch.manual_seed(0)
        dm = PadUfes20DataModule(root=str(pad_root), image_size=32, batch_size=16, num_workers=workers,
                                 progress=False, persistent_workers=False)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [(b["index"].clone(), b["images"]["clinic"].clone()) for b, _ in zip(loader, range(2))]

    a, b = loader_batches(3, workers=0), loader_batches(3, workers=2)
    for (ia, xa), (ib, xb) in zip(a, b):          # same order and same augmented pixels, with or without workers
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    c = loader_batches(4, workers=0)
    assert not torch.equal(a[0][0], c[0][0])       # another epoch, another order


def _train_once(run_dir, log_file, hold_s):
    from skinlesion.resume import run_lock

    with run_lock(run_dir):
        if not (run_dir / "done").exists():                   # "finished": the others reuse it
            with open(log_file, "a") as f:
                f.write("trained\n")
            time.sleep(hold_s)
            run_dir.mkdir(exist_ok=True)
            (run_dir / "done").touch()


def _crash_holding(run_dir):
    from skinlesion.resume import run_lock

    with run_lock(run_dir):
        os._exit(1)                                           # dies holding the lock


def test_a_shared_run_is_trained_once_and_a_crashed_holder_frees_it(tmp_path):
    ctx = mp.get_context("fork")
    run_dir, log_file = tmp_path / "stage1" / "main", tmp_path / "log"
    crashed = ctx.Process(target=_crash_holding, args=(run_dir,))
    crashed.start()
    crashed.join(timeout=30)
    assert crashed.exitcode == 1
    jobs = [ctx.Process(target=_train_once, args=(run_dir, log_file, 0.5)) for _ in range(3)]
    for p in jobs:
        p.start()
    for p in jobs:
        p.join(timeout=60)
    assert [p.exitcode for p in jobs] == [0, 0, 0]
    assert log_file.read_text() == "trained\n"               # one job trained it, two reused it


@pytest.mark.parametrize("how", ["ctrl_c", pytest.param("sigkill", marks=[pytest.mark.slow, pytest.mark.timeout(900)])])
def test_a_chapter5_run_stopped_inside_its_weight_averaging_window_resumes_exactly(how, derm7pt_root, tmp_path):
    """AMMFM with weight averaging over the last two of four epochs, stopped when the fourth starts (one state
    averaged) — by Ctrl-C in process, or by a real SIGKILL to a subprocess (slow) — and started again: the resumed run
    continues the running average and ends with the uninterrupted run's predictions."""
    point = ["model=ammfm", "data=derm7pt", f"data.root={derm7pt_root}", "backbone=test_resnet",
             "structure.clinic_backbone.name=test_efficientnet", "trainer.max_epochs=4", "callbacks.swa.last_epochs=2",
             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16", "tta=none"]
    plain = train(point, tmp_path / "plain")
    stop = [*point, *signal_at_epoch_2("SIGINT" if how == "ctrl_c" else "SIGKILL", tmp_path / "once")]
    stop[stop.index("+callbacks.stop.epoch=2")] = "+callbacks.stop.epoch=3"
    stopped = tmp_path / "stopped"
    if how == "ctrl_c":
        with pytest.raises(SystemExit):
            train(stop, stopped)
    else:
        from skinlesion.testing import TINY
        command = ["train.py", *TINY, *stop, f"hydra.run.dir={stopped}"]
        assert python(*command, timeout=600).returncode == -9
    ckpt = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)
    swa_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("WeightAveraging"))
    assert ckpt["epoch"] == 2 and swa_state["n_averaged"] == 1      # inside the window: one state averaged so far
    if how == "ctrl_c":
        train(stop, stopped)
    else:
        resumed = python(*command, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = [json.loads((d / "metrics.json").read_text()) for d in (plain, stopped)]
    assert runs[0]["weight_averaging"] == runs[1]["weight_averaging"] == {"states": 2, "last_epochs": 2}
    assert run_record(stopped)["attempts"][-1]["resumed_from"]["epochs_done"] == 3
    for part in ("val", "test"):
        a, b = (pd.read_parquet(d / "predictions" / f"{part}.parquet") for d in (plain, stopped))
        probs = [c for c in a.columns if c.startswith("prob/")]
        assert list(a["case_id"]) == list(b["case_id"])
        assert np.abs(a[probs].to_numpy() - b[probs].to_numpy()).max() < 1e-5
    fused = [pd.read_parquet(d / "search" / "test_fused.parquet") for d in (plain, stopped)]
    assert np.abs(fused[0].filter(like="prob/").to_numpy() - fused[1].filter(like="prob/").to_numpy()).max() < 1e-5


def test_resume_never_trains_afresh_in_a_used_directory(resumed_in_process, pad_root, tmp_path):
    import shutil

    run_dir = shutil.copytree(resumed_in_process[0], tmp_path / "again")   # a completed run
    earlier = pd.read_csv(run_dir / "csv" / "metrics.csv")                 # ... with an earlier run's log set aside
    earlier.assign(epoch=earlier["epoch"] + 10).to_csv(run_dir / ".csv.before-resume.csv", index=False)
    train([*four_epochs(pad_root, tmp_path / "cache"), "resume=never"], run_dir, tiny=False)
    record = run_record(run_dir)
    assert record["status"] == "completed" and len(record["attempts"]) == 1
    assert "resumed_from" not in record["attempts"][0]
    assert epochs_logged(run_dir) == [0, 1, 2, 3]             # trained from the first epoch


# --- checkpoints written whole, and a truncated one never loses the run ---------------------------------------
KILL_WHILE_WRITING = """
import io, os, signal, sys
import torch

real_save = torch.save


def save(obj, f, *args, **kwargs):
    # the third last.ckpt (epoch 2) is half written when the process is killed, as by the cluster mid-copy
    if "last.ckpt" in str(getattr(f, "name", "")) and isinstance(obj, dict) and obj.get("epoch") == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
sys.argv = ["train.py", *sys.argv[1:]]
from skinlesion.train import main

main()
"""


def test_a_kill_while_last_ckpt_is_written_leaves_the_previous_one_and_the_rerun_resumes(resumed_in_process,
                                                                                         pad_root, tmp_path):
    """``$TMPDIR`` on another filesystem (``/dev/shm``, a tmpfs), as on cluster nodes; the process is killed half-way
    through writing ``last.ckpt`` after its third epoch. The previous ``last.ckpt`` is intact, and the same command
    resumes from it to the uninterrupted run's results."""
    plain = resumed_in_process[0]
    script = tmp_path / "kill_while_writing.py"
    script.write_text(KILL_WHILE_WRITING)
    other_fs = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path / "tmp"
    env = {**os.environ, "TMPDIR": str(other_fs)}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(script), *four_epochs(pad_root, tmp_path / "cache"), f"hydra.run.dir={run_dir}"]
    killed = run_command(cmd, timeout=300, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1   # the previous one
    resumed = run_command([sys.executable, "train.py", *cmd[2:]], timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_record(run_dir)["attempts"][-1]["resumed_from"]["epochs_done"] == 2
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))            # the half-written file is cleared away
    _same_results(run_dir, plain)


def test_a_truncated_last_ckpt_falls_back_to_the_previous_good_checkpoint(resumed_in_process, pad_root, tmp_path,
                                                                          caplog):
    plain = resumed_in_process[0]
    run_dir = tmp_path / "run"
    stop = [*four_epochs(pad_root, tmp_path / "cache"), *signal_at_epoch_2("SIGINT", tmp_path / "once")]
    with pytest.raises(SystemExit):
        train(stop, run_dir, tiny=False)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])                          # truncated elsewhere (a full disk, a copy)
    with caplog.at_level("WARNING", logger="skinlesion"):
        train(stop, run_dir, tiny=False)
    warned = [r.getMessage() for r in caplog.records if "unreadable; resuming from" in r.getMessage()]
    assert len(warned) == 1 and "last.ckpt (" in warned[0]
    assert run_record(run_dir)["status"] == "completed"
    assert final_scores(run_dir) == final_scores(plain)
    for part in ("val", "test"):
        a, b = (pd.read_parquet(d / "predictions" / f"{part}.parquet") for d in (run_dir, plain))
        cols = [c for c in a.columns if c.startswith("prob/")]
        assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-5


def test_a_directory_whose_checkpoints_are_all_unreadable_is_an_error_not_a_fresh_start(pad_root, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match=r"no readable checkpoint \(last.ckpt \(.*\)\); pass ckpt_path="):
        train([f"data.root={pad_root}"], run_dir)
    assert not (run_dir / "run.json").exists()


def test_checkpoints_are_written_beside_their_target_and_renamed(tmp_path, monkeypatch):
    """Nothing is staged under $TMPDIR: the only files ever created are in the checkpoint's own directory."""
    from skinlesion.checkpoints import AtomicCheckpointIO

    staged = tmp_path / "elsewhere"
    staged.mkdir()
    monkeypatch.setenv("TMPDIR", str(staged))
    monkeypatch.setattr(tempfile, "tempdir", None)
    target = tmp_path / "ckpts" / "last.ckpt"
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append((Path(a), Path(b))), real_replace(a, b))[1])
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 0
    assert seen == [(seen[0][0], target)] and seen[0][0].parent == target.parent
    assert not list(staged.iterdir()) and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
