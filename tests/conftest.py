"""Session fixtures: generated datasets in the official layouts (helpers live in ``skinlesion.testing``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from skinlesion.data.synthetic import generate


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
