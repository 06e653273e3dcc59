"""Name -> class registries (timm style): modules register themselves with a decorator on import."""
from __future__ import annotations

from collections.abc import Callable


def registrar(registry: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    """A ``@register(name)`` decorator that adds a class to ``registry`` and records its name on it."""
    def register(name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in registry:
                raise KeyError(f"{kind} {name!r} registered twice")
            cls.registry_name = name
            registry[name] = cls
            return cls
        return deco
    return register
