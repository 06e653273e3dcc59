"""Training entry point: config -> DataModule -> LightningModule -> saved predictions -> metrics.

    python train.py data=pad_ufes model=image_only data.fold=3
    python train.py -m data=isic2019 data.fold=0,1,2,3,4

Every run directory gets: config.yaml (resolved), run.json (status, identity, parameter counts),
environment.json (package versions, git commit), folds.csv, checkpoints/, predictions/{val,test}.parquet,
metrics.json and csv/metrics.csv (per-epoch log). The status in run.json is ``running`` while the job runs,
then ``completed``, ``failed`` (with the error; a diverged loss also with its epoch and step) or
``interrupted`` (SIGTERM or Ctrl-C) or ``requeued`` (a SLURM preemption/timeout; the job runs again). Files are
replaced atomically, so a killed run leaves no half-written one.

Running a job again in the same directory resumes it from ``checkpoints/last.ckpt``, or skips it when it has
completed (``skinlesion.resume``); ``ckpt_path=FILE`` resumes from a given checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import signal
import sys
import traceback
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import skinlesion.config  # noqa: F401  (registers the config resolvers)
from skinlesion import resume
from skinlesion.errors import SkinLesionError
from skinlesion.provenance import environment, write_config, write_csv, write_json, write_npz, write_parquet
from skinlesion.swa import WeightAveraging

log = logging.getLogger("skinlesion")

# Not actionable for users: a Lightning/torch deprecation inside Lightning, and the notice that the module's
# (intended) uint8 -> float device transfer hook is used although a DataModule is passed.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")
# A resumed run's CSV log directory exists: its earlier rows are set aside and merged back (skinlesion.resume).
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def _identity(cfg: DictConfig) -> dict:
    from skinlesion.evaluation.stats import NO_BACKBONE

    return {"dataset": cfg.data.dataset, "model": cfg.model.name, "method": cfg.model.method,
            "backbone": cfg.backbone.name if cfg.model.net.arch != "meta_only" else NO_BACKBONE,
            "drop_path_rate": cfg.backbone.get("drop_path_rate") if cfg.model.net.arch != "meta_only" else None,
            "fold": None if cfg.data.dataset == "derm7pt" else int(cfg.data.fold), "seed": int(cfg.seed),
            "experiment": cfg.get("group"), "reported": cfg.model.report,
            **({"role": cfg.role} if cfg.get("role") else {})}   # e.g. FusionM4Net's stage-1 sub model


def _tags(ident: dict, extra) -> list[str]:
    return [*extra, f"dataset:{ident['dataset']}", f"backbone:{ident['backbone']}",
            f"method:{ident['method']}", f"fold:{ident['fold']}", f"seed:{ident['seed']}"]


def _loggers(cfg: DictConfig, ident: dict) -> list:
    loggers = []
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is None:
            continue
        if "WandbLogger" in lcfg._target_:
            if not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file()):
                os.environ.setdefault("WANDB_MODE", "offline")   # no credentials: log locally, sync later
            run_name = f"{ident['method']}-{ident['backbone']}-f{ident['fold']}-s{ident['seed']}"
            # Runs of one sweep share the experiment's group; single runs group by dataset and method.
            group = lcfg.get("group") or f"{ident['dataset']}-{ident['method']}"
            logger = hydra.utils.instantiate(lcfg, tags=_tags(ident, cfg.tags), name=run_name, group=group,
                                             offline=lcfg.offline or os.environ.get("WANDB_MODE") == "offline")
            # The resolved config, so runs can be filtered and compared by any hyperparameter.
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            loggers.append(logger)
        else:
            loggers.append(hydra.utils.instantiate(lcfg))
    return loggers


def wandb_summary(metrics: dict) -> dict[str, float | None]:
    """Final (TTA) metrics as flat W&B summary keys: ``final/<part>/<output>/<task>/<bac|acc|auc>``, the
    averages ``final/<part>/<output>/<avg_acc|avg_bac|avg_auc>`` and ``final/<part>/main`` (the reported
    output's ranking score)."""
    from skinlesion.evaluation.metrics import main_score

    out: dict[str, float | None] = {}
    for part in ("val", "test"):
        if part not in metrics:
            continue
        for combo, m in metrics[part].items():
            for task, tm in m["tasks"].items():
                for k in ("bac", "acc", "auc"):
                    out[f"final/{part}/{combo}/{task}/{k}"] = tm[k]
            for k in ("avg_acc", "avg_bac", "avg_auc"):
                if m.get(k) is not None:
                    out[f"final/{part}/{combo}/{k}"] = m[k]
        out[f"final/{part}/main"] = main_score(metrics[part][metrics["reported"]], metrics["main_metric"])
    return out


def prepare_data(cfg: DictConfig):
    """The DataModule, set up for the configured model (checked against the dataset before any file is read)."""
    from skinlesion.models import required_inputs

    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.set_input_keys(required_inputs(cfg.model.net, dm.info))
    dm.setup()
    return dm


def build_module(cfg: DictConfig, dm, pretrained: bool = True):
    """The configured network inside the LightningModule, with class weights from ``dm``'s training split.
    ``pretrained=False`` skips loading ImageNet weights (a checkpoint will supply them)."""
    from skinlesion.models import build_network
    from skinlesion.module import MultiTaskModule
    from skinlesion.predict import inference_payload

    backbone, net_cfg = cfg.backbone, cfg.model.net
    if not pretrained:
        backbone = OmegaConf.merge(backbone, {"pretrained": False})
        net_cfg = OmegaConf.to_container(net_cfg, resolve=True)
        if net_cfg.get("clinic_backbone"):
            net_cfg["clinic_backbone"]["pretrained"] = False
    network = build_network(net_cfg, backbone, dm.info)
    module = MultiTaskModule(
        network, dm.info, branch_weights=OmegaConf.to_container(cfg.model.branch_weights, resolve=True),
        report=cfg.model.report, monitor=cfg.model.get("monitor"), optim=cfg.optim.optimizer,
        scheduler=cfg.optim.scheduler,
        class_counts=dm.class_counts() if cfg.class_weighted else None, tta=cfg.tta,
        save_features=cfg.save_features, normalize=dm.normalize)
    module.case_ids = dm.table.case_ids
    module.batch_augment = getattr(dm, "batch_augment", None)   # data.augment_on=device: training batches
    module.inference_payload = inference_payload(cfg, dm, module)   # saved into every checkpoint
    return module


def run(cfg: DictConfig, out: Path, state: dict | None = None, resume_from: Path | None = None,
        resume_epoch: int | None = None) -> dict:
    """One training job; returns the metrics written to ``out/metrics.json``. ``state`` receives the trainer
    (so an interrupted job can say how far it got); ``resume_from`` continues training from that checkpoint, whose
    last completed epoch is ``resume_epoch``."""
    from skinlesion.evaluation.metrics import evaluate_predictions
    from skinlesion.models import parameter_report

    L.seed_everything(cfg.seed, workers=True)
    dm = prepare_data(cfg)
    module = build_module(cfg, dm)
    network = module.network
    params = parameter_report(network, cfg.backbone, dm.info)
    log.info("parameters: %s", params)
    if rank_zero_only.rank == 0:
        write_csv(out / "folds.csv", dm.fold_frame())

    ident = _identity(cfg)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):   # the switch wins over the configured bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks.append(resume.RandomState())
    loggers = _loggers(cfg, ident)
    csv_dirs = [Path(lg.log_dir) for lg in loggers if isinstance(lg, CSVLogger)]
    if resume_from is not None and rank_zero_only.rank == 0:
        for d in csv_dirs:
            resume.set_aside_epoch_log(d, resume_epoch)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=_cluster_plugins(),
                                      **_ddp_strategy(cfg, module))
    if state is not None:
        state["trainer"] = trainer
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from is not None else None)
    if trainer.global_rank == 0:
        for d in csv_dirs:
            resume.merge_epoch_log(d)

    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    # With weight averaging the averaged weights are evaluated, not the best-validation checkpoint.
    swa = next((c for c in callbacks if isinstance(c, WeightAveraging)), None)
    ckpt_path = swa.checkpoint_path if swa is not None and swa.checkpoint_path else best_path
    module.eval_views = module.tta
    metrics: dict = {"main_metric": dm.info.main_metric, "reported": cfg.model.report,
                     "best_checkpoint": best_path, "evaluated_checkpoint": ckpt_path,
                     "weight_averaging": None if swa is None else {"states": swa.n_averaged,
                                                                   "last_epochs": swa.last_epochs},
                     "params": params, "branches": list(network.branches), "world_size": trainer.world_size,
                     "tasks": {t.name: list(t.classes) for t in dm.info.tasks}}
    (out / "predictions").mkdir(exist_ok=True)
    for part in ("val", "test", "holdout"):
        if not dm.has_partition(part):
            continue
        loader = dm.eval_dataloader(part)
        trainer.test(module, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        if trainer.global_rank != 0:
            continue
        frame = module.predictions
        write_parquet(out / "predictions" / f"{part}.parquet", frame)
        if module.features is not None:
            write_npz(out / "predictions" / f"{part}_features.npz", case_id=frame["case_id"].to_numpy(),
                      features=module.features, target=frame.iloc[:, 1].to_numpy())
        combos = list(dict.fromkeys([*network.branches, *(["all", "all_logits"] if len(network.branches) > 1 else []),
                                     cfg.model.report]))
        metrics[part] = {c: evaluate_predictions(frame, combination=c, dataset=dm.info.dataset) for c in combos}
    if trainer.global_rank == 0 and cfg.model.get("search") == "scheme1" and "val" in metrics:
        _fusion_scheme1(out, metrics, dm.info.dataset)
    if trainer.global_rank == 0:
        write_json(out / "metrics.json", metrics)
        print(results_table(metrics, dm.info), flush=True)
        _wandb_finals(trainer, metrics)
    return metrics


def _ddp_strategy(cfg: DictConfig, module) -> dict:
    """A branch trained with loss weight 0 (Table 5.17's W=0 and W=0.5 rows) still predicts, but its head gets no
    gradient; plain DDP stops at such parameters, so DDP is told to expect them. Its gradients stay absent, as on
    one device, so the result is the same."""
    if str(cfg.trainer.get("strategy")) == "ddp" and not all(module.branch_weights.values()):
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}


def _cluster_plugins() -> list:
    """On SLURM, submitit owns the preemption/timeout signal and the requeue (launcher=slurm); Lightning's own
    SLURM auto-requeue would answer the same job's signals a second time, so it is switched off."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def _fusion_scheme1(out: Path, metrics: dict, dataset: str) -> None:
    """P = W_D·P_derm + W_C·P_clinic + W_F·P_fusion with the weights that maximise validation AVG ACC over the
    simplex grid, applied unchanged to test; the weighted output becomes the reported one (``searched``)."""
    from skinlesion.evaluation.metrics import evaluate_predictions
    from skinlesion.evaluation.predictions import read_predictions
    from skinlesion.evaluation.search import search_run

    found = search_run(out)
    metrics["search"] = {k: found[k] for k in ("kind", "branches", "weights", "grid_n", "score", "index",
                                               "n_candidates")}
    for part in ("val", "test"):
        path = out / "search" / f"{part}_fused.parquet"
        if part in metrics and path.is_file():
            metrics[part]["searched"] = evaluate_predictions(read_predictions(path), "searched", dataset)
    metrics["reported"] = "searched"


def _wandb_finals(trainer, metrics: dict) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(wandb_summary(metrics))


def results_table(metrics: dict, info) -> str:
    """Per-task results of the reported output, with the chance level of each task for comparison."""
    rep = metrics["reported"]
    parts = [p for p in ("val", "test") if p in metrics]
    head = f"{'task':<12}{'chance':>8}" + "".join(f"{p + ' ' + m:>10}" for p in parts for m in ("BAC", "ACC", "AUC"))
    lines = [f"Results ({rep} output, TTA-averaged; BAC/ACC/AUC in %)", head, "-" * len(head)]
    for t in info.tasks:
        cells = []
        for p in parts:
            tm = metrics[p][rep]["tasks"][t.name]
            cells += [tm["bac"], tm["acc"], tm["auc"]]
        lines.append(f"{t.name:<12}{100 / t.num_classes:>8.1f}" +
                     "".join(f"{100 * v:>10.1f}" if v is not None else f"{'n/a':>10}" for v in cells))
    if len(info.tasks) > 1:
        m = {p: metrics[p][rep] for p in parts}
        lines.append("-" * len(head))
        lines.append(f"{'AVG ACC':<12}{'':>8}" + "".join(f"{'':>10}{100 * m[p]['avg_acc']:>10.1f}{'':>10}"
                                                         for p in parts))
        if info.dataset == "derm7pt" and all(m[p].get("avg_auc") is not None for p in parts):
            lines.append(f"{'AVG AUC(17)':<12}{'':>8}" + "".join(f"{'':>20}{100 * m[p]['avg_auc']:>10.1f}"
                                                                 for p in parts))
    return "\n".join(lines)


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


class _Interrupted(KeyboardInterrupt):
    """SIGTERM turned into the same shutdown path as Ctrl-C."""


@contextmanager
def _interrupt_signals(received: dict):
    """Record SIGTERM/SIGINT and stop the job by an exception, so the run can be marked ``interrupted``.
    (Lightning stops its loops on SIGTERM as well; the exception covers data setup and the final tests.)"""
    def handler(signum, frame):
        received.setdefault("signal", signal.Signals(signum).name)
        raise _Interrupted(received["signal"])

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:   # not the main thread (e.g. a notebook worker): leave the handlers alone
        pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def execute(cfg: DictConfig) -> float | None:
    """Run one job with status bookkeeping; returns the validation score (for Hydra sweepers)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    try:   # value types first: a bad command line stops before anything is written
        from skinlesion.config import validate_config
        validate_config(cfg)
        plan = resume.plan(cfg, out)   # new, already completed, or continuing from a checkpoint
    except SkinLesionError as e:
        log.error("%s", e)
        if not multirun:
            raise SystemExit(f"error: {e}") from None
        return None
    if plan.action == "skip":
        log.info("%s: this run has already completed; skipped (a new run needs another directory)", out)
        return saved_score(out)
    out.mkdir(parents=True, exist_ok=True)
    # DDP ranks > 0 re-run this job in the same directory: only rank 0 writes the run's bookkeeping.
    main_process = rank_zero_only.rank == 0
    if plan.fresh and main_process:
        resume.clear_outputs(out)
    attempts = plan.record.get("attempts", [])
    attempt = {"started": datetime.now().isoformat(), "host": platform.node(), "pid": os.getpid()}
    # One line per process that runs this job (DDP: one per rank), so a job launched twice would show.
    log.info("job %s: rank %d, pid %d, %s", out, rank_zero_only.rank, os.getpid(), plan.action)
    if plan.action == "resume":
        attempt["resumed_from"] = {"checkpoint": str(plan.checkpoint), "epochs_done": plan.epoch + 1}
        log.info("resuming from %s (%d epoch(s) done)", plan.checkpoint, plan.epoch + 1)
    record = {"status": "running", "error": None, **_identity(cfg),
              "overrides": list(hydra_cfg.overrides.task) if hydra_cfg is not None else [],
              "attempts": [*attempts, attempt]}
    if main_process:
        write_json(out / "run.json", record)
        write_config(out / "config.yaml", cfg)
        write_json(out / "environment.json", environment(Path(cfg.paths.root_dir)))
    state: dict = {}
    try:
        with _interrupt_signals(state):
            metrics = run(cfg, out, state, resume_from=plan.checkpoint, resume_epoch=plan.epoch)
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C, SIGTERM, Lightning's own exit after it caught one of them (it raises SystemExit), or submitit's
        # exit after a preemption/timeout signal, once it has requeued the job.
        from lightning.pytorch.utilities.exceptions import SIGTERMException
        trainer = state.get("trainer")
        where = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)} if trainer else None
        requeued = (isinstance(e, SystemExit) and not isinstance(e, SIGTERMException)
                    and bool(os.environ.get("SUBMITIT_EXECUTOR")))
        name = None if requeued else state.get("signal") or ("SIGTERM" if isinstance(e, SIGTERMException) else "SIGINT")
        status = "requeued" if requeued else "interrupted"
        attempt.update(outcome=status, interrupted_at=where)
        record.update(status=status, error=None if requeued else f"interrupted by {name}", interrupted_at=where)
        if main_process:
            write_json(out / "run.json", record)
        _finish_wandb(exit_code=1)
        at = f" at epoch {where['epoch']}, step {where['step']}" if where else ""
        if requeued:
            log.warning("preempted or timed out%s; requeued, the next attempt resumes from the last checkpoint", at)
            raise   # submitit's exit code tells its controller the job was requeued
        log.error("interrupted by %s%s; run.json records status 'interrupted'", name, at)
        raise SystemExit(128 + getattr(signal, name, signal.SIGTERM).value) from None
    except Exception as e:  # noqa: BLE001  (recorded, then reported in words or re-raised)
        message = _clean_message(e)
        attempt.update(outcome="failed")
        record.update(status="failed", error=message)
        from skinlesion.module import LossDiverged
        user = _user_error(e)
        if isinstance(user, LossDiverged):
            record["failed_at"] = {"epoch": user.epoch, "step": user.step}
        if main_process:
            write_json(out / "run.json", record)
        _finish_wandb(exit_code=1)
        if user is not None:
            log.error("%s", message)
            if not multirun:
                raise SystemExit(f"error: {message}") from None
            return None
        if multirun:   # keep the sweep going; the report lists this run as failed
            log.error("run failed:\n%s", traceback.format_exc())
            return None
        raise
    _finish_wandb()
    if not main_process:
        return None
    attempt.update(outcome="completed", finished=datetime.now().isoformat())
    record.update(status="completed", **{k: metrics[k] for k in ("main_metric", "params", "branches", "tasks",
                                                                  "reported", "world_size")})
    write_json(out / "run.json", record)
    return _score(metrics)


def saved_score(out: Path) -> float | None:
    """The sweeper's value of a completed run directory (from its ``metrics.json``)."""
    return _score(json.loads((out / "metrics.json").read_text()))


def _score(metrics: dict) -> float | None:
    """The value a sweeper optimises: the reported output's validation score (test where there is no val)."""
    from skinlesion.evaluation.metrics import main_score
    part = "val" if "val" in metrics else "test"
    return main_score(metrics[part][metrics["reported"]], metrics["main_metric"])


def _finish_wandb(exit_code: int | None = None) -> None:
    # Sequential sweeps run every job in one process: close the W&B run so each job gets its own.
    if "wandb" in sys.modules:
        import wandb
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


if __name__ == "__main__":   # python -m skinlesion.train: how a sweep job runs as a process of its own
    main()
