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


def to_tensor(img: np.ndarray, normalize: str = "imagenet") -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32. ``raw_bgr`` reproduces the reference code's BGR/255 input.

    Done in numpy through a 256-entry lookup table: per-image torch ops pay thread-pool overhead that
    dominates at these sizes.
    """
    if normalize not in _LUT:
        raise ValueError(f"data.normalize={normalize!r}: expected 'imagenet' or 'raw_bgr'")
    lut = _LUT[normalize]                                  # (256, 3): value per uint8 level and channel
    chw = np.stack([lut[img[..., c], c] for c in range(3)])
    return torch.from_numpy(chw[::-1].copy() if normalize == "raw_bgr" else chw)


_LEVELS = np.arange(256, dtype=np.float32)[:, None] / 255.0
_LUT = {"imagenet": ((_LEVELS - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
                     ).astype(np.float32),
        "raw_bgr": np.repeat(_LEVELS, 3, axis=1).astype(np.float32)}


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
