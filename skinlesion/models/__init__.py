"""Model registry: every network is a registered class built from its ``model`` config and the DataInfo.

A network maps a batch ``{"images": {key: (B,3,H,W)}, "meta": (B,M), ...}`` to
``{"logits": {branch: {task: (B,K)}}, "features": (B,F)}`` — ``features`` is the final fused feature
(saved for t-SNE when asked).
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from skinlesion.data.info import DataInfo
from skinlesion.errors import ConfigError
from skinlesion.registry import import_package, import_plugins, registrar

MODEL_REGISTRY: dict[str, type] = {}
register_model = registrar(MODEL_REGISTRY, "model")


def _as_dict(cfg: DictConfig | dict | None) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def registered_models() -> list[str]:
    """Names of every network: this package's modules (each imported once) and the plugin directories'."""
    import_package(__name__)
    import_plugins()
    return sorted(MODEL_REGISTRY)


def _resolve(model_cfg: DictConfig | dict) -> tuple[type, dict]:
    registered_models()   # importing the network modules registers them
    cfg = _as_dict(model_cfg)
    arch = cfg.pop("arch", None)
    if arch not in MODEL_REGISTRY:
        raise ConfigError(f"model.net.arch={arch!r} is unknown; registered: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[arch], cfg


def required_inputs(model_cfg: DictConfig | dict, info: DataInfo) -> tuple[str, ...]:
    """Check that the dataset provides what the network reads (before any file is read); its image keys."""
    cls, cfg = _resolve(model_cfg)
    cls.check_data(cfg, info)
    return tuple(cls.required_images(cfg, info))


def branch_inputs(model_cfg: DictConfig | dict, info: DataInfo) -> dict[str, tuple[str, ...]]:
    """Per branch of the configured network, the inputs its prediction depends on (image keys and ``"meta"``)."""
    cls, cfg = _resolve(model_cfg)
    return {b: tuple(need) for b, need in cls.branch_inputs(cfg, info).items()}


def build_network(model_cfg: DictConfig | dict, backbone_cfg: DictConfig | dict | None, info: DataInfo):
    """Instantiate ``model_cfg.arch`` after checking that the dataset provides what it needs."""
    cls, cfg = _resolve(model_cfg)
    cls.check_data(cfg, info)
    return cls(info=info, backbone=_as_dict(backbone_cfg), **cfg)


def parameter_report(network, backbone_cfg: DictConfig | dict | None, info: DataInfo) -> dict[str, int]:
    """The network's parameter counts and, for image models, the increase over image-only on the same backbone."""
    import torch

    from skinlesion.models.backbones import Backbone

    counts = network.param_counts()
    if any(isinstance(m, Backbone) for m in network.modules()):
        bb = {**_as_dict(backbone_cfg), "pretrained": False}
        with torch.device("meta"):   # counted without allocating or loading weights
            ref = MODEL_REGISTRY["image_only"](info=info, backbone=bb).param_counts()
        counts["image_only_thesis_count"] = ref["thesis_count"]
        counts["increase_over_image_only"] = counts["thesis_count"] - ref["thesis_count"]
    return counts
