"""Training entry point: config -> DataModule -> LightningModule -> saved predictions -> metrics.

    python train.py data=pad_ufes model=image_only data.fold=3
    python train.py -m data=isic2019 data.fold=0,1,2,3,4

Every run directory gets: config.yaml (resolved), run.json (status, identity, parameter counts),
environment.json (package versions, git commit), folds.csv, checkpoints/, predictions/{val,test}.parquet,
metrics.json and csv/metrics.csv (per-epoch log). The status in run.json is ``running`` while the job runs,
then ``completed``, ``failed`` (with the error; a diverged loss also with its epoch and step) or
``interrupted`` (SIGTERM or Ctrl-C). Files are replaced atomically, so a killed run leaves no half-written one.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import skinlesion.config  # noqa: F401  (registers the config resolvers)
from skinlesion.errors import SkinLesionError
from skinlesion.provenance import environment, write_config, write_csv, write_json, write_npz, write_parquet
from skinlesion.swa import WeightAveraging

log = logging.getLogger("skinlesion")

# Not actionable for users: a Lightning/torch deprecation inside Lightning, and the notice that the module's
# (intended) uint8 -> float device transfer hook is used although a DataModule is passed.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")


def _identity(cfg: DictConfig) -> dict:
    return {"dataset": cfg.data.dataset, "model": cfg.model.name, "method": cfg.model.method,
            "backbone": cfg.backbone.name if cfg.model.net.arch != "meta_only" else "none",
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
    return module


def run(cfg: DictConfig, out: Path, state: dict | None = None) -> dict:
    """One training job; returns the metrics written to ``out/metrics.json``. ``state`` receives the trainer
    (so an interrupted job can say how far it got)."""
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
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=_loggers(cfg, ident))
    if state is not None:
        state["trainer"] = trainer
    trainer.fit(module, datamodule=dm)

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
                     "params": params, "branches": list(network.branches),
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
    try:   # value types first: a bad command line stops before anything is written
        from skinlesion.config import validate_config
        validate_config(cfg)
    except SkinLesionError as e:
        log.error("%s", e)
        if not multirun:
            raise SystemExit(f"error: {e}") from None
        return None
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # DDP ranks > 0 re-run this job in the same directory: only rank 0 writes the run's bookkeeping.
    main_process = rank_zero_only.rank == 0
    record = {"status": "running", "error": None, **_identity(cfg),
              "overrides": list(hydra_cfg.overrides.task) if hydra_cfg is not None else []}
    if main_process:
        write_json(out / "run.json", record)
        write_config(out / "config.yaml", cfg)
        write_json(out / "environment.json", environment(Path(cfg.paths.root_dir)))
    state: dict = {}
    try:
        with _interrupt_signals(state):
            metrics = run(cfg, out, state)
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C, SIGTERM, or Lightning's own exit after it caught one of them (it raises SystemExit).
        from lightning.pytorch.utilities.exceptions import SIGTERMException
        name = state.get("signal") or ("SIGTERM" if isinstance(e, SIGTERMException) else "SIGINT")
        trainer = state.get("trainer")
        where = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)} if trainer else None
        record.update(status="interrupted", error=f"interrupted by {name}", interrupted_at=where)
        if main_process:
            write_json(out / "run.json", record)
        _finish_wandb(exit_code=1)
        log.error("interrupted by %s%s; run.json records status 'interrupted'", name,
                  f" at epoch {where['epoch']}, step {where['step']}" if where else "")
        raise SystemExit(128 + getattr(signal, name, signal.SIGTERM).value) from None
    except Exception as e:  # noqa: BLE001  (recorded, then reported in words or re-raised)
        message = _clean_message(e)
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
    record.update(status="completed", **{k: metrics[k] for k in ("main_metric", "params", "branches", "tasks",
                                                                  "reported")})
    write_json(out / "run.json", record)
    from skinlesion.evaluation.metrics import main_score
    part = "val" if "val" in metrics else "test"
    return main_score(metrics[part][metrics["reported"]], metrics["main_metric"])


def _finish_wandb(exit_code: int | None = None) -> None:
    # Sequential sweeps run every job in one process: close the W&B run so each job gets its own.
    if "wandb" in sys.modules:
        import wandb
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
