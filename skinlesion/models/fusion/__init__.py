"""Fusion modules F(f_I, m) of the JF / JIF networks: CAT, MetaBlock, MetaNet, Mutual Attention, MMFA.

Every module of this package is imported on first use and registers itself with ``@register_fusion(name)``;
adding a fusion method is one module file here plus its config ``conf/fusion/<name>.yaml`` (registered name,
display label, options). Modules outside the checkout are found in the plugin directories of
``$SKINLESION_PLUGINS`` (see ``skinlesion.registry``). Every module is ``nn.Module(img_dim, meta_dim, **options)`` with ``out_dim`` fixed at construction and
``forward(f_img (B, img_dim), m (B, meta_dim)) -> (B, out_dim)``. Modules whose reshape needs a divisible image
width raise ``ValueError`` naming the width and the requirement.
"""
from __future__ import annotations

import inspect

from torch import nn

from skinlesion.errors import ConfigError
from skinlesion.registry import import_package, import_plugins, registrar

FUSION_REGISTRY: dict[str, type[nn.Module]] = {}


register_fusion = registrar(FUSION_REGISTRY, "fusion module")


def require_divisible(module: str, img_dim: int, unit: int, meaning: str) -> int:
    if img_dim % unit:
        raise ValueError(
            f"{module} needs the backbone's pooled feature width D to be divisible by {unit} ({meaning}); "
            f"this backbone gives D={img_dim}. Use a backbone whose width is a multiple of {unit} "
            "(all chapter-4 backbones are; for tests: test_efficientnet, D=256)")
    return img_dim // unit


def registered_fusions() -> list[str]:
    """Names of every fusion module: this package's and the plugin directories'."""
    import_plugins()
    return sorted(FUSION_REGISTRY)


def fusion_options(name: str) -> list[str]:
    """Option names a fusion module accepts (besides img_dim and meta_dim)."""
    params = list(inspect.signature(FUSION_REGISTRY[name]).parameters)
    return [p for p in params if p not in ("img_dim", "meta_dim")]


def build_fusion(name: str, img_dim: int, meta_dim: int, **kw) -> nn.Module:
    if name not in FUSION_REGISTRY:
        import_plugins()
    if name not in FUSION_REGISTRY:
        raise ConfigError(f"fusion={name!r} is unknown; registered: {sorted(FUSION_REGISTRY)}")
    accepted = fusion_options(name)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        # Caught here so that a misspelt option fails with the list of valid ones, not a bare TypeError.
        raise ConfigError(f"fusion {name!r} got unknown option(s) {unknown}; accepted: {accepted}")
    return FUSION_REGISTRY[name](img_dim, meta_dim, **kw)


# Importing the modules registers them; placed after register_fusion so the submodules can import it.
import_package(__name__)
