"""MMFA — multi-modal fusion attention (thesis Eqs. 4.6–4.10).

Features are the tokens: the concatenated query/key/value vectors (metadata first, Eq. 4.8) are split into
``heads`` heads of s = (d_img + d_meta)/heads scalars, and attention runs between the s scalars of a head.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from skinlesion.models.fusion import register_fusion

OPS = ("outer", "gate")


@register_fusion("mmfa")
class MMFA(nn.Module):
    """f_IM = BN(Linear(concat_i head_i)) + [f_I; m], width img_dim + meta_dim.

    ``op='outer'`` (default): head_i = softmax_over_keys(q_i k_iᵀ / √s) v_i, a s×s attention per head.
    ``op='gate'``: head_i = softmax(q_i ⊙ k_i / √s) ⊙ v_i, an element-wise gate.
    """

    def __init__(self, img_dim: int, meta_dim: int, d_img: int = 128, d_meta: int = 128, heads: int = 8,
                 op: str = "outer"):
        super().__init__()
        if op not in OPS:
            raise ValueError(f"MMFA op must be one of {OPS}, got {op!r}")
        total = d_img + d_meta
        if total % heads:
            raise ValueError(f"MMFA d_img + d_meta = {total} must be divisible by heads={heads}")
        self.op, self.heads, self.head_dim = op, heads, total // heads
        self.d_img, self.d_meta = d_img, d_meta
        # One Linear per modality to 3·d, then BN, split into q, k, v (Eq. 4.9).
        self.qkv_img = nn.Sequential(nn.Linear(img_dim, 3 * d_img), nn.BatchNorm1d(3 * d_img))
        self.qkv_meta = nn.Sequential(nn.Linear(meta_dim, 3 * d_meta), nn.BatchNorm1d(3 * d_meta))
        self.out_dim = img_dim + meta_dim
        self.proj = nn.Sequential(nn.Linear(total, self.out_dim), nn.BatchNorm1d(self.out_dim))   # Eq. 4.10

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, h·s) q, k, v -> (B, h·s) concatenated heads."""
        b = q.shape[0]
        q, k, v = (t.reshape(b, self.heads, self.head_dim) for t in (q, k, v))
        scale = 1.0 / math.sqrt(self.head_dim)
        if self.op == "outer":
            attn = torch.softmax(q.unsqueeze(-1) * k.unsqueeze(-2) * scale, dim=-1)   # (B, h, s_q, s_k)
            out = (attn @ v.unsqueeze(-1)).squeeze(-1)
        else:
            out = torch.softmax(q * k * scale, dim=-1) * v
        return out.reshape(b, -1)

    def forward(self, f_img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        q_i, k_i, v_i = self.qkv_img(f_img).split(self.d_img, dim=1)
        q_m, k_m, v_m = self.qkv_meta(m).split(self.d_meta, dim=1)
        heads = self.attend(torch.cat([q_m, q_i], 1), torch.cat([k_m, k_i], 1), torch.cat([v_m, v_i], 1))
        return self.proj(heads) + torch.cat([f_img, m], dim=1)
