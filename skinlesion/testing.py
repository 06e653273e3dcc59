"""Helpers for tests and notebooks: the real files beside a checkout, and an in-process training run composed
from the same configs as ``python train.py`` (no Hydra app, no subprocess)."""
from __future__ import annotations

import json
from pathlib import Path

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


def run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())
