"""Cluster scale on CPU: local sweeps on a pool of (simulated) GPUs, DDP inside sweeps, the SLURM launcher's
resources, and a preempted job requeued by submitit that resumes where it stopped."""
from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from skinlesion.launch import GpuSlots, concurrent_jobs, devices_per_job
from skinlesion.testing import (
    TINY,
    compose_cfg,
    epochs_logged,
    final_scores,
    four_epochs,
    python,
    run_record,
    signal_at_epoch_2,
    sweep,
    train,
)

QUICK = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "tta=none"]


def _sweep(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = python("train.py", "-m", *args, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _intervals(runs: list[Path]) -> list[tuple[float, float, str]]:
    out = []
    for run in runs:
        attempt = run_record(run)["attempts"][-1]
        gpus = json.loads((run / "environment.json").read_text())["cuda_visible_devices"]
        out.append((datetime.fromisoformat(attempt["started"]).timestamp(),
                    datetime.fromisoformat(attempt["finished"]).timestamp(), gpus))
    return out


# --- 1. local sweeps on a GPU pool ----------------------------------------------------------------------------

def _hold(lock_dir, pool, need, hold_s, queue):
    with GpuSlots(lock_dir, pool).hold(need, poll_s=0.02) as held:
        gpus = [gpu for gpu, _ in held]
        start = time.monotonic()
        time.sleep(hold_s)
        queue.put((start, time.monotonic(), tuple(gpus)))


@pytest.mark.parametrize("pool,need,jobs", [(["0", "1", "2"], 1, 7), (["0", "1", "2", "3"], 2, 5)])
def test_gpu_slots_never_share_a_gpu_and_cap_concurrency(tmp_path, pool, need, jobs):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(tmp_path, pool, need, 0.3, queue)) for _ in range(jobs)]
    for p in procs:
        p.start()
    spans = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(len(set(g)) == need and set(g) <= set(pool) for _, _, g in spans)
    for i, (s1, e1, g1) in enumerate(spans):
        overlapping = [g for j, (s2, e2, g) in enumerate(spans) if j != i and s2 < e1 and s1 < e2]
        assert all(not set(g1) & set(g) for g in overlapping)          # concurrent jobs hold distinct GPUs
    # as many jobs at once as the pool holds, never more
    assert max(sum(1 for s, e, _ in spans if s <= t < e) for t, _, _ in spans) == len(pool) // need


def test_concurrency_follows_the_pool_and_the_devices_per_job():
    assert concurrent_jobs([0, 1, 2, 3], 1) == 4
    assert concurrent_jobs([0, 1, 2, 3], 2) == 2
    assert concurrent_jobs(["0", "1", "2"], 2) == 1
    assert concurrent_jobs([0, 1], "auto") == 1
    assert devices_per_job([0, 3]) == 2 and devices_per_job(-1) is None
    with pytest.raises(Exception, match="each job needs 4 GPUs, but gpu_pool has 2"):
        concurrent_jobs([0, 1], 4)


def test_without_a_gpu_the_local_launcher_runs_cpu_jobs_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert concurrent_jobs("all", 1, cpu_jobs=3) == 3
    cfg = compose_cfg(["launcher=local_gpus", "cpu_jobs=3"], tmp_path, with_hydra=True)
    assert OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["n_jobs"] == 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_sweep_without_a_gpu_runs_jobs_in_parallel_on_the_cpu(pad_root, tmp_path):
    sweep = tmp_path / "sweep"
    _sweep(["launcher=local_gpus", "gpu_pool=[]", "cpu_jobs=2", f"data.root={pad_root}", *QUICK, "data.fold=0,1",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path}/cache"])
    runs = [sweep / str(i) for i in range(2)]
    assert all(run_record(r)["status"] == "completed" for r in runs)
    (s0, e0, _), (s1, e1, _) = _intervals(runs)
    assert s0 < e1 and s1 < e0                                  # the two jobs ran at the same time


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_gpus_sweep_runs_each_job_on_its_own_gpus(pad_root, tmp_path):
    """Three jobs on a simulated pool of two GPUs: at most two at a time, never two on one GPU."""
    sweep = tmp_path / "sweep"
    _sweep(["launcher=local_gpus", "gpu_pool=[0,1]", f"data.root={pad_root}", *QUICK, "data.fold=0,1,2",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path}/cache", f"gpu_lock_dir={tmp_path}/gpus"])
    runs = [sweep / str(i) for i in range(3)]
    assert all(run_record(r)["status"] == "completed" for r in runs)
    spans = _intervals(runs)
    assert all(g in ("0", "1") for _, _, g in spans)
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlaps, "two jobs should have run at the same time"
    assert all(a[2] != b[2] for a, b in overlaps)
    assert max(sum(1 for s, e, _ in spans if s <= t < e) for t, _, _ in spans) <= 2


# --- 2. DDP inside sweeps; SLURM resources ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_inside_a_sweep_runs_each_point_once(pad_root, tmp_path):
    sweep, stray = tmp_path / "sweep", tmp_path / "stray"
    quick = [o for o in QUICK if o != "trainer=cpu"]                  # the trainer preset under test is ddp
    _sweep(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.sync_batchnorm=false", f"data.root={pad_root}", *quick, "data.fold=0,1",
            f"hydra.sweep.dir={sweep}", f"hydra.run.dir={stray}", f"paths.cache_dir={tmp_path}/cache"])
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "1", "multirun.yaml"]
    assert not stray.exists()
    for job in ("0", "1"):
        record = run_record(sweep / job)
        assert record["status"] == "completed" and record["world_size"] == 2
        ranks = re.findall(r"job .*: rank (\d+), pid \d+", (sweep / job / "train.log").read_text())
        assert sorted(ranks) == ["0", "1"]                    # each rank ran this job once, and nothing else
        folds = pd.read_csv(sweep / job / "folds.csv")
        assert len(pd.read_parquet(sweep / job / "predictions" / "test.parquet")) == (folds.partition == "test").sum()


def test_jobs_that_start_ranks_run_as_a_process_of_their_own(monkeypatch):
    """The decision behind DDP inside sweeps (the slow test above runs it): a job whose trainer launches ranks by
    re-running the command line gets a command line of its own; ranks a cluster started do not."""
    from skinlesion.launch import _starts_processes

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    ddp = OmegaConf.create({"strategy": "ddp", "devices": 2, "num_nodes": 1})
    assert _starts_processes(ddp)
    assert _starts_processes(OmegaConf.create({"strategy": "auto", "devices": 4}))
    assert not _starts_processes(OmegaConf.create({"strategy": "auto", "devices": 1}))
    assert not _starts_processes(OmegaConf.create({"strategy": "ddp_spawn", "devices": 2}))
    monkeypatch.setenv("LOCAL_RANK", "1")                     # a rank Lightning started: runs in place
    assert not _starts_processes(ddp)


def test_fusionm4net_sweep_jobs_take_gpus_as_train_py_jobs_do(tmp_path, monkeypatch):
    """fusionm4net.py -m with a GPU pool runs each seed as a process of its own (python -m skinlesion.fusionm4net.cli,
    which takes its GPUs from the pool), never the pipeline inside the sweep's process on whatever GPU it sees."""
    from skinlesion import launch
    from skinlesion.fusionm4net import pipeline

    started = []

    def job(cfg, module):
        started.append((int(cfg.seed), module))
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"reported": "p3", "main_metric": "avg_acc",
                                                      "val": {"p3": {"avg_acc": 0.5}}}))
        return 0

    monkeypatch.setattr(launch, "run_job_process", job)
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: pytest.fail("the pipeline ran in the sweep's process"))
    sweep(["seed=1,2", "gpu_pool=[0,1]", f"hydra.sweep.dir={tmp_path / 'sweep'}"], entry="fusionm4net")
    assert sorted(started) == [(1, "skinlesion.fusionm4net.cli"), (2, "skinlesion.fusionm4net.cli")]


def test_a_requeued_attempt_is_recorded_and_the_next_one_resumes(pad_root, tmp_path, monkeypatch):
    """The run lifecycle of a requeue, in process (tests/test_signals.py runs real submitit jobs): submitit's handler
    of the requeue signal requeues the job and exits with SystemExit; the run says so, and the next attempt continues
    from the last checkpoint."""
    import signal

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")

    def submitit_requeues(signum, frame):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_requeues)
    try:
        run = tmp_path / "run"
        stop = [*four_epochs(pad_root, tmp_path / "cache"), *signal_at_epoch_2("SIGUSR2", tmp_path / "once")]
        with pytest.raises(SystemExit):
            train(stop, run, tiny=False)
        record = run_record(run)
        assert record["status"] == "requeued" and record["interrupted_at"]["epoch"] == 2
        train(stop, run, tiny=False)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    record = run_record(run)
    assert record["status"] == "completed"
    first, second = record["attempts"]
    assert first["outcome"] == "requeued" and second["resumed_from"]["epochs_done"] == 2
    assert epochs_logged(run) == [0, 1, 2, 3]


def test_slurm_launcher_takes_tasks_and_gpus_from_the_trainer(tmp_path, monkeypatch):
    import submitit

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")   # submitit checks that it is on a SLURM host
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    cfg = compose_cfg(["launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                       "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=720"], tmp_path, with_hydra=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout >= 1
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit", max_num_timeout=launcher.max_num_timeout)
    executor.update_parameters(nodes=launcher.nodes, ntasks_per_node=launcher.tasks_per_node,
                               gpus_per_node=launcher.gpus_per_node, partition=launcher.partition,
                               time=launcher.timeout_min, signal_delay_s=launcher.signal_delay_s)
    script = executor._make_submission_file_text("python train.py", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=720",
                 "--signal=USR2@120", "--open-mode=append"):
        assert line in script
    auto = compose_cfg(["launcher=slurm", "trainer.devices=auto"], tmp_path, with_hydra=True)
    with pytest.raises(Exception, match="needs a number of devices"):
        OmegaConf.to_container(auto.hydra.launcher, resolve=True)


def test_lightning_leaves_the_slurm_signal_to_submitit(monkeypatch):
    from skinlesion.lifecycle import cluster_plugins as _cluster_plugins

    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    plugins = _cluster_plugins()
    assert len(plugins) == 1 and plugins[0].auto_requeue is False
    monkeypatch.delenv("SLURM_NTASKS")
    assert _cluster_plugins() == []


# --- 4. preemption -> submitit requeue -> resume -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_preempted_job_is_requeued_and_resumes(pad_root, tmp_path, uninterrupted):
    """submitit's local executor; the job signals itself (SIGUSR2, the preemption/timeout notice) when its third
    epoch starts. submitit checkpoints the job, requeues it, and the new attempt resumes from epoch 2."""
    sweep = tmp_path / "sweep"
    _sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", *four_epochs(pad_root, tmp_path / "c"),
            *signal_at_epoch_2("SIGUSR2", tmp_path / "preempted-once"), f"hydra.sweep.dir={sweep}"])
    run = sweep / "0"
    record = run_record(run)
    assert record["status"] == "completed"
    first, second = record["attempts"]
    assert first["outcome"] == "requeued" and first["interrupted_at"]["epoch"] == 2
    assert second["resumed_from"]["epochs_done"] == 2 and second["outcome"] == "completed"
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))   # submitit's own log lines
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert final_scores(run) == final_scores(uninterrupted)
    assert epochs_logged(run) == [0, 1, 2, 3]


# --- machine-wide GPU slots, ranks inside an allocation, a sweep that failed ---------------------------------------
LAUNCHER = """
import sys, time
from skinlesion.launch import GpuSlots, _run
with GpuSlots(sys.argv[1], ["0"]).hold(1) as held:
    _run([sys.executable, "-c", "import time; print('training', flush=True); time.sleep(600)"], {}, sys.argv[1], held,
         ".")
"""


def test_a_gpu_stays_taken_while_its_training_process_runs_though_the_launcher_died(tmp_path):
    """The training process holds its GPU itself: a SIGKILLed launcher (or sweep) leaves no training process on a
    GPU that another sweep could take; once the training process ends too, the GPU is free."""
    import os
    import signal
    import sys

    from skinlesion.locks import FileLock, Held
    from skinlesion.testing import started

    lock = tmp_path / "gpu-0.lock"
    with started([sys.executable, "-c", LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE) as launcher:
        assert launcher.stdout.readline().strip() == "training"
        training = json.loads(lock.read_text())["pid"]              # the holder record names the training process
        assert training != launcher.pid
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        with pytest.raises(Held):
            FileLock(lock).acquire(blocking=False)                  # still taken: its job still trains
        os.kill(training, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                FileLock(lock).acquire(blocking=False).release()    # free once the training process is gone
                break
            except Held:
                assert time.monotonic() < deadline
                time.sleep(0.2)


def test_only_srun_tasks_count_as_ranks_the_cluster_started(monkeypatch):
    """Inside an sbatch script or an salloc shell SLURM's variables are set but no step: a DDP sweep job there
    starts its own ranks. An srun task (SLURM_STEP_ID) is a rank the cluster started."""
    from skinlesion.launch import _starts_processes, cluster_started_ranks

    for var in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "sweep.sh")
    ddp = OmegaConf.create({"strategy": "ddp", "devices": 2, "num_nodes": 1})
    assert not cluster_started_ranks() and _starts_processes(ddp)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert cluster_started_ranks() and not _starts_processes(ddp)


def test_a_sweep_whose_jobs_all_failed_exits_non_zero(pad_root, tmp_path):
    out = tmp_path / "sweep"
    proc = python("train.py", "-m", *TINY, f"data.root={pad_root}", "model=meta_only", "tta=none",
                  "optim.optimizer.lr=1e30", "data.fold=0,1", "trainer.limit_train_batches=3",
                  f"hydra.sweep.dir={out}", timeout=300)
    assert proc.returncode == 1
    assert [run_record(out / j)["status"] for j in ("0", "1")] == ["failed", "failed"]
    assert "no job of the sweep in" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_sweeps_on_one_machine_never_hold_one_gpu_at_once(pad_root, tmp_path):
    """Two local_gpus sweeps started together on a pool of two (simulated) GPUs, each wanting both at once: the
    machine-wide GPU locks keep every GPU to one job of either sweep at a time."""
    from skinlesion.testing import started

    sweeps = [tmp_path / f"sweep{i}" for i in (1, 2)]
    cmds = [[sys.executable, "train.py", "-m", "launcher=local_gpus", "gpu_pool=[0,1]", f"data.root={pad_root}",
             *QUICK, "data.fold=0,1", f"hydra.sweep.dir={s}", f"paths.cache_dir={tmp_path}/cache{i}",
             f"gpu_lock_dir={tmp_path}/gpus"] for i, s in enumerate(sweeps)]
    with started(cmds[0], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as a, \
            started(cmds[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as b:
        outs = [p.communicate(timeout=800)[0] for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    runs = [s / str(i) for s in sweeps for i in range(2)]
    assert all(run_record(r)["status"] == "completed" for r in runs)
    spans = _intervals(runs)
    overlapping = [(x, y) for i, x in enumerate(spans) for y in spans[i + 1:] if x[0] < y[1] and y[0] < x[1]]
    assert all(x[2] != y[2] for x, y in overlapping)            # never one GPU in two jobs at once
    assert max(sum(1 for s, e, _ in spans if s <= t < e) for t, _, _ in spans) <= 2
