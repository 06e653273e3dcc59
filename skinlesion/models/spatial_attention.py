"""Spatial attention blocks between the stages of two image encoders (clinical C, dermoscopy D).

Core operation, for a source map S (gives the attention map) and a target map T (gets refined) of equal H×W,
N = H·W positions:

    q = conv1x1(S → C_s/8),  k = conv1x1(S → C_s/8),  v = conv1x1(T → C_t)        (all with bias)
    M[i, :] = softmax_j(q_i · k_j)            N×N; each query row sums to 1; no 1/√d scaling
    T'[i] = T[i] + γ · Σ_j M[i, j] · v[j]     γ = 1, or learnable and zero-initialised (``gamma="zero_init"``)

Blocks built from it:
- ``aab`` (asymmetric): S = C, T = D; the clinical map passes unchanged.
- ``bab`` (bidirectional; also the cross-modal CA of the parameter-shared model): D' = D + v_D·M_C and
  C' = C + v_C·M_D, each direction with its own convolutions, both from the unrefined maps.
- ``sca`` (shared cross attention): as ``bab`` but one set of q/k/v convolutions serves both modalities (half the
  parameters); needs equal channel widths.
- ``self`` (self-attention per modality): C' = C + v_C·M_C, D' = D + v_D·M_D.
- ``sca_self`` (shared self-attention, the self-attention reading of SCA): as ``self`` with the one set of
  convolutions of ``sca`` serving both modalities.

At stride 4 the map has 3,136 × 3,136 entries per sample; with keys as the softmax axis the block runs through
PyTorch's fused ``scaled_dot_product_attention`` (scale 1), which never materialises it on GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skinlesion.registry import registrar

BLOCK_REGISTRY: dict[str, type[nn.Module]] = {}
register_block = registrar(BLOCK_REGISTRY, "fusion block")
SOFTMAX_AXES = ("keys", "queries")
GAMMAS = ("none", "zero_init")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_axis: str = "keys") -> torch.Tensor:
    """(B, N, c) q, k and (B, N, C) v -> (B, N, C) = softmax(q kᵀ) v, softmax over keys (rows) or queries."""
    if softmax_axis == "keys":
        return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)
    return torch.softmax(q @ k.transpose(1, 2), dim=1) @ v


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)   # (B, C, H, W) -> (B, N, C)


class QK(nn.Module):
    """The query and key projections of a source map (C → C/reduction each)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        width = max(1, channels // reduction)
        self.q = nn.Conv2d(channels, width, 1)
        self.k = nn.Conv2d(channels, width, 1)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _tokens(self.q(s)), _tokens(self.k(s))


class Refine(nn.Module):
    """T' = T + γ·softmax(q kᵀ) v(T) for given source queries/keys; owns v and γ."""

    def __init__(self, channels: int, gamma: str = "none", softmax_axis: str = "keys"):
        super().__init__()
        if gamma not in GAMMAS:
            raise ValueError(f"gamma={gamma!r}: expected one of {GAMMAS}")
        if softmax_axis not in SOFTMAX_AXES:
            raise ValueError(f"softmax_axis={softmax_axis!r}: expected one of {SOFTMAX_AXES}")
        self.v = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1)) if gamma == "zero_init" else None
        self.softmax_axis = softmax_axis

    def forward(self, t: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        out = attention(q, k, _tokens(self.v(t)), self.softmax_axis).transpose(1, 2).reshape(b, c, h, w)
        return t + (out if self.gamma is None else self.gamma * out)


class _Block(nn.Module):
    """forward(clinical map, dermoscopy map) -> (clinical', dermoscopy'), both NCHW of equal H×W."""

    @staticmethod
    def _check(c: torch.Tensor, d: torch.Tensor) -> None:
        if c.shape[-2:] != d.shape[-2:]:
            raise ValueError(f"fusion block needs maps of equal size; got clinical {tuple(c.shape[-2:])} and "
                             f"dermoscopy {tuple(d.shape[-2:])} (use the same image size for both encoders)")


@register_block("aab")
class AsymmetricBlock(_Block):

    def __init__(self, clin_channels: int, derm_channels: int, reduction: int = 8, gamma: str = "none",
                 softmax_axis: str = "keys"):
        super().__init__()
        self.qk_clin = QK(clin_channels, reduction)
        self.to_derm = Refine(derm_channels, gamma, softmax_axis)

    def forward(self, c, d):
        self._check(c, d)
        return c, self.to_derm(d, *self.qk_clin(c))


@register_block("bab")
class BidirectionalBlock(_Block):

    def __init__(self, clin_channels: int, derm_channels: int, reduction: int = 8, gamma: str = "none",
                 softmax_axis: str = "keys"):
        super().__init__()
        self.qk_clin, self.qk_derm = QK(clin_channels, reduction), QK(derm_channels, reduction)
        self.to_derm = Refine(derm_channels, gamma, softmax_axis)
        self.to_clin = Refine(clin_channels, gamma, softmax_axis)

    def forward(self, c, d):
        self._check(c, d)
        return self.to_clin(c, *self.qk_derm(d)), self.to_derm(d, *self.qk_clin(c))


@register_block("self")
class SelfBlock(BidirectionalBlock):
    """Each modality attends to itself (the self-attention variant of CA)."""

    def forward(self, c, d):
        self._check(c, d)
        return self.to_clin(c, *self.qk_clin(c)), self.to_derm(d, *self.qk_derm(d))


@register_block("sca")
class SharedCrossBlock(_Block):

    def __init__(self, clin_channels: int, derm_channels: int, reduction: int = 8, gamma: str = "none",
                 softmax_axis: str = "keys"):
        super().__init__()
        if clin_channels != derm_channels:
            raise ValueError(f"sca shares its convolutions between modalities and needs equal widths; got "
                             f"clinical {clin_channels} and dermoscopy {derm_channels}")
        self.qk = QK(clin_channels, reduction)
        self.refine = Refine(clin_channels, gamma, softmax_axis)

    def forward(self, c, d):
        self._check(c, d)
        return self.refine(c, *self.qk(d)), self.refine(d, *self.qk(c))


@register_block("sca_self")
class SharedSelfBlock(SharedCrossBlock):
    """Each modality attends to itself through one shared set of q/k/v convolutions (the self-attention reading of
    SCA)."""

    def forward(self, c, d):
        self._check(c, d)
        return self.refine(c, *self.qk(c)), self.refine(d, *self.qk(d))
