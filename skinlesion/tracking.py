"""Experiment tracking: a run's identity (dataset, method, backbone, fold, seed), its loggers, and its one W&B run.

A run keeps one W&B run id in ``run.json`` (``wandb_id``) for its whole life: every later attempt — a resume, a
requeue on a cluster — reopens that W&B run with ``resume="allow"``, so a requeued job's curves continue in one
place and dashboards that compare ablations count it once. Only rank 0 of a DDP job talks to W&B (Lightning's
W&B logger is rank-zero only).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def identity(cfg: DictConfig) -> dict:
    """What a run is, as recorded in run.json and used to name and tag its W&B run."""
    from skinlesion.evaluation.stats import NO_BACKBONE

    return {"dataset": cfg.data.dataset, "model": cfg.model.name, "method": method_label(cfg),
            "backbone": cfg.backbone.name if cfg.model.net.arch != "meta_only" else NO_BACKBONE,
            "drop_path_rate": cfg.backbone.get("drop_path_rate") if cfg.model.net.arch != "meta_only" else None,
            "fold": None if cfg.data.dataset == "derm7pt" else int(cfg.data.fold), "seed": int(cfg.seed),
            "experiment": cfg.get("group"), "reported": cfg.model.report,
            **({"role": cfg.role} if cfg.get("role") else {})}   # e.g. FusionM4Net's stage-1 sub model


def method_label(cfg: DictConfig) -> str:
    """The method's display name; a run trained with input dropout is another method, named with it (e.g.
    ``JF-CAT[meta drop 0.3]``), so tables and statistics keep the two apart."""
    from skinlesion.config import dropped_inputs

    drop = dropped_inputs(cfg)
    return cfg.model.method + ("[" + ", ".join(f"{x} drop {p:g}" for x, p in sorted(drop.items())) + "]"
                               if drop else "")


def _tags(ident: dict, extra) -> list[str]:
    return [*extra, f"dataset:{ident['dataset']}", f"backbone:{ident['backbone']}",
            f"method:{ident['method']}", f"fold:{ident['fold']}", f"seed:{ident['seed']}"]


def uses_wandb(cfg: DictConfig) -> bool:
    return any(lcfg is not None and "WandbLogger" in lcfg._target_ for lcfg in (cfg.get("logger") or {}).values())


def wandb_run_id(cfg: DictConfig, record: dict) -> str | None:
    """The run's W&B id: the one an earlier attempt recorded in run.json, else a new one (None without W&B)."""
    if not uses_wandb(cfg):
        return None
    if record.get("wandb_id"):
        return str(record["wandb_id"])
    import secrets

    return secrets.token_hex(4)   # W&B run ids: short, lower-case letters and digits


def offline_without_credentials() -> None:
    if not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file()):
        os.environ.setdefault("WANDB_MODE", "offline")   # no credentials: log locally, sync later


def loggers(cfg: DictConfig, ident: dict, wandb_id: str | None = None) -> list:
    """The configured Lightning loggers; the W&B one opens (or reopens) the run ``wandb_id``."""
    out = []
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is None:
            continue
        if "WandbLogger" in lcfg._target_:
            offline_without_credentials()
            run_name = f"{ident['method']}-{ident['backbone']}-f{ident['fold']}-s{ident['seed']}"
            # Runs of one sweep share the experiment's group; single runs group by dataset and method.
            group = lcfg.get("group") or f"{ident['dataset']}-{ident['method']}"
            logger = hydra.utils.instantiate(lcfg, tags=_tags(ident, cfg.tags), name=run_name, group=group,
                                             offline=lcfg.offline or os.environ.get("WANDB_MODE") == "offline",
                                             **({"id": wandb_id, "resume": "allow"} if wandb_id else {}))
            # The resolved config, so runs can be filtered and compared by any hyperparameter.
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            out.append(logger)
        else:
            out.append(hydra.utils.instantiate(lcfg))
    return out


def wandb_summary(metrics: dict) -> dict[str, float | None]:
    """Final (TTA) metrics as flat W&B summary keys: ``final/<part>/<output>/<task>/<bac|acc|auc>``, the
    averages ``final/<part>/<output>/<avg_acc|avg_bac|avg_auc>``, ``final/<part>/main`` (the reported
    output's ranking score) and, where metrics.json has them, the reported output's ``final/<part>/ece`` (and
    ``ece_ts`` after temperature scaling), ``final/<part>/worst_group_gap`` and ``final/<part>/group_gap/<attr>``."""
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
    cal, sub = metrics.get("calibration") or {}, metrics.get("subgroups") or {}
    for key in ("ece", "ece_ts"):   # the reported output's first task (final_evaluation.case_summary)
        if cal.get(key) is not None:
            out[f"final/{cal['split']}/{key}"] = cal[key]
    if sub.get("worst_group_gap") is not None:
        out[f"final/{sub['split']}/worst_group_gap"] = sub["worst_group_gap"]
        for attr, v in sub.get("attributes", {}).items():
            if v.get("gap") is not None:
                out[f"final/{sub['split']}/group_gap/{attr}"] = v["gap"]
    return out


def log_final_metrics(trainer, metrics: dict) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(wandb_summary(metrics))


def finish_wandb(exit_code: int | None = None) -> None:
    # Sequential sweeps run every job in one process: close the W&B run so each job gets its own.
    if "wandb" in sys.modules:
        import wandb
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
