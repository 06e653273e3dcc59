"""CAT (Pacheco & Krohling 2021 baseline): reduce f_I, then concatenate with m."""
from __future__ import annotations

import torch
from torch import nn

from skinlesion.models.fusion import register_fusion


@register_fusion("cat")
class ConcatFusion(nn.Module):
    """f_IM = [reducer(f_I); m]; ``reducer=0`` concatenates f_I unchanged."""

    def __init__(self, img_dim: int, meta_dim: int, reducer: int = 256, dropout: float = 0.5):
        super().__init__()
        if reducer < 0:
            raise ValueError(f"CAT reducer width must be >= 0 (0 = plain concat), got {reducer}")
        if reducer:
            self.reducer = nn.Sequential(nn.Linear(img_dim, reducer), nn.BatchNorm1d(reducer), nn.ReLU(),
                                         nn.Dropout(dropout))
        else:
            self.reducer = nn.Identity()
        self.out_dim = (reducer or img_dim) + meta_dim

    def forward(self, f_img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.reducer(f_img), m], dim=1)
