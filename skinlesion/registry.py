"""Name -> class registries (timm style): modules register themselves with a decorator on import.

Registries find their modules by themselves: :func:`import_package` imports every module of a package
(``pkgutil``), so a new fusion module or network is one file dropped into ``skinlesion/models/fusion/`` or
``skinlesion/models/``, with no import list to edit. Code kept outside the checkout is found through plugin
directories named in the ``SKINLESION_PLUGINS`` environment variable (``os.pathsep``-separated): every ``*.py``
file there is imported (its ``@register_...`` decorators run) and its ``conf/<group>/<name>.yaml`` files become
config options (see ``skinlesion.config.register_plugin_configs``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path

from skinlesion.errors import ConfigError

PLUGIN_ENV = "SKINLESION_PLUGINS"


def registrar(registry: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    """A ``@register(name)`` decorator that adds a class to ``registry`` and records its name on it."""
    def register(name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in registry and registry[name] is not cls:
                raise KeyError(f"{kind} {name!r} registered twice ({registry[name].__module__} and {cls.__module__})")
            cls.registry_name = name
            registry[name] = cls
            return cls
        return deco
    return register


def import_package(package: str) -> None:
    """Import every module (and subpackage) of ``package``, which registers what they define."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def plugin_dirs() -> list[Path]:
    """The plugin directories named in ``$SKINLESION_PLUGINS`` (missing ones are a ConfigError)."""
    dirs = [Path(p).expanduser() for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p.strip()]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"{PLUGIN_ENV} names {missing}, which is not a directory")
    return dirs


def import_plugins() -> list[str]:
    """Import the ``*.py`` files of every plugin directory once; returns their module names."""
    names = []
    for d in plugin_dirs():
        for path in sorted(d.glob("*.py")):
            # One module name per file path, so a second call (or a second registry) re-uses the first import.
            name = "skinlesion_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception:
                    del sys.modules[name]
                    raise
            names.append(name)
    return names
