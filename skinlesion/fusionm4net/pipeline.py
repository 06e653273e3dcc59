"""FusionM4Net for one seed, from nothing to P1/P2/P3 (``python fusionm4net.py``):

    stage1/main   FusionNet on all training cases           -> predictions/{val,test}.parquet
                  (or a one-image network: the two-stage C-M / D-M baselines, +variant=two_stage_cm)
    stage1/sub    FusionNet on the first half of the training
                  index file (file order)                    -> predictions/holdout.parquet (the other half)
    <run dir>     stage 2 on the two (CPU, seconds)          -> predictions with branches p1, p2, p3

Rerunning the same command (the same run directory, or the same ``stage1_dir``) skips the stage-1 runs whose
run.json says completed and redoes only what is missing (an interrupted one resumes from its last checkpoint). Jobs
that share a stage 1 (``stage1_dir``) take turns on each run under a lock: one trains it, the others reuse it. A
failed stage-1 run stops this seed with its error; other seeds of a sweep are unaffected.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from skinlesion.errors import SkinLesionError
from skinlesion.resume import run_lock

log = logging.getLogger("skinlesion")


class StageFailed(SkinLesionError):
    """A stage-1 run did not complete."""


def finished(run_dir: Path, needs: str) -> bool:
    """Whether ``run_dir`` holds a completed run with ``predictions/<needs>.parquet``."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") == "completed" and (run_dir / "predictions" / f"{needs}.parquet").is_file()


def stage1_config(cfg: DictConfig, out: Path, sub: bool) -> DictConfig:
    """The training config of one stage-1 run: the same settings, its own directory (and for the sub model the
    held-out second half and its own seed)."""
    run = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(run):
        for key in ("stage1_dir", "sub_seed", "cluster", "stage2"):
            run.pop(key, None)
        run.paths.output_dir = str(out)
        run.model.search = "none"   # Fusion Scheme 1 is stage 2's, with the main model's weights
        if sub:
            run.data.hold_out = "second_half"
            run.seed = int(cfg.sub_seed)
            run.role = "stage1-sub"
        else:
            run.role = "stage1-main"
    return run


def run_pipeline(cfg: DictConfig) -> dict | None:
    from lightning.pytorch.utilities import rank_zero_only

    from skinlesion.fusionm4net.stage2 import run_stage2
    from skinlesion.train import execute

    out = Path(cfg.paths.output_dir)
    stage1 = Path(cfg.stage1_dir) if cfg.get("stage1_dir") else out / "stage1"
    runs = {"main": (stage1 / "main", False, "test"), "sub": (stage1 / "sub", True, "holdout")}
    for name, (run_dir, sub, needs) in runs.items():
        with run_lock(run_dir):   # jobs sharing this stage 1 (one seed's classifiers) train it once
            if finished(run_dir, needs):
                log.info("stage 1 %s: finished run in %s, skipped", name, run_dir)
                continue
            log.info("stage 1 %s: training in %s", name, run_dir)
            try:
                execute(stage1_config(cfg, run_dir, sub))
            except SystemExit as e:   # execute's one-line error for a single run
                raise StageFailed(f"stage 1 {name} run failed ({run_dir}): {str(e).removeprefix('error: ')}") from None
        if rank_zero_only.rank != 0:   # a DDP rank > 0 has done its part; rank 0 writes (and checks) the results
            continue
        if not finished(run_dir, needs):
            record = {}
            try:
                record = json.loads((run_dir / "run.json").read_text())
            except (OSError, ValueError):
                pass
            raise StageFailed(f"stage 1 {name} run failed ({run_dir}): {record.get('error') or 'no completed run'}; "
                              "rerun the same command to retry it")
    if rank_zero_only.rank != 0:   # a DDP rank > 0 only joins the stage-1 trainings; rank 0 does stage 2
        return None
    result = run_stage2(runs["main"][0], runs["sub"][0], out_dir=out, classifier=cfg.cluster, seed=int(cfg.seed),
                        grid_n=int(cfg.stage2.grid_n), method=str(cfg.stage2.get("method", "FusionM4Net")))
    log_wandb(cfg, result)
    return result


def log_wandb(cfg: DictConfig, result: dict) -> None:
    """With ``logger=wandb``: one W&B run for stage 2 (job type ``fusionm4net``) with the resolved config and the
    P1/P2/P3 metrics, searched weights and w in its summary, in the same group as the stage-1 runs."""
    lcfg = (cfg.get("logger") or {}).get("wandb")
    if not lcfg:
        return
    import os

    import wandb

    from skinlesion.tracking import offline_without_credentials, wandb_summary

    offline_without_credentials()
    method = str(cfg.stage2.get("method", "FusionM4Net"))
    metrics = result["metrics"]
    run = wandb.init(project=lcfg.get("project"), entity=lcfg.get("entity"), job_type="fusionm4net",
                     group=lcfg.get("group") or f"derm7pt-{method}", name=f"{method}-{cfg.cluster}-s{cfg.seed}",
                     dir=str(Path(cfg.paths.output_dir)), config=OmegaConf.to_container(cfg, resolve=True),
                     mode="offline" if lcfg.get("offline") or os.environ.get("WANDB_MODE") == "offline" else None,
                     reinit="finish_previous")
    run.summary.update({**wandb_summary(metrics), "fusion_scheme2/w": result["w"],
                        **{f"fusion_scheme1/{b}": w for b, w in result["weights"].items()}})
    wandb.finish()   # module-level, like the training runs (one W&B run per job)
