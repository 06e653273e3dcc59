"""The ``python fusionm4net.py`` entry point (Hydra): one seed from nothing to P1/P2/P3, resumable."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import skinlesion.config  # noqa: F401  (registers the config resolvers and generated presets)
from skinlesion.errors import SkinLesionError

log = logging.getLogger("skinlesion")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fusionm4net")
def main(cfg: DictConfig) -> float | None:
    from skinlesion import launch
    from skinlesion.config import validate_config
    from skinlesion.fusionm4net.pipeline import run_pipeline

    if launch.needs_own_process(cfg):   # as in train.py: a sweep job on GPUs of a pool, or one that starts DDP ranks
        from skinlesion.train import saved_score
        out = Path(cfg.paths.output_dir)
        return saved_score(out) if launch.run_own_process(cfg, "skinlesion.fusionm4net.cli") else None
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        validate_config(cfg)
        result = run_pipeline(cfg)
    except SkinLesionError as e:
        log.error("%s", e)
        if multirun:   # this seed stops; the other jobs of the sweep go on
            return None
        raise SystemExit(f"error: {e}") from None
    if result is None:   # a DDP rank > 0: rank 0 reports
        return None
    from skinlesion.fusionm4net.stage2 import summary

    print(summary(result), flush=True)
    return result["avg_acc"]["val"]["p3"]


if __name__ == "__main__":   # python -m skinlesion.fusionm4net.cli: how a sweep job runs as a process of its own
    main()
