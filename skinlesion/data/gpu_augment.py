"""Training augmentation of whole batches on the device (``data.augment_on=device``), with the distribution of the
albumentations pipeline of :mod:`skinlesion.data.transforms`:

- with probability ``p`` per case, one block of: vertical flip, horizontal flip, shift-scale-rotate (shift drawn
  per axis and truncated to whole pixels as albumentations does, one isotropic scale, rotation about the image
  centre, borders mirrored without repeating the edge pixel, i.e. ``BORDER_REFLECT_101``), a random 90° rotation
  (0-3 quarter turns), each with probability 0.5, in that order;
- brightness/contrast per image (chapters 5-6): inside the block, with probability 0.5 once it fires (the
  default), or on its own with probability ``0.5 * p`` (``brightness_contrast_in_block: false``);
- every image of a case (clinical + dermoscopy) gets the same geometric parameters.

Why not kornia or torchvision v2: torchvision's v2 transforms draw one set of parameters per call, i.e. per batch.
kornia draws per sample, but its RandomAffine draws continuous shifts, its reflection padding with the default
``align_corners=False`` mirrors about the pixel edge (``BORDER_REFLECT``), it has no per-sample probability for a
whole block of operations, and flips + affine + rot90 would be separate resamplings. Every operation of the block
is an affine map of pixel coordinates, so here the block is one 3x3 matrix per case and one ``grid_sample``: flips
and quarter turns stay exact, and the image is interpolated once, as on the CPU path.

Parameters are built from uniform draws ``u`` (one row per case, :attr:`BatchAugment.n_draws` columns): the
training dataset supplies them per (seed, epoch, case) (:func:`skinlesion.data.store.keyed_draws`), or
:meth:`BatchAugment.draws` makes them from a torch generator. :meth:`BatchAugment.sample` exposes the parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from skinlesion.data.transforms import resolve_augment
from skinlesion.errors import ConfigError

# albumentations.RandomBrightnessContrast defaults (the CPU path's photometric()): both limits +-0.2, brightness
# relative to the dtype's maximum
BC_LIMIT = 0.2
MAX_VALUE = 255.0

# columns of the uniform draws: the geometric block, then three per image (gate, contrast, brightness)
BLOCK, VFLIP, HFLIP, AFFINE, SHIFT_X, SHIFT_Y, SCALE, ANGLE, ROT90, ROT90_K = range(10)
GEO_DRAWS, PHOTO_DRAWS = 10, 3


@dataclass
class AugmentParams:
    """Per-case parameters (tensors of length B). ``matrix`` maps source pixel centres to output ones (the
    convention of ``cv2.warpAffine`` and albumentations); ``photo[key] = (on, alpha, beta)``: out = alpha * x +
    beta (beta in pixel units) where ``on``."""
    block: torch.Tensor      # bool: the geometric block fires
    vflip: torch.Tensor      # bool
    hflip: torch.Tensor      # bool
    affine: torch.Tensor     # bool: shift-scale-rotate applied
    shift: torch.Tensor      # (B, 2) whole pixels (x, y); 0 where affine is off
    scale: torch.Tensor      # one isotropic factor; 1 where affine is off
    angle: torch.Tensor      # degrees, counter-clockwise as displayed; 0 where affine is off
    rot90: torch.Tensor      # int64 quarter turns counter-clockwise (np.rot90), 0-3
    matrix: torch.Tensor     # (B, 3, 3) float32
    moved: torch.Tensor      # bool: the geometry is not the identity
    photo: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _eye(n: int, device) -> torch.Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


# Constant matrices, built once per (size, device, default dtype) and reused by every batch: a tensor made from
# Python numbers on a CUDA device is a host-to-device copy, i.e. a host synchronisation per batch. Callers never
# modify them in place; they are made outside inference mode, so a first call under torch.inference_mode() does not
# leave inference tensors that later autograd-tracked computations could not use.
@lru_cache(maxsize=64)
@torch.inference_mode(False)
def _quarter_turns(w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(4, 3, 3): 0-3 counter-clockwise quarter turns (np.rot90) of a square image of width ``w``."""
    r1 = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]], device=device, dtype=dtype)
    return torch.stack([torch.eye(3, device=device, dtype=dtype), r1, r1 @ r1, r1 @ r1 @ r1])


@lru_cache(maxsize=64)
@torch.inference_mode(False)
def _unit_maps(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres 0..w-1 -> -1..1 (``norm``) and back (``denorm``), for ``align_corners=True``."""
    norm = torch.tensor([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]], device=device, dtype=dtype)
    denorm = torch.tensor([[(w - 1) / 2, 0, (w - 1) / 2], [0, (h - 1) / 2, (h - 1) / 2], [0, 0, 1]],
                          device=device, dtype=dtype)
    return norm, denorm


class BatchAugment:
    """The training augmentation of ``aug`` (``data.augment``) for images ``keys``, applied to uint8 (B, 3, S, S)
    batches on any device. A plain object, not an ``nn.Module``: a module holding it gains no state-dict keys."""

    def __init__(self, aug: dict | None, keys: Sequence[str]):
        self.aug = resolve_augment(aug)
        self.keys = tuple(keys)

    @property
    def n_draws(self) -> int:
        return GEO_DRAWS + PHOTO_DRAWS * len(self.keys)

    @property
    def active(self) -> bool:
        a = self.aug
        return a["p"] > 0 and any(a[k] for k in ("flips", "affine", "rotate90", "brightness_contrast"))

    def draws(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n, n_draws) uniform numbers in [0, 1) from ``generator``."""
        return torch.rand(n, self.n_draws, generator=generator).to(device or "cpu")

    # --- parameters ----------------------------------------------------------------------------------
    def sample(self, u: torch.Tensor, size: int | tuple[int, int]) -> AugmentParams:
        """The parameters for images of ``size`` (S or (H, W)) from draws ``u`` (B, n_draws)."""
        if u.ndim != 2 or u.shape[1] != self.n_draws:
            raise ValueError(f"augmentation draws: expected shape (B, {self.n_draws}), got {tuple(u.shape)}")
        h, w = (size, size) if isinstance(size, int) else size
        a = self.aug
        u = u.float()
        n, dev = u.shape[0], u.device
        off = torch.zeros(n, dtype=torch.bool, device=dev)
        block = u[:, BLOCK] < a["p"]
        vflip = block & (u[:, VFLIP] < 0.5) if a["flips"] else off
        hflip = block & (u[:, HFLIP] < 0.5) if a["flips"] else off
        affine = block & (u[:, AFFINE] < 0.5) if a["affine"] else off
        # albumentations: uniform(-shift, shift) of the size per axis, truncated to whole pixels (int())
        s = a["shift"]
        shift = torch.stack([torch.trunc((-s + 2 * s * u[:, SHIFT_X]) * w),
                             torch.trunc((-s + 2 * s * u[:, SHIFT_Y]) * h)], 1) * affine[:, None]
        scale = torch.where(affine, (1 - a["scale"]) + 2 * a["scale"] * u[:, SCALE], torch.ones_like(u[:, SCALE]))
        angle = torch.where(affine, -a["rotate"] + 2 * a["rotate"] * u[:, ANGLE], torch.zeros_like(u[:, ANGLE]))
        quarter = (u[:, ROT90_K] * 4).long().clamp_(max=3)
        rot90 = torch.where(block & (u[:, ROT90] < 0.5), quarter, 0) if a["rotate90"] else quarter * 0
        matrix = self._matrix(vflip, hflip, affine, shift, scale, angle, rot90, h, w)
        photo = {}
        if a["brightness_contrast"] and a["p"] > 0:
            for j, k in enumerate(self.keys):
                c = GEO_DRAWS + PHOTO_DRAWS * j
                # inside the block (the default): once the block fires, 0.5; on its own: 0.5 * p
                on = block & (u[:, c] < 0.5) if a["brightness_contrast_in_block"] else u[:, c] < 0.5 * a["p"]
                alpha = 1.0 + (-BC_LIMIT + 2 * BC_LIMIT * u[:, c + 1])
                beta = (-BC_LIMIT + 2 * BC_LIMIT * u[:, c + 2]) * MAX_VALUE
                photo[k] = (on, alpha, beta)
        moved = vflip | hflip | affine | (rot90 > 0)
        return AugmentParams(block, vflip, hflip, affine, shift, scale, angle, rot90, matrix, moved, photo)

    @classmethod
    def given(cls, size: int | tuple[int, int], vflip, hflip, shift, scale, angle, rot90,
              photo: dict | None = None) -> AugmentParams:
        """Parameters from explicit values (sequences or tensors of length B; ``shift`` (B, 2)), e.g. those an
        albumentations pipeline recorded."""
        h, w = (size, size) if isinstance(size, int) else size
        vflip, hflip = torch.as_tensor(vflip, dtype=torch.bool), torch.as_tensor(hflip, dtype=torch.bool)
        shift = torch.as_tensor(shift, dtype=torch.float32).reshape(-1, 2)
        scale, angle = torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(angle, dtype=torch.float32)
        rot90 = torch.as_tensor(rot90, dtype=torch.long)
        affine = (scale != 1) | (angle != 0) | (shift != 0).any(1)
        moved = vflip | hflip | affine | (rot90 > 0)
        matrix = cls._matrix(vflip, hflip, affine, shift, scale, angle, rot90, h, w)
        return AugmentParams(moved, vflip, hflip, affine, shift, scale, angle, rot90, matrix, moved, photo or {})

    @staticmethod
    def _matrix(vflip, hflip, affine, shift, scale, angle, rot90, h: int, w: int) -> torch.Tensor:
        """Forward pixel map of the block, applied in the CPU order: vflip, hflip, affine, rot90."""
        n, dev = vflip.shape[0], vflip.device
        fv, fh = _eye(n, dev), _eye(n, dev)
        fv[:, 1, 1] = torch.where(vflip, -1.0, 1.0)
        fv[:, 1, 2] = vflip * (h - 1.0)
        fh[:, 0, 0] = torch.where(hflip, -1.0, 1.0)
        fh[:, 0, 2] = hflip * (w - 1.0)
        # albumentations' affine: about the centre (w/2 - 0.5, h/2 - 0.5), rotation [[c, s], [-s, c]], then shift
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        rad = torch.deg2rad(angle)
        c, s = torch.cos(rad) * scale, torch.sin(rad) * scale
        af = _eye(n, dev)
        af[:, 0, 0], af[:, 0, 1], af[:, 1, 0], af[:, 1, 1] = c, s, -s, c
        af[:, 0, 2] = cx + shift[:, 0] - (c * cx + s * cy)
        af[:, 1, 2] = cy + shift[:, 1] - (-s * cx + c * cy)
        # np.rot90 (counter-clockwise quarter turn) of a square image: (x, y) -> (y, w - 1 - x)
        if h != w and bool((rot90 % 2 == 1).any()):
            raise ValueError(f"90-degree rotations need square images, got {h}x{w}")
        quarter = _quarter_turns(w, dev, torch.get_default_dtype())
        return quarter[rot90] @ af @ fh @ fv

    # --- application ---------------------------------------------------------------------------------
    def apply(self, images: dict[str, torch.Tensor], params: AugmentParams) -> dict[str, torch.Tensor]:
        """Warp every image of a case with its matrix (one resampling, mirrored borders), then brightness/contrast
        per image; uint8 in, uint8 out (rounded as OpenCV does)."""
        unknown = [k for k in images if k not in self.keys]
        if unknown:
            raise ConfigError(f"device augmentation set up for images {list(self.keys)}, got {unknown}")
        keys = list(images)
        x = torch.cat([images[k] for k in keys], 1)   # all images of a case share the geometry: one warp
        n, _, h, w = x.shape
        m = params.matrix.to(x.device, torch.float32)
        # inverse of [[L, t], [0, 1]] in closed form (no batched solver, no host synchronisation)
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        det = a * d - b * c
        inv = _eye(n, x.device)
        inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = d / det, -b / det, -c / det, a / det
        inv[:, :2, 2] = -(inv[:, :2, :2] @ m[:, :2, 2:]).squeeze(-1)
        # pixel centres 0..w-1 <-> -1..1: align_corners=True, whose reflection padding mirrors about the edge
        # pixels' centres, i.e. BORDER_REFLECT_101
        norm, denorm = _unit_maps(h, w, x.device, torch.get_default_dtype())
        theta = (norm @ inv @ denorm)[:, :2]
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=True)
        warped = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        warped = warped.round_().clamp_(0, 255).to(torch.uint8)
        x = torch.where(params.moved.to(x.device)[:, None, None, None], warped, x)   # untouched cases stay exact
        out = dict(zip(keys, x.split(3, dim=1)))
        for k, (on, alpha, beta) in params.photo.items():
            if k not in out:
                continue
            img = out[k]
            # albucore's uint8 path: float32 x * alpha + beta, clipped, truncated to uint8
            adj = (img.float() * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)).clamp_(0, 255).to(torch.uint8)
            out[k] = torch.where(on.to(img.device)[:, None, None, None], adj, img)
        return {k: v.contiguous() for k, v in out.items()}

    def __call__(self, images: dict[str, torch.Tensor], u: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Augment a batch: parameters from the draws ``u`` (B, n_draws), or fresh ones from ``generator``."""
        first = next(iter(images.values()))
        if u is None:
            u = self.draws(first.shape[0], generator, first.device)
        return self.apply(images, self.sample(u.to(first.device), tuple(first.shape[-2:])))
