"""MetaBlock (Pacheco & Krohling 2021): metadata-conditioned gating of f_I in groups of 32."""
from __future__ import annotations

import torch
from torch import nn

from skinlesion.models.fusion import register_fusion, require_divisible


@register_fusion("metablock")
class MetaBlock(nn.Module):
    """X = f_I as k×32 (k = D/32); f, g = BN(Linear(m)) ∈ R^k; Y[i,j] = sigmoid(tanh(X[i,j]·f[i]) + g[i])."""

    def __init__(self, img_dim: int, meta_dim: int, group_size: int = 32):
        super().__init__()
        self.groups = require_divisible("MetaBlock", img_dim, group_size, f"k = D/{group_size} groups")
        self.group_size = group_size
        self.scale = nn.Sequential(nn.Linear(meta_dim, self.groups), nn.BatchNorm1d(self.groups))   # f
        self.shift = nn.Sequential(nn.Linear(meta_dim, self.groups), nn.BatchNorm1d(self.groups))   # g
        self.out_dim = img_dim

    def forward(self, f_img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        x = f_img.reshape(f_img.shape[0], self.groups, self.group_size)
        f = self.scale(m).unsqueeze(-1)
        g = self.shift(m).unsqueeze(-1)
        return torch.sigmoid(torch.tanh(x * f) + g).flatten(1)
