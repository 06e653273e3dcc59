"""Resuming a run in its own directory.

A run directory is the unit of work: running a job whose directory already holds

- a completed run (``run.json`` status ``completed``, ``metrics.json`` and its predictions) skips it and returns its
  score;
- ``checkpoints/last.ckpt`` (written at the end of every epoch) continues training from that epoch: optimiser,
  learning-rate schedule, early-stopping counter and decision, best checkpoint, weight averaging and random states
  included; when its training was already over, the run goes straight to the evaluation
  (:mod:`skinlesion.checkpoints`). An unreadable ``last.ckpt`` falls back to the newest readable checkpoint;
- nothing of the above starts afresh.

``resume=never`` trains afresh whatever the directory holds (its checkpoints are removed first, so that a later
rerun cannot continue from them); ``ckpt_path=FILE`` resumes from an explicit checkpoint instead. Either way the
directory's saved ``config.yaml`` must describe the same experiment: only the settings in :data:`RUNTIME_KEYS`
(workers, progress bars, loggers, ...) may differ, so a rerun with another learning rate cannot silently continue
an old run.
"""
from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from skinlesion import checkpoints, locks
from skinlesion.data.info import INPUTS
from skinlesion.errors import ConfigError
from skinlesion.provenance import write_csv

log = logging.getLogger(__name__)

# Settings that say how a job runs, not what it computes: they may change between the attempts of one run.
RUNTIME_KEYS = ("ckpt_path", "resume", "gpu_pool", "gpu_lock_dir", "cpu_jobs", "stage1_dir", "tags", "paths", "logger",
                "callbacks.progress_bar",
                "hydra", "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.progress", "data.cache",
                "data.eval_batch_size", "data.root", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
                "trainer.enable_model_summary", "robustness")
# Settings added after a run may have been saved, at the value that trains as before: a run saved without them
# continues (an absent key and this value describe the same experiment).
ADDED_DEFAULTS = {f"model.input_dropout.{x}": 0.0 for x in INPUTS}


@dataclass(frozen=True)
class ResumePlan:
    """What a job does in its directory: ``new``, ``skip`` (already completed) or ``resume`` from ``checkpoint``."""

    action: str
    checkpoint: Path | None = None
    epoch: int | None = None   # the last completed epoch (0-based) of the checkpoint
    fresh: bool = False        # resume=never: whatever the directory holds is replaced, not continued
    finished: bool = False     # the checkpoint's training is over: only the evaluation is left to do
    record: dict = field(default_factory=dict)   # the directory's run.json as found (its earlier attempts)


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _runtime(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs, runtime settings excepted."""
    a, b = _flatten(saved), _flatten(current)
    for k, value in ADDED_DEFAULTS.items():
        a.setdefault(k, value)
        b.setdefault(k, value)
    return sorted(k for k in set(a) | set(b) if not _runtime(k) and a.get(k, "<absent>") != b.get(k, "<absent>"))


def checkpoint_summary(path: Path) -> checkpoints.Summary:
    """What resuming needs of the checkpoint a user named (``ckpt_path=``), or a one-line error."""
    try:
        return checkpoints.summary(path)
    except Exception as e:  # noqa: BLE001  (any unreadable file gets the same message)
        raise ConfigError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e}); pass ckpt_path= to another "
                          "checkpoint, or resume=never to start this run afresh") from None


def _resume_point(out: Path) -> checkpoints.Summary | None:
    """The checkpoint a rerun continues from: ``last.ckpt``, or — when that one is unreadable (truncated by a
    kill elsewhere, a full disk) — the newest good checkpoint before it, said in one warning line. Never a silent
    fresh start: a directory whose checkpoints are all unreadable is an error."""
    found, skipped = checkpoints.resumable(out / "checkpoints")
    if skipped and found is not None:
        log.warning("%s: %s unreadable; resuming from %s (%d epoch(s) done) instead", out / "checkpoints",
                    "; ".join(skipped), found.path.name, found.epoch + 1)
    elif skipped:
        raise ConfigError(f"{out / 'checkpoints'}: no readable checkpoint ({'; '.join(skipped)}); pass ckpt_path= "
                          "to another checkpoint, or resume=never to start this run afresh")
    return found


def plan(cfg: DictConfig, out: Path) -> ResumePlan:
    """Decide, before anything is written, whether the job in ``out`` is new, done, or continues."""
    explicit = cfg.get("ckpt_path")
    if cfg.get("resume", "auto") == "never" and explicit is None:
        return ResumePlan("new", fresh=True)
    saved_cfg = out / "config.yaml"
    record = out / "run.json"
    found = json.loads(record.read_text()) if record.is_file() else {}
    status = found.get("status")
    if explicit is None and status is None and not any((out / "checkpoints").glob("*.ckpt")):
        return ResumePlan("new", record=found)
    if saved_cfg.is_file() and (explicit is None or status is not None):
        current = OmegaConf.to_container(cfg, resolve=True)
        diff = config_differences(OmegaConf.to_container(OmegaConf.load(saved_cfg), resolve=False), current)
        if diff:
            shown = ", ".join(diff[:8]) + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
            raise ConfigError(f"{out} holds a run of a different experiment (config.yaml differs in: {shown}); "
                              "choose another run directory (hydra.run.dir= / hydra.sweep.dir=) for this one")
    if explicit is not None:
        path = Path(str(explicit)).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={explicit!r}: no such checkpoint file")
        point = checkpoint_summary(path)
    elif status == "completed" and _results_in_place(out):
        return ResumePlan("skip", record=found)
    else:
        point = _resume_point(out)
    if point is None:
        return ResumePlan("new", record=found)
    return ResumePlan("resume", point.path, point.epoch, record=found,
                      finished=point.finished(cfg.trainer.get("max_epochs")))


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive use of a run directory that several jobs need (a FusionM4Net stage-1 run shared by the classifiers
    of one seed): the first job trains it, the others wait here and then find it finished. The lock
    (:mod:`skinlesion.locks`, ``.<name>.lock`` beside the directory) dies with its holder, however it exits, so a
    crashed holder leaves the next job to resume the run instead of waiting forever. Only rank 0 of a DDP job takes
    it: the other ranks follow rank 0 (they start when it trains), and waiting on it would deadlock them."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    with locks.hold(run_dir.parent / f".{run_dir.name}.lock", f"lock of the shared run {run_dir}"):
        yield


OUTPUTS = ("run.json", "metrics.json", "checkpoints", "predictions", "search", "csv")


def clear_outputs(out: Path) -> None:
    """``resume=never`` in a used directory: remove the earlier run's outputs, so that nothing of it is mixed into
    the new run and a later rerun cannot continue from its checkpoints."""
    import shutil

    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for path in out.glob(".*.before-resume.csv"):   # an earlier run's epoch log set aside for merging
        path.unlink()


def _results_in_place(out: Path) -> bool:
    """A completed run's results are all there: ``metrics.json`` and the predictions of every partition it scored.
    When one was removed, the run resumes from its last checkpoint, which has no epochs left: it is evaluated
    again and writes them anew."""
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return all((out / "predictions" / f"{p}.parquet").is_file() for p in ("val", "test", "holdout") if p in metrics)


def _earlier(log_dir: Path) -> Path:
    return log_dir.parent / f".{log_dir.name}.before-resume.csv"


def set_aside_epoch_log(log_dir: Path, last_epoch: int) -> None:
    """Before a resumed attempt: Lightning's CSV logger starts its ``metrics.csv`` afresh, so the rows of the epochs
    up to the checkpoint (``last_epoch``, 0-based) are kept aside — rows of later epochs are dropped, the resumed
    run logs those again — and :func:`merge_epoch_log` puts them back in front when the run completes."""
    frames = [pd.read_csv(p) for p in (_earlier(log_dir), log_dir / "metrics.csv") if p.is_file()]
    if not frames:
        return
    rows = pd.concat(frames, ignore_index=True)
    if "epoch" in rows:
        rows = rows[~(rows["epoch"] > last_epoch)]
    write_csv(_earlier(log_dir), rows)
    (log_dir / "metrics.csv").unlink(missing_ok=True)


def merge_epoch_log(log_dir: Path) -> None:
    """After a resumed run completes: one ``metrics.csv`` with every epoch once, in order."""
    earlier = _earlier(log_dir)
    if not earlier.is_file():
        return
    frames = [pd.read_csv(p) for p in (earlier, log_dir / "metrics.csv") if p.is_file()]
    write_csv(log_dir / "metrics.csv", pd.concat(frames, ignore_index=True))
    earlier.unlink()


class RandomState(Callback):
    """Saves the global random states (Python, NumPy, torch CPU and CUDA) with every checkpoint and restores them
    when training resumes from one, so that dropout and loader seeds continue where the saved run stood.

    States are stored as plain lists and tensors (loadable with ``torch.load(weights_only=True)``)."""

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state   # applied when training starts: after model set-up, before the first batch

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
