"""Dataset readers, splits, metadata encodings and the LightningDataModules.

``from skinlesion.data import PadUfes20DataModule, Isic2019DataModule, Derm7ptDataModule`` gives the
DataModules; they are loaded on first use so that the light modules (tasks, splits, readers) do not pull in
Lightning.
"""
from __future__ import annotations

_DATAMODULES = ("SkinLesionDataModule", "PadUfes20DataModule", "Isic2019DataModule", "Derm7ptDataModule")
__all__ = list(_DATAMODULES)


def __getattr__(name: str):
    if name in _DATAMODULES:
        from skinlesion.data import datamodule
        return getattr(datamodule, name)
    raise AttributeError(f"module 'skinlesion.data' has no attribute {name!r}")
