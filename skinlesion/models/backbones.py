"""timm backbone factory: any timm name, pretrained off / timm's own loading / a local weights file."""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from skinlesion.errors import ConfigError


def _resolve_pretrained(pretrained: bool | str | None) -> tuple[bool, dict]:
    if pretrained in (None, False, "false", "False", ""):
        return False, {}
    if pretrained in (True, "true", "True", "timm"):
        return True, {}
    path = Path(str(pretrained)).expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone.pretrained={pretrained!r}: no such weights file "
                          "(expected false, true, or the path of a local timm-format state dict)")
    return True, {"pretrained_cfg_overlay": {"file": str(path)}}


class Backbone(nn.Module):
    """A timm model used as a feature extractor: global-average-pooled features of the last stage."""

    def __init__(self, name: str, pretrained: bool | str | None = False, drop_path_rate: float | None = None):
        """``drop_path_rate``: the stochastic-depth rate, passed to timm whenever it is given (0 included); None
        keeps timm's default for the architecture (0.1 for Swin-T, 0 for the CNNs)."""
        super().__init__()
        if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            raise ConfigError(f"backbone.name={name!r} is not a timm model; close matches: {close}")
        use_pretrained, extra = _resolve_pretrained(pretrained)
        self.name = name
        try:
            try:
                kwargs = {} if drop_path_rate is None else {"drop_path_rate": float(drop_path_rate)}
                self.model = timm.create_model(name, pretrained=use_pretrained, num_classes=0, **extra, **kwargs)
            except TypeError as e:   # an architecture without stochastic depth (DenseNet, Xception)
                if "drop_path_rate" not in str(e) or drop_path_rate is None:
                    raise
                if float(drop_path_rate) != 0.0:
                    raise ConfigError(f"backbone.drop_path_rate={drop_path_rate}: {name} has no stochastic depth; "
                                      "set it to 0") from None
                self.model = timm.create_model(name, pretrained=use_pretrained, num_classes=0, **extra)
        except (OSError, RuntimeError, ValueError) as e:
            if not use_pretrained:
                raise
            # Hub downloads fail offline; a mismatched local file fails on load: say which, and the way out.
            raise ConfigError(f"backbone {name!r}: pretrained weights could not be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]}). Offline? Pass a local file with "
                              "backbone.pretrained=/path/to/weights.pth, or backbone.pretrained=false") from None
        if hasattr(self.model, "conv_head") and type(self.model).__name__ == "MobileNetV3":
            # The pooled feature is the GAP of forward_features (576 for MobileNetV3-Small), not the
            # 1024-d conv head output; drop the unused head so DDP sees no idle params.
            for attr in ("conv_head", "norm_head", "act2"):
                setattr(self.model, attr, nn.Identity())
        self.num_features: int = self.model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def thesis_param_count(self) -> int:
        """Parameters as the thesis counts a backbone: with its unused ImageNet classifier (and conv head)."""
        with torch.device("meta"):
            full = timm.create_model(self.name, pretrained=False)
        return sum(p.numel() for p in full.parameters())
