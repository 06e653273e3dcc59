"""Metadata encoder M_M: n_meta -> 256 -> 128 with BN, ReLU, dropout after the first layer."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MetaEncoder(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(hidden):
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
            if i < len(hidden) - 1:
                layers.append(nn.Dropout(dropout))
            in_features = width
        self.net = nn.Sequential(*layers)
        self.out_features = in_features

    def forward(self, x):
        return self.net(x)
