"""The shared multi-task head: one classifier per task, linear or the MLP of the chapter-5 and -6 networks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skinlesion.data.tasks import Task


def mlp(in_features: int, hidden: Sequence[int], dropout: float, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), act(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers)


class MultiTaskHead(nn.Module):
    """Features -> {task: logits}. ``kind='mlp'``: shared Linear-BN-Swish-Dropout trunk, then a Linear per task."""

    def __init__(self, in_features: int, tasks: Sequence[Task], kind: str = "linear",
                 hidden: Sequence[int] = (512, 128), dropout: float = 0.3):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"head kind must be 'linear' or 'mlp', got {kind!r}")
        self.trunk = mlp(in_features, hidden, dropout) if kind == "mlp" else nn.Identity()
        width = hidden[-1] if kind == "mlp" and hidden else in_features
        self.classifiers = nn.ModuleDict({t.name: nn.Linear(width, t.num_classes) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {name: clf(h) for name, clf in self.classifiers.items()}
