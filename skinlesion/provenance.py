"""What every run records about itself: package versions, git commit, host, run status."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("skinlesion", "torch", "torchvision", "lightning", "timm", "hydra-core", "omegaconf",
            "albumentations", "torchmetrics", "scikit-learn", "scipy", "numpy", "pandas", "pyarrow", "wandb")


def git_commit(cwd: Path | None = None) -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def environment(cwd: Path | None = None) -> dict:
    import torch
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "git": git_commit(cwd), "argv": sys.argv}


def write_json(path: Path, data: dict) -> None:
    """Write atomically so that an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
