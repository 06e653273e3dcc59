"""Sweep jobs that run as their own process: one GPU (or d GPUs) per job on a local machine, and DDP inside sweeps.

``launcher=local_gpus`` runs sweep points with Hydra's joblib launcher, ``K // d`` at a time for K GPUs and d
GPUs per job (``trainer.devices``), or ``cpu_jobs`` at a time on a machine without a GPU. Each job takes d GPUs of
``gpu_pool`` under machine-wide locks (``gpu_lock_dir``, :class:`GpuSlots`) and runs as a fresh
``python -m skinlesion.train`` process that sees only those GPUs (``CUDA_VISIBLE_DEVICES``); a lock is released
when its holder exits, however it exits.

Lightning starts DDP ranks by re-running the command line; in a multirun that line is the whole sweep. A sweep job
that starts processes (DDP) therefore runs as the single-run command of that job, in the job's directory, so its
ranks re-run that job and nothing else (:func:`needs_own_process`). Where the cluster starts the ranks itself
(SLURM tasks, torchrun), the job runs in place.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from skinlesion.errors import ConfigError
from skinlesion.locks import FileLock, Held

log = logging.getLogger(__name__)


def devices_per_job(devices) -> int | None:
    """How many devices ``trainer.devices`` asks for; None for 'auto' or -1 (all of them)."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        return None if devices == -1 else max(devices, 1)
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return devices_per_job(int(devices))
    return None


def resolve_pool(pool) -> list[str]:
    """``gpu_pool``: a list of GPU ids, or ``all`` for every GPU this process sees."""
    if pool in (None, "all"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return [g for g in visible.split(",") if g.strip()]
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    if isinstance(pool, int | str):
        pool = [pool]
    return [str(g) for g in pool]


def concurrent_jobs(pool, devices, cpu_jobs: int = 1) -> int:
    """``hydra.launcher.n_jobs`` of ``launcher=local_gpus``: how many jobs fit on the pool at once; without a GPU,
    ``cpu_jobs`` jobs run on the CPU at once."""
    gpus = resolve_pool(pool)
    if not gpus:
        return max(1, int(cpu_jobs))
    need = devices_per_job(devices) or len(gpus)
    if need > len(gpus):
        raise ConfigError(f"trainer.devices={devices}: each job needs {need} GPUs, but gpu_pool has {len(gpus)} "
                          f"({','.join(gpus)})")
    return len(gpus) // need


def gpu_lock_dir(cfg: DictConfig) -> Path:
    """Where the GPU locks of this machine live (``gpu_lock_dir``): one place for every sweep on the machine."""
    return Path(str(cfg.get("gpu_lock_dir") or "/tmp/skinlesion-gpu-locks")).expanduser()


class GpuSlots:
    """GPUs of a pool handed to concurrent jobs, each GPU to one job at a time, by exclusive locks
    (:mod:`skinlesion.locks`) on ``<lock_dir>/gpu-<id>.lock``. The directory is machine-wide (``gpu_lock_dir``), so
    two sweeps on one machine never share a GPU; a lock dies with its holders, so a crashed job never keeps one."""

    def __init__(self, lock_dir: str | Path, pool: list[str]):
        self.dir, self.pool = Path(lock_dir), list(pool)
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                os.chmod(self.dir, 0o1777)   # shared by every user's sweeps, like /tmp itself
            except OSError:
                pass

    def _try(self, gpu: str) -> FileLock | None:
        path = self.dir / f"gpu-{gpu}.lock"
        if not path.exists():
            try:   # writable by the other users' sweeps too
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
                os.chmod(path, 0o666)
            except OSError:
                pass
        try:
            return FileLock(path, f"GPU {gpu}").acquire(blocking=False)
        except Held:
            return None

    @contextmanager
    def hold(self, n: int, poll_s: float = 0.2):
        """Wait until ``n`` GPUs are free together; yields ``(id, lock)`` pairs, released on exit."""
        if n > len(self.pool):
            raise ConfigError(f"a job needs {n} GPUs; the pool has {len(self.pool)}")
        held: list = []
        try:
            while True:
                for gpu in self.pool:
                    if len(held) == n:
                        break
                    f = self._try(gpu)
                    if f is not None:
                        held.append((gpu, f))
                if len(held) == n:
                    break
                for _, lock in held:   # all or nothing: never sit on some GPUs while waiting for others
                    lock.release()
                held = []
                time.sleep(poll_s)
            yield held
        finally:
            for _, lock in held:
                lock.release()


def cluster_started_ranks() -> bool:
    """Whether this process is one of the ranks a cluster started: a task of an ``srun`` step, a ``torchrun`` worker
    or a rank Lightning launched. The shell of an ``sbatch`` script or an ``salloc`` allocation has SLURM's
    variables too, but no step: a sweep started there starts its own ranks."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ:
        return True
    return SLURMEnvironment.detect() and "SLURM_STEP_ID" in os.environ


def _starts_processes(trainer: DictConfig) -> bool:
    """Whether Lightning would launch further processes for this trainer (DDP by re-running the command)."""
    if cluster_started_ranks():
        return False
    strategy = str(trainer.get("strategy", "auto"))
    if any(s in strategy for s in ("spawn", "fork", "notebook")):
        return False   # these start their processes from Python, not from the command line
    many = devices_per_job(trainer.get("devices", 1))
    return "ddp" in strategy or many is None or many > 1 or int(trainer.get("num_nodes", 1) or 1) > 1


def needs_own_process(cfg: DictConfig) -> bool:
    """A multirun job that must run as a process of its own: it takes GPUs from a pool, or it starts DDP ranks."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return bool(cfg.get("gpu_pool") is not None and resolve_pool(cfg.gpu_pool)) or _starts_processes(cfg.trainer)


# Hydra overrides of the sweep that a job's own process must not inherit: they launch and place the sweep itself.
_SWEEP_ONLY = ("hydra.launcher", "hydra/launcher", "hydra.sweeper", "hydra/sweeper", "hydra.run.", "hydra.sweep.",
               "hydra.mode", "hydra.output_subdir", "hydra.job.num", "hydra.job.id")


def job_command(module: str) -> list[str]:
    """``python -m MODULE`` with this sweep job's whole Hydra context: the config name and directories (``--config-dir``
    and the search path), every override of the job, the user's other ``hydra.*`` overrides, and the sweep's
    directory — so that ``${hydra:sweep.dir}`` (a shared stage 1, say) means the same in the job's process — with
    the job's own directory as its run directory."""
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    config_dirs = [s.path.removeprefix("file://") for s in hc.runtime.config_sources if s.provider == "command-line"]
    hydra_overrides = [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    return [sys.executable, "-m", module, f"--config-name={hc.job.config_name}",
            *(f"--config-dir={d}" for d in config_dirs), *hc.overrides.task, *hydra_overrides,
            f"hydra.run.dir={job_dir}", f"hydra.sweep.dir={hc.sweep.dir}", f"hydra.sweep.subdir={hc.sweep.subdir}",
            "hydra.output_subdir=null"]


def run_job_process(cfg: DictConfig, module: str = "skinlesion.train") -> int:
    """Run this sweep job as :func:`job_command` in its own directory (with GPUs from the pool when ``gpu_pool`` is
    set); returns the process's exit code."""
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    cmd = job_command(module)
    env = dict(os.environ)
    if "SLURM_NTASKS" in env and not cluster_started_ranks():
        # inside an sbatch/salloc allocation, not an srun step: the job starts its own ranks, so Lightning must not
        # take SLURM's task count (one shell) for its world size
        for key in ("SLURM_NTASKS", "SLURM_NPROCS"):
            env.pop(key, None)
    if cfg.get("gpu_pool") is None or not resolve_pool(cfg.gpu_pool):
        return _run(cmd, env, job_dir, [], hc.runtime.cwd)
    slots = GpuSlots(gpu_lock_dir(cfg), resolve_pool(cfg.gpu_pool))
    need = devices_per_job(cfg.trainer.get("devices", 1)) or len(slots.pool)
    with slots.hold(need) as held:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu for gpu, _ in held)
        return _run(cmd, env, job_dir, held, hc.runtime.cwd)


def run_own_process(cfg: DictConfig, module: str) -> bool:
    """:func:`run_job_process`, then whether the job completed (wrote its ``metrics.json``); a failure is logged and
    the sweep goes on. Both entry points (``train.py``, ``fusionm4net.py``) run such jobs this way."""
    code = run_job_process(cfg, module)
    out = Path(cfg.paths.output_dir)
    if code == 0 and (out / "metrics.json").is_file():
        return True
    log.error("job in %s ended with exit code %d; see its run.json and log file", out, code)
    return False


def _run(cmd: list[str], env: dict, job_dir: Path, held: list[tuple[str, FileLock]], cwd: str) -> int:
    gpus = [gpu for gpu, _ in held]
    log.info("job %s%s: %s", job_dir, f" on GPU(s) {','.join(gpus)}" if gpus else "", " ".join(cmd[3:]))
    # The training process inherits the GPUs' locked files, so it holds them itself: a GPU stays taken while its
    # job trains even if this launcher is killed, and is free again once both have ended, however they end.
    fds = [lock.fileno for _, lock in held if lock.fileno is not None]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, pass_fds=fds)
    for _, lock in held:
        lock.record(pid=proc.pid, job=str(job_dir))
    try:
        return proc.wait()
    except BaseException:   # the sweep is stopped: stop the job too (it records itself as interrupted)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


class SweepOutcome(Callback):
    """A Hydra callback: a sweep none of whose jobs completed (all failed, were interrupted or timed out) ends with
    a non-zero exit status and one line saying so, so that a script or CI step that launched it notices."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from skinlesion.status import rows

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = rows([sweep_dir]) if sweep_dir.is_dir() else []
        if jobs and all(r["status"] in ("failed", "interrupted", "timed_out", "missing") for r in jobs):
            log.error("no job of the sweep in %s completed (%d job(s)); python -m skinlesion.status %s lists them",
                      sweep_dir, len(jobs), sweep_dir)
            raise SystemExit(1)
