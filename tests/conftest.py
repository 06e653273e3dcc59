"""Shared fixtures: the real files of ../shared/data, generated datasets in the official layouts, and an
in-process training run composed from the same configs as ``python train.py``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from skinlesion.data.synthetic import generate
from skinlesion.train import CONFIG_DIR, execute

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tiny settings every training test starts from: CPU, test backbone, small images, one epoch.
TINY = ["backbone=test_resnet", "trainer=cpu", "trainer.max_epochs=1", "data.image_size=32",
        "data.batch_size=32", "data.num_workers=0", "data.progress=false", "tta=flips",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "logger=csv"]


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file {path} not available")
    return path


@pytest.fixture(scope="session")
def pad_root(tmp_path_factory) -> Path:
    return generate("pad_ufes", tmp_path_factory.mktemp("pad") / "pad-ufes-20", n=240, size=32, seed=1,
                    progress=False)


@pytest.fixture(scope="session")
def isic_root(tmp_path_factory) -> Path:
    return generate("isic2019", tmp_path_factory.mktemp("isic") / "isic2019", n=240, size=32, seed=2,
                    progress=False)


@pytest.fixture(scope="session")
def derm7pt_root(tmp_path_factory) -> Path:
    return generate("derm7pt", tmp_path_factory.mktemp("d7") / "release_v0", n=200, size=32, seed=3,
                    progress=False)


@pytest.fixture(scope="session")
def roots(pad_root, isic_root, derm7pt_root) -> dict[str, Path]:
    return {"pad_ufes": pad_root, "isic2019": isic_root, "derm7pt": derm7pt_root, "derm7pt_ch4": derm7pt_root}


def compose_cfg(overrides: list[str], out: Path, with_hydra: bool = False):
    """The config ``python train.py OVERRIDES`` would run (``with_hydra``: including the hydra node)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.root_dir={REPO}", f"paths.output_dir={out}",
                                           f"paths.cache_dir={out}/cache"], return_hydra_config=with_hydra)


def train(overrides: list[str], out: Path, tiny: bool = True) -> Path:
    """Compose like ``python train.py OVERRIDES`` and run the job in-process; returns the run dir."""
    cfg = compose_cfg([*(TINY if tiny else []), *overrides], out)
    execute(cfg)
    return out


def run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())
