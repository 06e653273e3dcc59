"""Helpers for tests and notebooks: the real files beside a checkout, an in-process training run composed from the
same configs as ``python train.py`` (no Hydra app, no subprocess), and commands run in a process group of their
own that dies with the test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tiny settings every training test starts from: CPU, test backbone, small images, one epoch.
TINY = ["backbone=test_resnet", "trainer=cpu", "trainer.max_epochs=1", "data.image_size=32",
        "data.batch_size=32", "data.num_workers=0", "data.progress=false", "tta=flips",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "logger=csv"]


def shared(*parts: str) -> Path:
    """A real data file under ``../shared/data``; the calling test is skipped when it is absent."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file {path} not available")
    return path


def compose_cfg(overrides: list[str], out: Path, with_hydra: bool = False, config_name: str = "train"):
    """The config ``python train.py OVERRIDES`` would run (``with_hydra``: including the hydra node;
    ``config_name="fusionm4net"``: that of ``python fusionm4net.py``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from skinlesion.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.root_dir={REPO}", f"paths.output_dir={out}",
                                           f"paths.cache_dir={out}/cache"], return_hydra_config=with_hydra)


def train(overrides: list[str], out: Path, tiny: bool = True) -> Path:
    """Compose like ``python train.py OVERRIDES`` and run the job in-process; returns the run dir."""
    from skinlesion.train import execute

    cfg = compose_cfg([*(TINY if tiny else []), *overrides], out)
    execute(cfg)
    return out


def sweep(overrides: list[str], entry: str = "train") -> None:
    """``python train.py -m OVERRIDES`` (``entry="fusionm4net"``: ``fusionm4net.py``) in this process (Hydra's basic
    launcher runs the jobs one after another here), without the seconds a fresh interpreter spends importing torch
    and Lightning. The logging set-up that Hydra installs for its jobs is undone afterwards."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    if entry == "fusionm4net":
        from skinlesion.fusionm4net.cli import main
    else:
        from skinlesion.train import main

    root = logging.getLogger()
    saved = sys.argv, root.handlers[:], root.level
    sys.argv = [f"{entry}.py", "-m", *overrides]
    try:
        main()
    finally:
        sys.argv = saved[0]
        for handler in root.handlers[:]:
            if handler not in saved[1]:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved[1]
        root.setLevel(saved[2])
        GlobalHydra.instance().clear()


def unequal_pairs(derm7pt_root: Path) -> set[str]:
    """``case_num`` of the derm7pt cases whose clinical and dermoscopic files differ in size."""
    import pandas as pd
    from PIL import Image

    def size(rel: str) -> tuple[int, int]:
        with Image.open(derm7pt_root / "images" / rel) as im:
            return im.size

    df = pd.read_csv(derm7pt_root / "meta" / "meta.csv")
    return {str(n) for n, c, d in zip(df["case_num"], df["clinic"], df["derm"]) if size(c) != size(d)}


def fit_one_batch(overrides: list[str], out: Path, tiny: bool = True):
    """A preset's wiring from config to predictions — DataModule, network, loss, optimiser step, evaluation — on one
    training, one validation and one test batch (Lightning's ``fast_dev_run``): what every preset must get right,
    without a whole run's epochs, checkpoints and files. Returns the module, whose ``predictions`` hold the test
    batch in the saved predictions' schema."""
    import lightning as L

    from skinlesion.config import validate_config
    from skinlesion.train import build_module, prepare_data

    cfg = compose_cfg([*(TINY if tiny else []), *overrides], out)
    validate_config(cfg)
    L.seed_everything(cfg.seed)
    dm = prepare_data(cfg)
    module = build_module(cfg, dm, pretrained=False)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, dataloaders=dm.eval_dataloader("test"), verbose=False)
    return module


def run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# FusionM4Net on tiny settings (two training batches per epoch, a coarse stage-2 grid); the shared run of the tests
# uses the image cache and two loader workers, the others neither
FUSIONM4NET_FAST = [*TINY, "trainer.limit_train_batches=2", "stage2.grid_n=10"]
FUSIONM4NET_CACHED = ["data.cache.enabled=true", "data.cache.size=40", "data.num_workers=2"]


def fusionm4net_cfg(root: Path, out: Path, *extra: str):
    """The config ``python fusionm4net.py data.root=ROOT`` + the fast settings + ``extra`` would run in ``out``."""
    return compose_cfg([f"data.root={root}", *FUSIONM4NET_FAST, *extra], out, config_name="fusionm4net")


def four_epochs(root: Path, cache: Path) -> list[str]:
    """Command-line overrides of a tiny four-epoch PAD-UFES-20 run (resume and requeue tests)."""
    return [f"data.root={root}", *TINY, "trainer.max_epochs=4", f"paths.cache_dir={cache}"]


def signal_at_epoch_2(name: str, once_file: Path) -> list[str]:
    """Overrides adding :class:`SignalAtEpoch`: ``name`` (e.g. SIGKILL, SIGUSR2) when the third epoch starts."""
    return signal_at(name, once_file, "epoch_start", 2)


def signal_at(name: str, once_file: Path, phase: str, epoch: int = 0) -> list[str]:
    """Overrides adding :class:`SignalAtEpoch`: ``name`` at ``phase`` (of epoch ``epoch`` where that matters)."""
    return ["+callbacks.stop._target_=skinlesion.testing.SignalAtEpoch", f"+callbacks.stop.epoch={epoch}",
            f"+callbacks.stop.signal={name}", f"+callbacks.stop.once_file={once_file}", f"+callbacks.stop.phase={phase}"]


def final_scores(run_dir: Path) -> dict:
    """BAC/ACC/AUC of the reported output's first task, per partition, from ``metrics.json``."""
    m = json.loads((run_dir / "metrics.json").read_text())
    rep = m["reported"]
    task = next(iter(m["tasks"]))
    return {p: {k: m[p][rep]["tasks"][task][k] for k in ("bac", "acc", "auc")} for p in ("val", "test")
            if p in m}


def epochs_logged(run_dir: Path) -> list[int]:
    """The epochs with a validation score in the run's per-epoch CSV log."""
    import pandas as pd

    log = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return sorted(log.dropna(subset=["val/main"])["epoch"].astype(int).tolist())


def _signal_on_requeue(signals: list[signal.Signals]) -> None:
    """Make this submitit job send itself ``signals`` when submitit requeues it: the moment SLURM's ``scontrol
    requeue``, which submitit calls there, sends the job its SIGTERM."""
    import submitit

    env = type(submitit.JobEnvironment())
    requeue = env._requeue   # noqa: SLF001  (the step that asks the cluster for the requeue)

    def requeue_and_signal(self, countdown):
        for sig in signals:
            os.kill(os.getpid(), sig)
        requeue(self, countdown)

    env._requeue = requeue_and_signal   # noqa: SLF001


class SignalAtEpoch(Callback):
    """A Lightning callback that sends ``signal`` to its own process once, at a known moment of a run: ``once_file``
    is created first and, if it exists, nothing is sent. Simulates a kill (SIGKILL), Ctrl-C (SIGINT) or a
    cluster's preemption notice (SIGUSR2). In a submitit job, ``SIGUSR2+SIGTERM`` sends the second when submitit
    requeues the job in answer to the first, as SLURM sends SIGTERM to a job it requeues (a timer started with the
    first signal could win the race on a loaded machine, a sequence SLURM never produces). ``phase``:

    - ``epoch_start``: when training epoch ``epoch`` (0-based) starts, after the previous epoch's checkpoints;
    - ``mid_epoch``: after the first training batch of epoch ``epoch``;
    - ``validation``: at the first validation batch of epoch ``epoch``;
    - ``after_training``: when fitting has ended, before the final evaluation;
    - ``test``: when the final evaluation starts (its first partition);
    - ``predictions``: when the final evaluation's second partition starts (the first one's predictions written).

        +callbacks.stop._target_=skinlesion.testing.SignalAtEpoch +callbacks.stop.epoch=2 \\
        +callbacks.stop.signal=SIGKILL +callbacks.stop.once_file=/tmp/killed-once
    """

    PHASES = ("epoch_start", "mid_epoch", "validation", "after_training", "test", "predictions")

    def __init__(self, epoch: int, signal: str, once_file: str, phase: str = "epoch_start"):
        if phase not in self.PHASES:
            raise ValueError(f"phase={phase!r}: expected one of {', '.join(self.PHASES)}")
        self.epoch, self.signal, self.once_file, self.phase = int(epoch), signal, Path(once_file), phase
        self._tests = 0

    def _fire(self, phase: str, epoch: int | None = None) -> None:
        if phase != self.phase or (epoch is not None and epoch != self.epoch) or self.once_file.exists():
            return
        self.once_file.parent.mkdir(parents=True, exist_ok=True)
        self.once_file.touch()
        first, *later = [getattr(signal, name) for name in self.signal.split("+")]
        if later:
            _signal_on_requeue(later)
        os.kill(os.getpid(), first)

    def on_train_epoch_start(self, trainer, pl_module):
        self._fire("epoch_start", trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self._fire("mid_epoch", trainer.current_epoch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self._fire("validation", trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module):
        self._fire("after_training")

    def on_test_start(self, trainer, pl_module):
        self._tests += 1
        self._fire("test" if self._tests == 1 else "predictions" if self._tests == 2 else "later tests")


# --------------------------------------------------------------------------------------------- processes
@contextmanager
def started(cmd: Sequence[str], **popen) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(cmd)`` (text mode, cwd the checkout unless given) in a new session, hence a process group
    of its own. Leaving the block kills the whole group — the command and whatever it started (loader workers,
    DDP ranks, sweep jobs) — whether the test passed, failed or hit its time limit, so nothing outlives it."""
    popen.setdefault("cwd", REPO)
    proc = subprocess.Popen(list(map(str, cmd)), start_new_session=True, text=True, **popen)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):   # the group is already gone
            pass
        proc.communicate()   # reap it and close its pipes


def run_command(cmd: Sequence[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end (see :func:`started`), capturing stdout and stderr; past ``timeout`` seconds the group
    is killed and ``subprocess.TimeoutExpired`` raised."""
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def python(*args: str | Path, timeout: float, **popen) -> subprocess.CompletedProcess:
    """``python ARGS`` with this interpreter, from the checkout (``python("train.py", *args, timeout=300)``)."""
    return run_command([sys.executable, *map(str, args)], timeout, **popen)


class PauseEachEpoch(Callback):
    """A Lightning callback that sleeps ``seconds`` at the end of every training epoch: a tiny run that lasts long
    enough for a cluster's time limit or a person's signal to reach it mid-run (cluster tests). With ``until``, the
    pause ends as soon as that file exists (``seconds`` is then the longest wait), so a test holds a run in the middle
    for exactly as long as it needs, however slowly a loaded machine starts its other processes.

        +callbacks.pause._target_=skinlesion.testing.PauseEachEpoch +callbacks.pause.seconds=5
    """

    def __init__(self, seconds: float, until: str | None = None):
        self.seconds, self.until = float(seconds), until

    def on_train_epoch_end(self, trainer, pl_module):
        import time

        if self.until is None:
            time.sleep(self.seconds)
            return
        deadline = time.monotonic() + self.seconds
        while not Path(self.until).exists() and time.monotonic() < deadline:
            time.sleep(0.1)


class SubmititTrainJob:
    """A training run (:func:`train`) as a submitit job that submitit may requeue, as the jobs of Hydra's submitit
    launchers are: the job process has submitit's signal handling and environment, without a cluster.

        job = submitit.LocalExecutor(folder).submit(SubmititTrainJob(overrides, run_dir))
    """

    def __init__(self, overrides: list[str], run_dir: Path):
        self.overrides, self.run_dir = list(overrides), str(run_dir)

    def __call__(self) -> str:
        train(self.overrides, Path(self.run_dir))
        return run_record(Path(self.run_dir))["status"]

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititTrainJob(self.overrides, Path(self.run_dir)))
