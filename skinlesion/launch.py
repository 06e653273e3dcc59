"""Sweep jobs that run as their own process: one GPU (or d GPUs) per job on a local machine, and DDP inside sweeps.

``launcher=local_gpus`` runs sweep points with Hydra's joblib launcher, ``K // d`` at a time for K GPUs and d
GPUs per job (``trainer.devices``), or ``cpu_jobs`` at a time on a machine without a GPU. Each job takes d GPUs of
``gpu_pool`` under file locks in the sweep directory (:class:`GpuSlots`) and runs as a fresh
``python -m skinlesion.train`` process that sees only those GPUs (``CUDA_VISIBLE_DEVICES``); a lock is released
when its holder exits, however it exits.

Lightning starts DDP ranks by re-running the command line; in a multirun that line is the whole sweep. A sweep job
that starts processes (DDP) therefore runs as the single-run command of that job, in the job's directory, so its
ranks re-run that job and nothing else (:func:`needs_own_process`). Where the cluster starts the ranks itself
(SLURM tasks, torchrun), the job runs in place.
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from skinlesion.errors import ConfigError

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


class GpuSlots:
    """GPUs of a pool handed to concurrent jobs, each GPU to one job at a time, by exclusive ``flock`` locks on
    ``<lock_dir>/gpu-<id>.lock``. The operating system drops a lock when its holder exits, so a crashed job never
    keeps a GPU."""

    def __init__(self, lock_dir: str | Path, pool: list[str]):
        self.dir, self.pool = Path(lock_dir), list(pool)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _try(self, gpu: str):
        f = open(self.dir / f"gpu-{gpu}.lock", "a+")   # noqa: SIM115  (kept open while the lock is held)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    @contextmanager
    def hold(self, n: int, poll_s: float = 0.2):
        """Wait until ``n`` GPUs are free together; yields their ids, released on exit."""
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
                for _, f in held:   # all or nothing: never sit on some GPUs while waiting for others
                    f.close()
                held = []
                time.sleep(poll_s)
            yield [g for g, _ in held]
        finally:
            for _, f in held:
                f.close()


def _starts_processes(trainer: DictConfig) -> bool:
    """Whether Lightning would launch further processes for this trainer (DDP by re-running the command)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ:
        return False   # the cluster started the ranks
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


def run_job_process(cfg: DictConfig, module: str = "skinlesion.train") -> int:
    """Run this sweep job as ``python -m MODULE <its overrides>`` in its own directory (with GPUs from the pool
    when ``gpu_pool`` is set); returns the process's exit code."""
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    cmd = [sys.executable, "-m", module, f"--config-name={hc.job.config_name}", *hc.overrides.task,
           f"hydra.run.dir={job_dir}", "hydra.output_subdir=null"]
    env = dict(os.environ)
    if cfg.get("gpu_pool") is None or not resolve_pool(cfg.gpu_pool):
        return _run(cmd, env, job_dir, None)
    slots = GpuSlots(Path(hc.sweep.dir) / ".gpu_locks", resolve_pool(cfg.gpu_pool))
    need = devices_per_job(cfg.trainer.get("devices", 1)) or len(slots.pool)
    with slots.hold(need) as gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return _run(cmd, env, job_dir, gpus)


def run_own_process(cfg: DictConfig, module: str) -> bool:
    """:func:`run_job_process`, then whether the job completed (wrote its ``metrics.json``); a failure is logged and
    the sweep goes on. Both entry points (``train.py``, ``fusionm4net.py``) run such jobs this way."""
    code = run_job_process(cfg, module)
    out = Path(cfg.paths.output_dir)
    if code == 0 and (out / "metrics.json").is_file():
        return True
    log.error("job in %s ended with exit code %d; see its run.json and log file", out, code)
    return False


def _run(cmd: list[str], env: dict, job_dir: Path, gpus: list[str] | None) -> int:
    log.info("job %s%s: %s", job_dir, f" on GPU(s) {','.join(gpus)}" if gpus else "", " ".join(cmd[3:]))
    proc = subprocess.Popen(cmd, env=env, cwd=HydraConfig.get().runtime.cwd)
    try:
        return proc.wait()
    except BaseException:   # the sweep is stopped: stop the job too (it records itself as interrupted)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
