"""Checkpoints a run can be resumed from: written whole or not at all, marked when training is over, and read back
with a fallback to the previous good one.

- :class:`AtomicCheckpointIO` writes every checkpoint (the best, ``last.ckpt``, ``swa.ckpt``) to a temporary file
  beside its target and moves it into place with ``os.replace``. Lightning's default writer stages the file under
  ``$TMPDIR`` and, when that is another filesystem (usual on clusters), copies it over the target in place, so a
  kill during the copy leaves a truncated ``last.ckpt``; a rename within one directory cannot.
- :class:`FinishedTraining` records in every checkpoint whether early stopping had stopped training when it was
  written and makes a run resumed from such a checkpoint skip straight to its evaluation, as one resumed after its
  last epoch does, so that it evaluates what an uninterrupted run evaluates instead of training on.
- :func:`resumable` picks the newest readable checkpoint of a run directory, ``last.ckpt`` first; :func:`resolve`
  names the one a finished run evaluated (or ``last``, ``swa``, a file), for ``load_run`` and prediction.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from skinlesion.errors import ConfigError
from skinlesion.provenance import atomic_path

log = logging.getLogger(__name__)

STOPPED = "skinlesion_stopped_early"   # checkpoint key: a callback (early stopping) had stopped training
AVERAGED = "swa.ckpt"                        # the averaged weights (chapter 5): evaluated, never resumed from


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the target's directory, flushed to disk, then renamed over the
    target: a reader finds the previous checkpoint or the new one, never part of one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())


def stopped_early(trainer) -> bool:
    """Whether a callback (early stopping) has stopped the fit loop before its last epoch."""
    return bool(trainer.should_stop and trainer.fit_loop._can_stop_early)   # noqa: SLF001  (the loop's own test)


def epochs_processed(checkpoint: dict) -> int:
    """Training epochs a checkpoint has completed — the count Lightning's fit loop compares with ``max_epochs``
    (a checkpoint written at the end of an epoch's validation has not completed that epoch yet)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", -1)) + 1


def training_finished(checkpoint: dict, max_epochs: int | None) -> bool:
    """Whether training resumed from ``checkpoint`` has nothing left to do: early stopping had stopped it, or it
    has completed ``max_epochs`` epochs (the run's setting now, which may differ from the one it was written
    with)."""
    return _finished(bool(checkpoint.get(STOPPED, False)), epochs_processed(checkpoint), max_epochs)


def _finished(stopped: bool, processed: int, max_epochs: int | None) -> bool:
    return stopped or (max_epochs not in (None, -1) and processed >= int(max_epochs))


class FinishedTraining(Callback):
    """Marks each checkpoint with :func:`stopped_early` and, when training resumes from a checkpoint of a run that
    early stopping had stopped, stops the fit loop before it starts (``trainer.should_stop``): the decision survives
    a restart, and the rerun evaluates the checkpoint the stopped run chose.

    ``last.ckpt`` is written at the end of the training epoch, after early stopping has decided (Lightning runs
    checkpoint callbacks after the others), so its mark includes that decision."""

    def __init__(self):
        self.resumed_stopped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[STOPPED] = stopped_early(trainer)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.resumed_stopped = bool(checkpoint.get(STOPPED, False))

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.resumed_stopped:
            trainer.should_stop = True   # the loop's `done` check then skips training


@dataclass(frozen=True)
class Summary:
    """What resuming needs to know of a checkpoint, read without loading its tensors."""

    path: Path
    epoch: int          # last epoch it was written in, 0-based (-1: none)
    processed: int      # epochs completed
    stopped: bool       # early stopping had stopped training

    def finished(self, max_epochs: int | None) -> bool:
        return _finished(self.stopped, self.processed, max_epochs)


def summary(path: Path) -> Summary:
    """Read what :class:`Summary` holds of ``path`` (memory-mapped: the weights and optimiser state stay on disk).
    Raises on a file that is not a complete checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "state_dict" not in ckpt:
        raise ValueError("no state_dict in it")
    return Summary(Path(path), int(ckpt.get("epoch", -1)), epochs_processed(ckpt), bool(ckpt.get(STOPPED, False)))


def _candidates(directory: Path) -> list[Path]:
    """``last.ckpt``, then the run's other training checkpoints (the best ones), newest first."""
    others = [p for p in directory.glob("*.ckpt") if p.name not in ("last.ckpt", AVERAGED)]
    return [directory / "last.ckpt", *sorted(others, key=lambda p: p.stat().st_mtime_ns, reverse=True)]


def resumable(directory: Path) -> tuple[Summary | None, list[str]]:
    """The newest readable training checkpoint under ``directory`` and the unreadable ones skipped on the way
    (``"name (why)"``). A run only resumes from a checkpoint that holds its whole training state, so falling back
    to an earlier epoch retrains the epochs after it exactly as the lost run did."""
    skipped: list[str] = []
    for path in _candidates(directory):
        if not path.is_file():
            continue
        try:
            return summary(path), skipped
        except Exception as e:  # noqa: BLE001  (a truncated zip, a pickle error, ...: all mean "not usable")
            skipped.append(f"{path.name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    return None, skipped


def remove_partial_files(directory: Path) -> None:
    """Temporary files a killed writer left behind (:func:`skinlesion.provenance.atomic_path` names them
    ``.<target>.<random>.tmp``)."""
    for p in directory.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def locate(path: Path, which: str = "best") -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None) for a run directory (its ``which`` checkpoint, see
    :func:`resolve`) or a checkpoint file (its run: the directory above ``checkpoints/`` holding a config.yaml)."""
    if path.is_dir():
        if not (path / "checkpoints").is_dir():
            raise ConfigError(f"{path}: not a run directory (no checkpoints/) and not a checkpoint file")
        return resolve(path, which), path
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r}: no such file or run directory")
    run_dir = path.parent.parent
    return path, run_dir if path.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file() else None


def resolve(run_dir: Path, which: str = "best") -> Path:
    """``best``: the checkpoint the run evaluated (metrics.json), else the best-scored file name; ``last``;
    ``swa`` (the averaged weights of the chapter-5 recipe); or a path."""
    ckpts = run_dir / "checkpoints"
    if which not in ("best", "last", "swa"):
        path = Path(which)
        if not path.is_file():
            raise ConfigError(f"checkpoint {which!r}: no such file")
        return path
    if which in ("last", "swa"):
        path = ckpts / f"{which}.ckpt"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no checkpoints/{which}.ckpt")
        return path
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        best = saved.get("evaluated_checkpoint") or saved.get("best_checkpoint")
        # the recorded path is absolute at training time; the run directory may have moved since
        if best and (ckpts / Path(best).name).is_file():
            return ckpts / Path(best).name
    scored = []
    for p in ckpts.glob("*.ckpt"):
        m = re.search(r"val(-?[0-9.]+|nan)\.ckpt$", p.name)
        if m and m.group(1) != "nan":
            scored.append((float(m.group(1).rstrip(".")), p))
    if scored:
        return max(scored, key=lambda sp: sp[0])[1]
    raise ConfigError(f"{run_dir}: no best checkpoint found under checkpoints/")
