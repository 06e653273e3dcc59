"""Training entry point: config -> DataModule -> LightningModule -> saved predictions -> metrics.

    python train.py data=pad_ufes model=image_only data.fold=3
    python train.py -m data=isic2019 data.fold=0,1,2,3,4

Every run directory gets: config.yaml (resolved), run.json (status, identity, parameter counts),
environment.json (package versions, git commit), folds.csv, checkpoints/, predictions/{val,test}.parquet,
metrics.json and csv/metrics.csv (per-epoch log). The status in run.json is ``running`` while the job runs,
then ``completed``, ``failed`` (with the error; a diverged loss also with its epoch and step), ``interrupted``
(SIGTERM or Ctrl-C), ``requeued`` (the cluster runs the job again) or ``timed_out`` (the time limit, with no
requeue left): :mod:`skinlesion.lifecycle`. Files, checkpoints included, are replaced atomically, so a killed run
leaves no half-written one.

Running a job again in the same directory resumes it from ``checkpoints/last.ckpt``, or skips it when it has
completed (``skinlesion.resume``); ``ckpt_path=FILE`` resumes from a given checkpoint. This module composes and runs
one job; the rooms it passes through: :mod:`skinlesion.resume` (where to continue), :mod:`skinlesion.checkpoints`
(what a checkpoint holds), :mod:`skinlesion.tracking` (identity, loggers, W&B), :mod:`skinlesion.lifecycle`
(signals and outcomes) and :mod:`skinlesion.final_evaluation` (predictions, metrics, results table).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import traceback
import warnings
from datetime import datetime
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

import skinlesion.config  # noqa: F401  (registers the config resolvers)
from skinlesion import checkpoints, lifecycle, locks, resume, tracking
from skinlesion.build import build_module, prepare_data  # noqa: F401  (the job's two steps; re-exported)
from skinlesion.errors import SkinLesionError
from skinlesion.provenance import environment, write_config, write_csv, write_json

log = logging.getLogger("skinlesion")

# Not actionable for users: a Lightning/torch deprecation inside Lightning, and the notice that the module's
# (intended) uint8 -> float device transfer hook is used although a DataModule is passed.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")
# A resumed run's CSV log directory exists: its earlier rows are set aside and merged back (skinlesion.resume).
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def run(cfg: DictConfig, out: Path, state: dict | None = None, plan: resume.ResumePlan | None = None,
        wandb_id: str | None = None) -> dict:
    """One training job; returns the metrics written to ``out/metrics.json``. ``state`` receives the trainer (so an
    interrupted job can say how far it got); ``plan`` says where training continues from (a checkpoint whose
    training is finished goes straight to the evaluation); ``wandb_id`` is the run's W&B run."""
    from skinlesion.evaluation import subgroups
    from skinlesion.final_evaluation import evaluate, results_table
    from skinlesion.models import parameter_report

    resume_from = plan.checkpoint if plan is not None else None
    L.seed_everything(cfg.seed, workers=True)
    dm = prepare_data(cfg)
    module = build_module(cfg, dm)
    params = parameter_report(module.network, cfg.backbone, dm.info)
    log.info("parameters: %s", params)
    if rank_zero_only.rank == 0:
        write_csv(out / "folds.csv", dm.fold_frame())
        write_csv(out / subgroups.FILE, subgroups.subgroup_frame(dm.table))   # so the report needs no dataset

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):   # the switch wins over the configured bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks += [resume.RandomState(), checkpoints.FinishedTraining()]
    loggers = tracking.loggers(cfg, tracking.identity(cfg), wandb_id)
    csv_dirs = [Path(lg.log_dir) for lg in loggers if isinstance(lg, CSVLogger)]
    if resume_from is not None and rank_zero_only.rank == 0:
        for d in csv_dirs:
            resume.set_aside_epoch_log(d, plan.epoch)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                                      plugins=[*lifecycle.cluster_plugins(), checkpoints.AtomicCheckpointIO()],
                                      **_ddp_strategy(cfg, module))
    if state is not None:
        state["trainer"] = trainer
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from is not None else None)
    if trainer.global_rank == 0:
        for d in csv_dirs:
            resume.merge_epoch_log(d)
    metrics = evaluate(cfg, out, trainer, module, dm, params)
    if trainer.global_rank == 0:
        if cfg.get("robustness", True):
            from skinlesion.robustness import withhold_inputs

            withhold_inputs(out, dm, str(trainer.strategy.root_device), int(dm.eval_batch_size))
        print(results_table(metrics, dm.info), flush=True)   # last, so a run's output ends with its results
    return metrics


def _ddp_strategy(cfg: DictConfig, module) -> dict:
    """A branch trained with loss weight 0 (Table 5.17's W=0 and W=0.5 rows) still predicts, but its head gets no
    gradient; plain DDP stops at such parameters, so DDP is told to expect them — under any strategy that becomes
    DDP: ``ddp``, or ``auto`` with several devices or nodes (as ``launcher=slurm trainer.devices=4`` composes). Its
    gradients stay absent, as on one device, so the result is the same."""
    from skinlesion.launch import devices_per_job

    if all(module.branch_weights.values()):
        return {}
    trainer = cfg.trainer
    strategy = str(trainer.get("strategy") or "auto")
    devices = devices_per_job(trainer.get("devices", 1))
    if devices is None:   # 'auto' or -1: every device of the accelerator
        import torch
        devices = torch.cuda.device_count() if str(trainer.get("accelerator")) in ("gpu", "cuda", "auto") else 1
    several = devices > 1 or int(trainer.get("num_nodes") or 1) > 1
    if strategy == "ddp" or (strategy == "auto" and several):
        return {"strategy": "ddp_find_unused_parameters_true"}
    if strategy == "ddp_spawn":
        return {"strategy": "ddp_spawn_find_unused_parameters_true"}
    return {}


def _user_error(e: BaseException) -> SkinLesionError | None:
    """The project's own error behind ``e``, if any (Hydra's instantiate wraps exceptions it calls into)."""
    while e is not None:
        if isinstance(e, SkinLesionError):
            return e
        e = e.__cause__
    return None


def _clean_message(e: BaseException) -> str:
    msg = str(_user_error(e) or e)
    # Errors raised inside DataLoader workers arrive wrapped with the worker's traceback.
    if "Original Traceback" in msg:
        msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
    return msg


CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from skinlesion import launch

    if launch.needs_own_process(cfg):   # a sweep job on GPUs of a pool, or one that starts DDP ranks
        return saved_score(Path(cfg.paths.output_dir)) if launch.run_own_process(cfg, "skinlesion.train") else None
    return execute(cfg)


def execute(cfg: DictConfig) -> float | None:
    """Run one job with status bookkeeping; returns the validation score (for Hydra sweepers).

    One process at a time per run directory: rank 0 holds the directory's lock (``.run.lock``, host, pid and start
    time inside) for the whole job. A second invocation on the same directory — a sweep rerun while some of its
    jobs still run — says in one line who holds it and does not start (in a sweep that point is skipped, and the
    report lists it as running)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    # DDP ranks > 0 re-run this job in the same directory: they follow rank 0, which alone holds the lock and
    # writes the run's bookkeeping.
    main_process = rank_zero_only.rank == 0
    lock = locks.FileLock(out / ".run.lock", "run directory")
    try:   # value types first: a bad command line stops before anything is written
        from skinlesion.config import validate_config
        validate_config(cfg)
        if main_process:
            try:
                lock.acquire(blocking=False)
            except locks.Held as e:
                raise RunInUse(f"{out} is in use by {locks.describe(e.holder)}; not started here (run it again "
                               "once that one has ended)") from None
        plan = resume.plan(cfg, out)   # new, already completed, or continuing from a checkpoint
    except SkinLesionError as e:
        lock.release()
        log.error("%s", e)
        if not multirun:
            raise SystemExit(f"error: {e}") from None
        return None
    try:
        return _execute(cfg, out, plan, hydra_cfg, multirun, main_process)
    finally:
        lock.release()


class RunInUse(SkinLesionError):
    """Another process is running the job of this run directory."""


def _execute(cfg: DictConfig, out: Path, plan: resume.ResumePlan, hydra_cfg, multirun: bool,
             main_process: bool) -> float | None:
    if plan.action == "skip":
        log.info("%s: this run has already completed; skipped (a new run needs another directory)", out)
        return saved_score(out)
    if plan.fresh and main_process:
        resume.clear_outputs(out)
    if main_process:
        checkpoints.remove_partial_files(out / "checkpoints")
    attempt = {"started": datetime.now().isoformat(), "host": platform.node(), "pid": os.getpid()}
    # One line per process that runs this job (DDP: one per rank), so a job launched twice would show.
    log.info("job %s: rank %d, pid %d, %s", out, rank_zero_only.rank, os.getpid(), plan.action)
    if plan.action == "resume":
        attempt["resumed_from"] = {"checkpoint": str(plan.checkpoint), "epochs_done": plan.epoch + 1,
                                   **({"training_finished": True} if plan.finished else {})}
        log.info("resuming from %s (%d epoch(s) done%s)", plan.checkpoint, plan.epoch + 1,
                 "; training is finished: evaluating" if plan.finished else "")
    record = {"status": "running", "error": None, **tracking.identity(cfg),
              "overrides": list(hydra_cfg.overrides.task) if hydra_cfg is not None else [],
              "wandb_id": tracking.wandb_run_id(cfg, plan.record),
              "attempts": [*plan.record.get("attempts", []), attempt]}

    def ended(status: str, error: str | None, in_attempt: dict, in_record: dict) -> None:
        attempt.update(outcome=status, **in_attempt)
        record.update(status=status, error=error, **in_record)
        if main_process:
            write_json(out / "run.json", record)
        tracking.finish_wandb(exit_code=0 if status == "completed" else 1)

    state: dict = {}
    # From the first write to the last the handlers are in place: a signal at any moment ends in a truthful record,
    # and a second one cannot cut that record short.
    with lifecycle.RunSignals() as signals:
        try:
            if main_process:
                write_json(out / "run.json", record)
                write_config(out / "config.yaml", cfg)
                write_json(out / "environment.json", environment(Path(cfg.paths.root_dir)))
            metrics = run(cfg, out, state, plan, wandb_id=record["wandb_id"])
        except (KeyboardInterrupt, SystemExit) as e:
            # Ctrl-C, SIGTERM, Lightning's own exit after it caught one of them, or submitit's exit once it has
            # requeued the job: which of them, the signal handlers know.
            trainer = state.get("trainer")
            where = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)} if trainer else None
            outcome = signals.outcome(e)
            ended(outcome.status, outcome.error, {"interrupted_at": where, **outcome.detail},
                  {"interrupted_at": where})
            at = f" at epoch {where['epoch']}, step {where['step']}" if where else ""
            if outcome.status == "requeued":
                log.warning("preempted or timed out%s; requeued, the next attempt resumes from the last checkpoint",
                            at)
                raise   # submitit's exit code tells its controller the job was requeued
            log.error("%s%s; run.json records status '%s'", outcome.error, at, outcome.status)
            raise SystemExit(lifecycle.exit_code(outcome)) from None
        except Exception as e:  # noqa: BLE001  (recorded, then reported in words or re-raised)
            message = _clean_message(e)
            from skinlesion.module import LossDiverged
            user = _user_error(e)
            diverged = {"failed_at": {"epoch": user.epoch, "step": user.step}} if isinstance(user, LossDiverged) else {}
            ended("failed", message, {}, diverged)
            if user is not None:
                log.error("%s", message)
                if not multirun:
                    raise SystemExit(f"error: {message}") from None
                return None
            if multirun:   # keep the sweep going; the report lists this run as failed
                log.error("run failed:\n%s", traceback.format_exc())
                return None
            raise
        if not main_process:
            tracking.finish_wandb()
            return None
        ended("completed", None, {"finished": datetime.now().isoformat()},
              {k: metrics[k] for k in ("main_metric", "params", "branches", "tasks", "reported", "world_size")})
    return _score(metrics)


def saved_score(out: Path) -> float | None:
    """The sweeper's value of a completed run directory (from its ``metrics.json``)."""
    return _score(json.loads((out / "metrics.json").read_text()))


def _score(metrics: dict) -> float | None:
    """The value a sweeper optimises: the reported output's validation score (test where there is no val)."""
    from skinlesion.evaluation.metrics import main_score
    part = "val" if "val" in metrics else "test"
    return main_score(metrics[part][metrics["reported"]], metrics["main_metric"])


if __name__ == "__main__":   # python -m skinlesion.train: how a sweep job runs as a process of its own
    main()
