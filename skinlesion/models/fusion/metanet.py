"""MetaNet (Li et al., ISBI 2020, as re-implemented by Pacheco): per-channel metadata gate."""
from __future__ import annotations

import torch
from torch import nn

from skinlesion.models.fusion import register_fusion, require_divisible


@register_fusion("metanet")
class MetaNet(nn.Module):
    """X = f_I as c maps of 8×8 (c = D/64); a = sigmoid(W2·ReLU(W1 m + b1) + b2) ∈ R^c; Y[i] = a[i]·X[i].

    The reference gates the reshaped pooled vector rather than a spatial map; kept as such.
    """

    def __init__(self, img_dim: int, meta_dim: int, hidden: int | None = None, map_size: int = 8):
        super().__init__()
        unit = map_size * map_size
        self.channels = require_divisible("MetaNet", img_dim, unit, f"c = D/{unit} channels of {map_size}×{map_size}")
        self.unit = unit
        if hidden is None:
            # 64 hidden units, except 40 for MobileNet-v2's 1280-d feature (reference setting).
            hidden = 40 if img_dim == 1280 else 64
        self.gate = nn.Sequential(nn.Linear(meta_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.channels),
                                  nn.Sigmoid())
        self.out_dim = img_dim

    def forward(self, f_img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        x = f_img.reshape(f_img.shape[0], self.channels, self.unit)
        return (x * self.gate(m).unsqueeze(-1)).flatten(1)
