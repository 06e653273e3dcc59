"""One lock for everything jobs share (:mod:`skinlesion.locks`): who holds it is said, a dead holder's lock is taken
over, a holder on another node counts while its heartbeat is fresh, and where ``flock`` does not work the lock
falls back to exclusive lock files. Then the run directory: two processes started on one directory, and a sweep
rerun while one of its jobs still runs."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from skinlesion import locks
from skinlesion.testing import TINY, python, run_record, started, sweep

HOLD = """
import sys, time
from skinlesion.locks import FileLock
lock = FileLock(sys.argv[1]).acquire(blocking=False)
print("held", flush=True)
time.sleep(600)
"""


def _holder(path):
    """A process that holds the lock ``path`` until it is killed (the context kills its group)."""
    return started([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE)


def test_a_held_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    with _holder(path) as proc:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(locks.Held) as held:
            locks.FileLock(path).acquire(blocking=False)
        assert held.value.holder["pid"] == proc.pid and held.value.holder["host"] == os.uname().nodename
        assert f"pid {proc.pid}" in str(held.value)
        os.kill(proc.pid, signal.SIGKILL)                      # dies holding it
        proc.wait(timeout=30)
        lock = locks.FileLock(path).acquire(blocking=False)    # the operating system dropped its flock
        assert json.loads(path.read_text())["pid"] == os.getpid()
        lock.release()


def test_a_holder_on_another_node_counts_until_its_heartbeat_is_stale(tmp_path, monkeypatch):
    """A node-local ``flock`` (Lustre ``localflock``) lets this node take a lock another node holds: the holder
    record and its heartbeat keep the two apart."""
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "2026-01-01T00:00:00"}))
    with pytest.raises(locks.Held, match="host node-17, pid 4242"):
        locks.FileLock(path).acquire(blocking=False)
    old = time.time() - locks.STALE_S - 5
    os.utime(path, (old, old))                                 # no heartbeat for longer than STALE_S
    lock = locks.FileLock(path).acquire(blocking=False)
    assert json.loads(path.read_text())["host"] == os.uname().nodename
    lock.release()


def test_without_flock_exclusive_lock_files_with_a_heartbeat_take_over(tmp_path, monkeypatch, caplog):
    """``flock`` raising ENOLCK, as on a Lustre ``noflock`` mount: said once, and the locks still exclude."""
    def no_flock(f, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    monkeypatch.setattr(locks, "_said_fallback", False)
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    with caplog.at_level("WARNING", logger="skinlesion.locks"):
        first = locks.FileLock(a).acquire(blocking=False)
        with pytest.raises(locks.Held, match=f"pid {os.getpid()}"):
            locks.FileLock(a).acquire(blocking=False)
        other = locks.FileLock(b).acquire(blocking=False)
    assert len([r for r in caplog.records if "flock does not work" in r.getMessage()]) == 1
    assert (tmp_path / "a.lock.held").is_file()
    first.release()
    other.release()
    assert not (tmp_path / "a.lock.held").exists()
    # a holder on this host whose process is gone, and a holder elsewhere whose heartbeat stopped: taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "a.lock.held").write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    locks.FileLock(a).acquire(blocking=False).release()
    (tmp_path / "b.lock.held").write_text(json.dumps({"host": "node-17", "pid": 1}))
    with pytest.raises(locks.Held, match="node-17"):
        locks.FileLock(b).acquire(blocking=False)
    old = time.time() - locks.STALE_S - 5
    os.utime(tmp_path / "b.lock.held", (old, old))
    locks.FileLock(b).acquire(blocking=False).release()


def test_a_waiter_says_once_who_it_waits_for(tmp_path, caplog):
    path = tmp_path / "store.lock"
    with _holder(path) as proc:
        assert proc.stdout.readline().strip() == "held"
        import threading
        threading.Timer(1.0, lambda: os.kill(proc.pid, signal.SIGKILL)).start()
        with caplog.at_level("INFO", logger="skinlesion.locks"):
            with locks.hold(path, "image store lock", wait=True):
                pass
    said = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("waiting for the image store lock held by host ")
    assert f"pid {proc.pid} (since " in said[0]


# --- the run directory --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_process_on_a_running_run(pad_root, tmp_path_factory):
    """A training run from the command line, and the same command started again in its directory while it runs:
    (run dir, the first process's pid, its return code and output, the second's result)."""
    base = tmp_path_factory.mktemp("held_run")
    run, release = base / "run", base / "release"
    # The first run holds its first epoch until the second process has been answered: however slowly a loaded
    # machine starts the second interpreter, the first is still running when it asks.
    cmd = ["train.py", *TINY, f"data.root={pad_root}", "model=meta_only", "tta=none", "trainer.max_epochs=2",
           "+callbacks.pause._target_=skinlesion.testing.PauseEachEpoch", "+callbacks.pause.seconds=240",
           f"+callbacks.pause.until={release}", f"hydra.run.dir={run}"]
    with started([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as first:
        deadline = time.monotonic() + 120
        while not (run / "run.json").is_file() or run_record(run)["status"] != "running":
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        try:
            second = python(*cmd, timeout=120)
        finally:
            release.touch()
        out, err = first.communicate(timeout=300)
    return run, first.pid, first.returncode, out, second


def test_a_second_process_on_a_running_run_directory_says_who_holds_it_and_loses_nothing(
        second_process_on_a_running_run):
    run, pid, returncode, _, second = second_process_on_a_running_run
    assert second.returncode == 1
    said = [line for line in (second.stdout + second.stderr).splitlines() if "is in use by" in line]
    assert said and f"pid {pid}" in said[-1] and "Traceback" not in second.stderr
    assert returncode == 0
    record = run_record(run)
    assert record["status"] == "completed" and len(record["attempts"]) == 1
    assert record["attempts"][0]["pid"] == pid


def test_a_run_from_the_command_line_ends_its_output_with_the_results_table(second_process_on_a_running_run):
    """The table is the last thing its user reads, after the run's later steps (missing-input robustness) logged."""
    lines = second_process_on_a_running_run[3].rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Results ("))
    assert lines[start + 1].split()[:2] == ["task", "chance"]
    assert len(lines) - start == 4 and lines[-1].split()[0] == "diagnostic"    # one task: nothing after its row
    assert any("missing-input robustness" in line for line in lines[:start])


def test_a_sweep_rerun_skips_the_job_that_still_runs(pad_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    (out / "0").mkdir(parents=True)
    point = [*TINY, f"data.root={pad_root}", "model=meta_only", "tta=none", "data.fold=0,1", f"hydra.sweep.dir={out}"]
    with _holder(out / "0" / ".run.lock") as holder:           # job 0 still runs, in another process
        assert holder.stdout.readline().strip() == "held"
        sweep(point)
    assert not (out / "0" / "run.json").exists()                     # nothing of job 0 was touched
    assert run_record(out / "1")["status"] == "completed"
    output = capsys.readouterr()
    said = [line for line in (output.out + output.err).splitlines() if "is in use by" in line]
    assert len(said) == 1 and f"pid {holder.pid}" in said[0]
