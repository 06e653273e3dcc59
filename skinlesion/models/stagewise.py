"""Stage-by-stage execution of a timm backbone, so that a feature map refined after stage i is what stage i + 1
receives (the clinical + dermoscopy fusion blocks refine maps between stages).

A backbone's feature extractor is run as the flat sequence of modules its ``forward_features`` runs, split at the
four stage taps of stride 4, 8, 16 and 32 (the last tap of each stride in timm's ``feature_info``):

    stem -> stage 1 -> [refine] -> stage 2 -> [refine] -> stage 3 -> [refine] -> stage 4 -> [refine] -> tail + pool

``tail`` is what ``forward_features`` runs after the last stage (Swin-T's final LayerNorm, ConvNeXt's
``norm_pre``, EfficientNet's conv head); ``pool`` is timm's own ``forward_head(..., pre_logits=True)``. With no
refinement the result equals the backbone's plain forward (tested). Maps are handed out NCHW; Swin-T's NHWC
stage outputs are permuted on the way out and back.
"""
from __future__ import annotations

import torch
from torch import nn

from skinlesion.errors import ConfigError

STRIDES = (4, 8, 16, 32)
# Children of a timm model that belong to its head, not to forward_features.
_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "head_drop", "flatten")


def stage_taps(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, channels) of the last tap at each stride 4/8/16/32, from timm's ``feature_info``."""
    taps: dict[int, tuple[str, int]] = {}
    for info in getattr(model, "feature_info", []):
        if info["reduction"] in STRIDES:
            taps[info["reduction"]] = (info["module"], info["num_chs"])
    if sorted(taps) != list(STRIDES):
        raise ConfigError(f"backbone {type(model).__name__}: stage-wise fusion needs feature maps at strides "
                          f"{list(STRIDES)}; timm reports strides {sorted(taps)}")
    return [taps[s] for s in STRIDES]


def _flatten(model: nn.Module, taps: set[str]) -> list[tuple[str, nn.Module]]:
    """The modules forward_features runs, in order, expanded down to the tap modules."""
    seq: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module, top: bool) -> None:
        for name, child in module.named_children():
            if top and name in _HEAD_CHILDREN:
                return
            full = f"{prefix}{name}"
            if full in taps or not any(t.startswith(full + ".") for t in taps):
                seq.append((full, child))
            elif isinstance(child, nn.Sequential):
                visit(full + ".", child, False)
            else:
                raise ConfigError(f"backbone {type(model).__name__}: stage tap inside {full!r}, a "
                                  f"{type(child).__name__} that cannot be run piecewise")

    visit("", model, True)
    return seq


class StageRunner:
    """Runs ``model`` (a timm model) as stem, stage 1..4 and tail + pool, so a caller can change the map between
    two stages.

    A plain object, not a module: it only refers to the model's layers, which stay registered (and counted,
    moved and saved) once, under the model's owner.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        taps = stage_taps(model)
        self.channels: tuple[int, ...] = tuple(c for _, c in taps)   # known before the first batch
        names = [n for n, _ in taps]
        seq = _flatten(model, set(names))
        order = [n for n, _ in seq]
        missing = [n for n in names if n not in order]
        if missing:
            raise ConfigError(f"backbone {type(model).__name__}: stage taps {missing} not found in its layers")
        # The stem ends where the stride-4 stage module starts; stage i ends at its tap.
        ends = [order.index(n) + 1 for n in names]
        bounds = [0, ends[0] - 1, *ends, len(seq)]
        # Plain lists (not ModuleLists): the modules are already registered under ``model``.
        self._segments = [[m for _, m in seq[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"

    @staticmethod
    def _run(mods, x):
        for m in mods:
            x = m(x)
        return x

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The layers before the stride-4 stage (channels-last for Swin-T, as stage 0 expects)."""
        return self._run(self._segments[0], x)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (0..3) on an NCHW map (or the stem output for i = 0); returns NCHW."""
        if self.nhwc and i > 0:
            x = x.permute(0, 2, 3, 1)
        x = self._run(self._segments[1 + i], x)
        return x.permute(0, 3, 1, 2) if self.nhwc else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tail and pooling on the last stage's NCHW map."""
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return self.model.forward_head(self._run(self._segments[-1], x), pre_logits=True)
