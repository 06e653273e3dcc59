"""Skin-lesion classification with image-metadata fusion: training (``python train.py``), reporting
(``python report.py``) and a Python API.

    from skinlesion import load_run
    run = load_run("outputs/train/<date>/<time>")
    frame = run.predict(partition="test")

Names are imported on first use, so ``import skinlesion`` (and the torch-free evaluation package) stays light.
"""
from __future__ import annotations

import importlib

_LAZY = {"load_run": "skinlesion.run", "Run": "skinlesion.run"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skinlesion' has no attribute {name!r}")
