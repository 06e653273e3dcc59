"""albumentations pipelines (METHODS §2.4) and the test-time views (A-16)."""
from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def geometric(image_size: int, train: bool, aug: dict, extra_keys: Sequence[str] = ()) -> A.Compose:
    """Resize (no crop) and, for training, the geometric block; extra keys get the same parameters."""
    ops: list = [A.Resize(image_size, image_size)]
    if train and aug.get("p", 0) > 0:
        block = []
        if aug.get("flips", True):
            block += [A.VerticalFlip(p=0.5), A.HorizontalFlip(p=0.5)]
        if aug.get("affine", True):
            block.append(A.Affine(translate_percent=(-aug.get("shift", 0.0625), aug.get("shift", 0.0625)),
                                  scale=(1 - aug.get("scale", 0.5), 1 + aug.get("scale", 0.5)),
                                  rotate=(-aug.get("rotate", 45), aug.get("rotate", 45)), p=0.5))
        if aug.get("rotate90", True):
            block.append(A.RandomRotate90(p=0.5))
        ops.append(A.Sequential(block, p=aug["p"]))
    return A.Compose(ops, additional_targets={k: "image" for k in extra_keys})


def photometric(train: bool, aug: dict) -> A.Compose | None:
    """Brightness/contrast, drawn independently per image of a pair (chapters 5-6; off in chapter 4)."""
    if not (train and aug.get("p", 0) > 0 and aug.get("brightness_contrast", False)):
        return None
    return A.Compose([A.RandomBrightnessContrast(p=0.5 * aug["p"])])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW uint8. Batches travel as uint8 (a quarter of float32's bytes through worker IPC
    and host-to-device copies) and are normalised on the device (:func:`normalize_batch`)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def normalize_batch(x: torch.Tensor, normalize: str = "imagenet") -> torch.Tensor:
    """(B,3,H,W) uint8 RGB -> float. ``raw_bgr`` reproduces the reference code's BGR/255 input."""
    if normalize == "imagenet":
        mean = x.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return (x.float().div_(255.0) - mean).div_(std)
    if normalize == "raw_bgr":
        return x.flip(1).float().div_(255.0)
    raise ValueError(f"data.normalize={normalize!r}: expected 'imagenet' or 'raw_bgr'")


TTA_VIEWS = {
    "identity": lambda x: x,
    "vflip": lambda x: x.flip(-2),
    "hflip": lambda x: x.flip(-1),
    "vhflip": lambda x: x.flip(-2, -1),
    "rot90_cw": lambda x: torch.rot90(x, -1, dims=(-2, -1)),
    "rot90_ccw": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}
TTA_SETS = {"none": ("identity",), "flips": ("identity", "vflip", "hflip", "vhflip"), "six": tuple(TTA_VIEWS)}


def tta_views(name: str) -> tuple[str, ...]:
    if name not in TTA_SETS:
        raise ValueError(f"tta={name!r}: expected one of {sorted(TTA_SETS)}")
    return TTA_SETS[name]
