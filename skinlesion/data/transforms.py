"""albumentations pipelines for training and evaluation, and the test-time views (flips and 90° rotations)."""
from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from skinlesion.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The training augmentation of the published recipe: with probability ``p`` one block of geometric operations
# (each applied with probability 0.5), plus brightness/contrast where a preset turns it on.
DEFAULT_AUGMENT = {
    "p": 0.5,                      # probability of the whole block
    "flips": True,                 # vertical and horizontal flip
    "affine": True,                # shift-scale-rotate
    "shift": 0.0625,               # fraction of the image size
    "scale": 0.5,                  # one isotropic factor in [1 - scale, 1 + scale]
    "rotate": 45,                  # degrees
    "rotate90": True,
    "brightness_contrast": False,
    # brightness/contrast as one more operation of the block (probability 0.5 once the block fires, per image), as
    # the published recipe lists it; false: drawn on its own, probability 0.5·p, whether or not the block fires
    "brightness_contrast_in_block": True,
}


def resolve_augment(aug: dict | None) -> dict:
    """``aug`` over :data:`DEFAULT_AUGMENT`; an unknown key is a config error rather than silently ignored."""
    aug = dict(aug or {})
    unknown = sorted(set(aug) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(f"data.augment: unknown key(s) {unknown}; expected some of {list(DEFAULT_AUGMENT)}")
    return {**DEFAULT_AUGMENT, **aug}


def shift_scale_rotate(shift: float, scale: float, rotate: float, p: float = 0.5) -> A.Affine:
    """Shift, one isotropic scale factor and a rotation, borders filled by reflection (edge pixel not repeated).

    ``keep_ratio`` makes albumentations draw a single scale for both axes (it draws x and y independently
    otherwise, which stretches lesions); reflected borders avoid the black corners a constant fill leaves when
    an image is shrunk or rotated.
    """
    return A.Affine(translate_percent=(-shift, shift), scale=(1 - scale, 1 + scale), keep_ratio=True,
                    rotate=(-rotate, rotate), border_mode=cv2.BORDER_REFLECT_101, p=p)


def resize(image_size: int) -> A.Resize:
    """One image to the network's square input size (no crop). The images of a case are resized each on its own,
    before the geometry they share: the two photographs of a derm7pt case can differ in size and aspect ratio
    (768x512 beside 768x511, 767x508, ...), and albumentations refuses targets of unequal shape."""
    return A.Resize(image_size, image_size)


def block_gated(aug: dict) -> bool:
    """Whether the caller decides when the augmentation block fires (brightness/contrast inside the block): the
    geometric block is then built with probability 1 and applied, with the photometric jitter, only then."""
    aug = resolve_augment(aug)
    return bool(aug["p"] > 0 and aug["brightness_contrast"] and aug["brightness_contrast_in_block"])


def geometric(image_size: int, train: bool, aug: dict, extra_keys: Sequence[str] = ()) -> A.Compose:
    """Resize (no crop) and, for training, the geometric block; extra keys get the same parameters. All targets
    must be of one size: :class:`~skinlesion.data.datamodule.CaseDataset` passes them through :func:`resize` first,
    which leaves this resize nothing to do."""
    aug = resolve_augment(aug)
    ops: list = [resize(image_size)]
    if train and aug["p"] > 0:
        block = []
        if aug["flips"]:
            block += [A.VerticalFlip(p=0.5), A.HorizontalFlip(p=0.5)]
        if aug["affine"]:
            block.append(shift_scale_rotate(aug["shift"], aug["scale"], aug["rotate"]))
        if aug["rotate90"]:
            block.append(A.RandomRotate90(p=0.5))
        ops.append(A.Sequential(block, p=1.0 if block_gated(aug) else aug["p"]))
    return A.Compose(ops, additional_targets={k: "image" for k in extra_keys})


def photometric(train: bool, aug: dict) -> A.Compose | None:
    """Brightness/contrast, drawn independently per image of a pair (chapters 5-6; off in chapter 4).

    Inside the augmentation block (the default) it is applied with probability 0.5 once the block has fired
    (:func:`block_gated`: the caller draws the block); drawn on its own it has probability ``0.5 * p``.
    """
    aug = resolve_augment(aug)
    if not (train and aug["p"] > 0 and aug["brightness_contrast"]):
        return None
    return A.Compose([A.RandomBrightnessContrast(p=0.5 if block_gated(aug) else 0.5 * aug["p"])])


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
    raise ConfigError(f"data.normalize={normalize!r}: expected 'imagenet' or 'raw_bgr'")


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
        raise ConfigError(f"tta={name!r}: expected one of {sorted(TTA_SETS)}")
    return TTA_SETS[name]
