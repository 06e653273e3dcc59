"""Real SLURM jobs of the project (``launcher=slurm``, submitit) on a one-node cluster, on the CPU: a job that hits
its time limit is requeued and resumes to the same predictions; ``scontrol requeue`` and ``scancel`` mid-run; a
2-task DDP point; a time limit that may not be requeued (``max_num_timeout=0``).

All cases are submitted at once when the first test asks for them (each its own sweep directory, one tiny job per
sweep), so the whole module takes about as long as its slowest case. submitit's launcher is never waited for: without
accounting it polls ``sacct`` in vain and, after a ``scancel``, never learns that the job ended. Each case watches
its job (``scontrol show job``) and its ``run.json`` until the job has left the queue for good, then kills the
launcher's process group.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skinlesion.testing import TINY, four_epochs, run_command, run_record, started

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

# What every case asks of the cluster: one CPU, 1 GB, partition debug, no GPU. launcher=slurm composes the GPU
# trainer; these jobs train on the CPU in full precision.
SLURM = ["launcher=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true", "hydra.launcher.gpus_per_node=null",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.partition=debug"]
# SLURM checks time limits every 30 s, and sends --signal=USR2@S in the first check that finds the job within
# S + 30 s of its end: with a 1-minute limit and S=1 the notice comes 30-60 s after the job starts and the kill at
# 60-90 s, so a job that works longer than a minute is always requeued first.
TIME_LIMITED = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=1"]
UNLIMITED = ["hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30"]


def pause(seconds: float) -> list[str]:
    return ["+callbacks.pause._target_=skinlesion.testing.PauseEachEpoch", f"+callbacks.pause.seconds={seconds}"]


# A point that works about 80 s (8 epochs of ~10 s): longer than the 1-minute limit, hence requeued at least once;
# each attempt gets through an epoch or more before its notice, so the run always gets further
LONG = ["trainer.max_epochs=8", *pause(8)]
# About 35 s: long enough to act on the job once its first epoch is saved
SHORT = ["trainer.max_epochs=4", *pause(6)]
TERMINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
            "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}


def job_state(job_id: str) -> str:
    """The job's state in slurmctld (``GONE`` once it has been purged, MinJobAge after its end)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    m = re.search(r"JobState=(\S+)", proc.stdout)
    return m.group(1) if m else "GONE"


class Case:
    """One sweep of one point submitted with ``launcher=slurm``: its launcher runs in a process group of its own, a
    thread watches the job (and acts on it: ``scontrol requeue``, ``scancel``) until it has ended for good."""

    def __init__(self, name: str, tmp: Path, overrides: list[str], act: str | None = None, deadline_s: float = 600):
        self.name, self.act, self.deadline_s = name, act, deadline_s
        self.sweep = tmp / name / "sweep"
        self.run = self.sweep / "0"
        self.overrides = [*overrides, f"hydra.sweep.dir={self.sweep}"]
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.seconds: float | None = None

    @property
    def job_id(self) -> str | None:
        ids = sorted((p.name for p in (self.sweep / ".submitit").glob("*") if p.name[0].isdigit()), key=len)
        return ids[0] if ids else None

    def record(self) -> dict | None:
        try:
            return run_record(self.run)
        except (OSError, ValueError):
            return None

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:.0f}s {what}")

    def start(self) -> Case:
        self.sweep.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "train.py", "-m", *self.overrides]
        self.t0 = time.monotonic()
        self._log = open(self.sweep.parent / "launcher.log", "w")   # noqa: SIM115  (closed by the thread)
        self._ctx = started(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._proc = self._ctx.__enter__()
        threading.Thread(target=self._watch, name=self.name, daemon=True).start()
        return self

    def _watch(self) -> None:
        try:
            self._follow()
        except BaseException as e:   # noqa: BLE001  (reported by the test)
            self.error = e
        finally:
            self.seconds = time.monotonic() - self.t0
            self._stop()
            self.finished.set()

    def _follow(self) -> None:
        acted, seen, gone_since = False, "", None
        while time.monotonic() - self.t0 < self.deadline_s:
            time.sleep(1)
            job = self.job_id
            if job is None:
                if self._proc.poll() is not None:
                    raise AssertionError(f"the launcher exited ({self._proc.returncode}) without submitting a job")
                continue
            state = job_state(job)
            record = self.record() or {}
            status = record.get("status")
            if f"{state}/{status}" != seen:
                seen = f"{state}/{status}"
                self.note(f"job {job} {state}, run.json {status}")
            if (self.act and not acted and state == "RUNNING" and status == "running"
                    and (self.run / "checkpoints" / "last.ckpt").is_file()):
                cmd = ["scontrol", "requeue", job] if self.act == "requeue" else ["scancel", job]
                subprocess.run(cmd, check=True, timeout=30)
                acted = True
                self.note(" ".join(cmd))
            if state in TERMINAL or state == "GONE":
                # the job has ended for good (a requeued job is PENDING or REQUEUED, never one of these)
                gone_since = gone_since or time.monotonic()
                if status not in (None, "running") or time.monotonic() - gone_since > 15:
                    return
            else:
                gone_since = None
        raise AssertionError(f"{self.name}: no outcome within {self.deadline_s:.0f} s ({'; '.join(self.events)})")

    def _stop(self) -> None:
        job = self.job_id
        if job is not None and job_state(job) not in TERMINAL | {"GONE"}:
            subprocess.run(["scancel", job], timeout=30)   # leave no job behind a failed case
        self._ctx.__exit__(None, None, None)                # kills the launcher's process group
        self._log.close()

    def wait(self, request) -> dict:
        """The job's final ``run.json``; the case's time and attempts go to the closing summary."""
        self.finished.wait(self.deadline_s + 120)
        record = self.record() or {}
        logs = self.logs()
        (self.sweep.parent / "events.txt").write_text("\n".join(self.events) + "\n")
        request.node.user_properties += [("case", self.name), ("seconds", self.seconds or 0),
                                         ("attempts", attempts_line(record)),
                                         ("note", f"signals: {signals_seen(logs) or 'none logged'}")]
        if self.error is not None:
            raise AssertionError(f"{self.error}\nlauncher log: {self.logs()[-3000:]}")
        return record

    def why(self, record: dict) -> str:
        """The run's attempts and the last error lines of its logs, for a failed assertion."""
        errors = [ln for ln in self.logs().splitlines() if "[ERROR]" in ln or "Error:" in ln or "error: ***" in ln]
        return attempts_line(record) + "".join(f"\n  {ln[:300]}" for ln in errors[-6:])

    def logs(self) -> str:
        """The launcher's output, submitit's job logs (every attempt, every task) and the run's train.log."""
        parts = [(self.sweep.parent / "launcher.log")]
        parts += sorted((self.sweep / ".submitit").rglob("*_log.*"))
        parts += [self.run / "train.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.is_file())


def signals_seen(logs: str) -> str:
    """What the job's processes logged about signals, in time order: submitit's caught/bypassed signals, its
    requeues, the run's ``interrupted by``."""
    pattern = re.compile(r"(?:Caught|Bypassing) signal (SIG\w+)|interrupted by (SIG\w+)|(Requeued job)|"
                         r"(Job not requeued)")
    stamp = re.compile(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)[,.](\d+)")
    events = {}
    for line in logs.splitlines():
        m, t = pattern.search(line), stamp.search(line)
        if m and t:
            what = (m.group(1) + (" (bypassed)" if "Bypassing" in line else "") if m.group(1)
                    else f"run: interrupted by {m.group(2)}" if m.group(2) else m.group(3) or m.group(4))
            events.setdefault((*t.groups(), what), what)   # submitit logs each line twice
    out: list[str] = []
    for _, what in sorted(events.items()):
        if out and out[-1].split(" x")[0] == what:   # a run of one line as "LINE xN"
            n = int(out[-1].rsplit(" x", 1)[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{what} x{n}"
        else:
            out.append(what)
    return " > ".join(out)


def attempts_line(record: dict) -> str:
    out = []
    for a in record.get("attempts", []):
        bit = str(a.get("outcome"))
        if a.get("resumed_from"):
            bit += f" (resumed after {a['resumed_from'].get('epochs_done')} epochs)"
        if a.get("interrupted_at"):
            bit += f" (at epoch {a['interrupted_at'].get('epoch')})"
        out.append(bit)
    return f"{record.get('status')}: [{', '.join(out)}]" + (f" error={record['error']!r}" if record.get("error") else "")


@pytest.fixture(scope="session")
def cases(pad_root, tmp_path_factory) -> dict[str, Case]:
    """Every case submitted at once, plus the unlimited reference run of the time-limited point (a plain
    ``train.py`` in a process of its own)."""
    tmp = tmp_path_factory.mktemp("slurm")

    def point(name: str) -> list[str]:
        return four_epochs(pad_root, tmp / name / "cache")

    quick = [o for o in TINY if o != "trainer=cpu"]
    all_cases = {
        "a": Case("a_time_limit_requeue", tmp, [*point("a"), *LONG, *SLURM, *TIME_LIMITED,
                                                "hydra.launcher.max_num_timeout=5"]),
        "b": Case("b_scontrol_requeue", tmp, [*point("b"), *SHORT, *SLURM, *UNLIMITED], act="requeue"),
        "c": Case("c_scancel", tmp, [*point("c"), *SHORT, *SLURM, *UNLIMITED], act="cancel"),
        "d": Case("d_ddp_two_tasks", tmp, [f"data.root={pad_root}", *quick, "trainer=ddp", "trainer.accelerator=cpu",
                                           "trainer.devices=2", "trainer.sync_batchnorm=false",
                                           "trainer.precision=32-true", "trainer.max_epochs=2",
                                           f"paths.cache_dir={tmp / 'd' / 'cache'}", *SLURM, *UNLIMITED]),
        "e": Case("e_no_timeout_requeue", tmp, [*point("e"), *LONG, *SLURM, *TIME_LIMITED,
                                                "hydra.launcher.max_num_timeout=0"]),
    }
    for case in all_cases.values():
        case.start()
    reference = tmp / "a_reference" / "run"
    reference.parent.mkdir(parents=True)
    ref_log = open(reference.parent / "train.out", "w")   # noqa: SIM115
    ref_ctx = started([sys.executable, "train.py", *point("a_reference"), *LONG, f"hydra.run.dir={reference}"],
                      stdout=ref_log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ref_proc = ref_ctx.__enter__()
    all_cases["a"].reference = (reference, ref_proc, ref_ctx, ref_log)
    yield all_cases
    for case in all_cases.values():
        if not case.finished.is_set():
            case.deadline_s = 0   # let its thread stop the job and the launcher
            case.finished.wait(60)
    ref_ctx.__exit__(None, None, None)
    ref_log.close()


def _same_predictions(run: Path, reference: Path) -> None:
    import numpy as np
    import pandas as pd

    got = pd.read_parquet(run / "predictions" / "test.parquet")
    want = pd.read_parquet(reference / "predictions" / "test.parquet")
    assert got["case_id"].tolist() == want["case_id"].tolist()
    probs = [c for c in want.columns if c.startswith("prob/")]
    assert probs and [c for c in got.columns if c.startswith("prob/")] == probs
    diff = float(np.abs(got[probs].to_numpy(float) - want[probs].to_numpy(float)).max())
    assert diff < 1e-5, f"test predictions differ from the unlimited run's by {diff:.2e}"


def test_a_job_at_its_time_limit_is_requeued_and_resumes_to_the_same_predictions(cases, request):
    case = cases["a"]
    record = case.wait(request)
    logs = case.logs()
    attempts = record["attempts"]
    assert record["status"] == "completed", case.why(record)
    assert attempts[0]["outcome"] == "requeued"
    assert attempts[-1]["outcome"] == "completed" and attempts[-1].get("resumed_from")
    assert all(a["outcome"] == "requeued" for a in attempts[:-1])
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
    reference, proc, _, _ = case.reference
    proc.wait(timeout=300)
    assert run_record(reference)["status"] == "completed"
    _same_predictions(case.run, reference)


def test_scontrol_requeue_mid_run_comes_back_and_resumes(cases, request):
    case = cases["b"]
    record = case.wait(request)
    assert any("scontrol requeue" in e for e in case.events), case.events
    assert record["status"] == "completed", case.why(record)
    assert len(record["attempts"]) >= 2
    assert record["attempts"][0]["outcome"] == "requeued", attempts_line(record)   # SLURM counted the restart
    assert record["attempts"][-1].get("resumed_from"), attempts_line(record)
    assert (case.run / "predictions" / "test.parquet").is_file()


def test_scancel_mid_run_is_recorded_as_interrupted(cases, request):
    case = cases["c"]
    record = case.wait(request)
    assert any("scancel" in e for e in case.events), case.events
    assert record["status"] == "interrupted", case.why(record)
    assert record["error"] == "interrupted by SIGTERM"
    assert record["attempts"][-1]["outcome"] == "interrupted"
    assert job_state(case.job_id) in ("CANCELLED", "GONE")


def test_a_two_task_ddp_point_runs_once(cases, request):
    case = cases["d"]
    record = case.wait(request)
    assert record["status"] == "completed", case.why(record)
    assert record["world_size"] == 2 and len(record["attempts"]) == 1
    ranks = re.findall(r"job .*: rank (\d+), pid \d+", (case.run / "train.log").read_text())
    assert sorted(ranks) == ["0", "1"], ranks                   # each rank ran this job once
    submission = next((case.sweep / ".submitit").rglob("*_submission.sh")).read_text()
    assert "--ntasks-per-node=2" in submission and "--gpus-per-node" not in submission


def test_a_time_limit_without_requeues_left_is_recorded_as_timed_out(cases, request):
    case = cases["e"]
    record = case.wait(request)
    assert record["status"] == "timed_out", case.why(record)
    assert "max_num_timeout" in (record.get("error") or "")
    assert len(record["attempts"]) == 1 and record["attempts"][0]["outcome"] == "timed_out"
    assert "Requeued job" not in case.logs()


# --- one run directory, one process; DDP ranks a sweep starts itself inside an allocation --------------------------
def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(1)


def _queued(sweep: Path) -> list[str]:
    jobs = {p.name.split("_")[0] for p in (sweep / ".submitit").glob("*") if p.name[0].isdigit()}
    return [j for j in jobs if job_state(j) not in TERMINAL | {"GONE"}]


def test_a_rerun_of_a_running_slurm_sweep_starts_no_second_process_in_its_run_directory(pad_root, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", *four_epochs(pad_root, tmp_path / "cache"), *SHORT, *SLURM, *UNLIMITED,
           f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log1, open(tmp_path / "second.log", "w") as log2:
        with started(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env):
            _wait_for(lambda: (sweep / "0" / "run.json").is_file() and run_record(sweep / "0")["status"] == "running",
                      300, "the first sweep's job running")
            with started(cmd, stdout=log2, stderr=subprocess.STDOUT, env=env):   # the same command, meanwhile
                _wait_for(lambda: len(list((sweep / ".submitit").rglob("*_submission.sh"))) >= 2, 120, "a 2nd job")
                _wait_for(lambda: not _queued(sweep), 600, "both jobs ended")
    record = run_record(sweep / "0")
    assert record["status"] == "completed" and len(record["attempts"]) == 1
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "is in use by host" in logs and "not started here" in logs


def test_a_local_gpus_ddp_sweep_inside_salloc_starts_its_own_ranks(pad_root, tmp_path):
    """``salloc -n1`` gives the sweep SLURM's variables but no ``srun`` step: its DDP job starts its own two ranks."""
    sweep = tmp_path / "sweep"
    quick = [o for o in TINY if o != "trainer=cpu"]
    cmd = ["salloc", "-n1", "-p", "debug", "-t", "10", sys.executable, "train.py", "-m", f"data.root={pad_root}",
           *quick, "launcher=local_gpus", "gpu_pool=[]", "cpu_jobs=1", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.sync_batchnorm=false", "trainer.precision=32-true",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    proc = run_command(cmd, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = run_record(sweep / "0")
    assert record["status"] == "completed" and record["world_size"] == 2
    ranks = re.findall(r"job .*: rank (\d+), pid \d+", (sweep / "0" / "train.log").read_text())
    assert sorted(ranks) == ["0", "1"]
