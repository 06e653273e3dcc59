"""Session fixtures: generated datasets in the official layouts (helpers live in ``skinlesion.testing``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from skinlesion.data.synthetic import generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one compute thread per test worker (and per command a test starts): the workers already share the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def uninterrupted(pad_root, tmp_path_factory) -> Path:
    """A tiny four-epoch run from the command line, never stopped: what resumed and requeued runs must match."""
    import sys

    from skinlesion.testing import four_epochs, run_command

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    cmd = [sys.executable, "train.py", *four_epochs(pad_root, run_dir.parent / "cache"), f"hydra.run.dir={run_dir}"]
    proc = run_command(cmd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def fusionm4net_run(derm7pt_root, tmp_path_factory) -> tuple[Path, dict]:
    """One FusionM4Net seed on generated derm7pt data (tiny settings, image cache on, two loader workers): its run
    directory, with ``stage1/`` inside, and the stage-2 result. Tests that change it restore it."""
    from skinlesion.fusionm4net.pipeline import run_pipeline
    from skinlesion.testing import FUSIONM4NET_CACHED, fusionm4net_cfg

    out = tmp_path_factory.mktemp("fm4")
    return out, run_pipeline(fusionm4net_cfg(derm7pt_root, out, *FUSIONM4NET_CACHED))
