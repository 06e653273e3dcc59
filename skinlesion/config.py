"""OmegaConf resolvers used by the configs (registered on import)."""
from __future__ import annotations

from omegaconf import OmegaConf


def _auto_precision() -> str:
    import torch
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def register_resolvers() -> None:
    for name, fn in (("minus", lambda a, b: float(a) - float(b)), ("auto_precision", _auto_precision)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
