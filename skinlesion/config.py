"""Config support: OmegaConf resolvers, the generated ``model=jf_<fusion>`` / ``jif_<fusion>`` presets, plugin
configs, and the check of the composed config's values before anything runs. Everything is registered on import
(``train.py`` imports this module before Hydra composes)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skinlesion.data.info import INPUTS
from skinlesion.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
FUSION_ARCHS = ("jf", "jif")   # model presets generated per fusion config: jf_<name>, jif_<name>


def _auto_precision() -> str:
    import torch
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def dropped_inputs(cfg: DictConfig) -> dict[str, float]:
    """The inputs ``model.input_dropout`` drops at all (probability > 0), as plain floats."""
    return {str(x): float(p) for x, p in (cfg.model.get("input_dropout") or {}).items() if float(p) > 0}


def biased_loss_weight(branch: str, w) -> float:
    """Branch weight of PEMM's loss W·L_clinic + (0.5 − W)·L_derm + 0.5·L_fusion; ``w='eq'``: 1/3 each."""
    if str(w).lower() in ("eq", "equal"):
        return 1.0 / 3.0
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ConfigError(f"model.loss.w={w!r}: expected a number in [0, 0.5] or 'eq'") from None
    if not 0.0 <= w <= 0.5:
        raise ConfigError(f"model.loss.w={w}: expected a number in [0, 0.5] or 'eq'")
    weights = {"clinic": w, "derm": 0.5 - w, "fusion": 0.5}
    if branch not in weights:
        raise ConfigError(f"biased loss: unknown branch {branch!r}; expected one of {sorted(weights)}")
    return weights[branch]


def _concurrent_jobs(pool, devices, cpu_jobs=1) -> int:
    from skinlesion.launch import concurrent_jobs
    return concurrent_jobs(pool, devices, cpu_jobs)


def _devices_per_job(devices) -> int:
    from skinlesion.launch import devices_per_job
    n = devices_per_job(devices)
    if n is None:
        raise ConfigError(f"trainer.devices={devices!r}: a cluster job needs a number of devices (e.g. 4)")
    return n


def register_resolvers() -> None:
    for name, fn in (("minus", lambda a, b: float(a) - float(b)), ("auto_precision", _auto_precision),
                     ("biased_loss", biased_loss_weight), ("concurrent_jobs", _concurrent_jobs),
                     ("devices_per_job", _devices_per_job)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# ------------------------------------------------------------------------------------- presets and plugins

def fusion_config_names(dirs: Iterable[Path] | None = None) -> list[str]:
    """Options of the ``fusion`` config group: ``conf/fusion/*.yaml`` and the plugin directories' ones."""
    from skinlesion.registry import plugin_dirs

    roots = [CONFIG_DIR, *(d / "conf" for d in (plugin_dirs() if dirs is None else dirs))]
    return sorted({p.stem for r in roots for p in (r / "fusion").glob("*.yaml") if not p.stem.startswith("_")})


def _store_fusion_presets(names: Iterable[str]) -> None:
    # model=jf_cat is model=jf with fusion=cat: generated, so a new fusion config needs no model preset files
    # and the sweep presets' glob over the model group finds it.
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name in names:
        for arch in FUSION_ARCHS:
            cs.store(group="model", name=f"{arch}_{name}", provider="skinlesion",
                     node={"defaults": [arch, {"override /fusion@_global_.fusion": name}, "_self_"]})


def register_plugin_configs() -> list[str]:
    """Make the plugin directories' ``conf/<group>/<name>.yaml`` files config options (idempotent).

    Plugin directories are named in ``$SKINLESION_PLUGINS``; their Python files are imported by the model
    registries (``skinlesion.registry``). Returns the ``group/name`` options registered."""
    from hydra.core.config_store import ConfigStore

    from skinlesion.registry import plugin_dirs

    cs = ConfigStore.instance()
    added = []
    dirs = plugin_dirs()
    for d in dirs:
        for path in sorted((d / "conf").rglob("*.yaml")):
            group = path.parent.relative_to(d / "conf").as_posix()
            try:
                node = OmegaConf.load(path)
            except (OmegaConfBaseException, ValueError) as e:   # yaml errors surface as ValueError subclasses
                raise ConfigError(f"{path}: not a readable config ({str(e).splitlines()[0]})") from None
            cs.store(group=None if group == "." else group, name=path.stem, node=node, provider="skinlesion-plugin")
            added.append(f"{group}/{path.stem}")
    _store_fusion_presets(fusion_config_names(dirs))
    return added


def group_options(group: str) -> list[str]:
    """Options of a config group: ``conf/<group>/*.yaml`` plus the registered ones (generated presets, plugins)."""
    from hydra.core.config_store import ConfigStore

    names = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
    try:
        names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:   # the ConfigStore has no such group
        pass
    return sorted(names)


def expand_sweep(key: str, value: str) -> list[str]:
    """The values one sweep axis ``key=value`` takes, as Hydra's basic sweeper expands it: comma lists,
    ``range(...)``, ``choice(...)`` and ``glob(...)`` over a config group (e.g. ``model: glob([image_only,jf_*])``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if isinstance(override.value(), Glob):
        return override.value().filter(group_options(key))
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    return list(override.sweep_string_iterator())


# ------------------------------------------------------------------------------------- value check

@dataclass(frozen=True)
class Field:
    """One checked key: ``kind`` int/float/bool/str/choice/devices; ``none`` allows null; bounds inclusive."""
    kind: str
    none: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    required: bool = False

    def expected(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "devices":
            text = "an integer, 'auto', or a list of device indices"
        elif self.kind == "gpus":
            text = "'all' or a list of GPU ids"
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[self.kind]
            if self.lo is not None and self.hi is not None:
                text += f" in [{self.lo:g}, {self.hi:g}]"
            elif self.lo is not None:
                text += f" >= {self.lo:g}"
        return text + (" or null" if self.none else "")

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.none
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str)
        if self.kind == "choice":
            return v in self.choices
        if self.kind == "gpus":
            return v == "all" or (isinstance(v, list) and all(isinstance(i, int | str) for i in v))
        if self.kind == "devices":
            return (isinstance(v, int) and not isinstance(v, bool) and v >= -1) or v == "auto" or (
                isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v))
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)


def _f(kind: str, **kw) -> Field:
    return Field(kind, **kw)


INT, INT0, INT1 = _f("int"), _f("int", lo=0), _f("int", lo=1)
NUM0, PROB, BOOL = _f("float", lo=0), _f("float", lo=0, hi=1), _f("bool")

# The keys the code reads as numbers, switches or fixed choices. Keys absent from a config are skipped unless
# ``required`` (the ones every training job reads); free-form keys (paths, names, Lightning extras) are not checked.
SCHEMA: dict[str, Field] = {
    "seed": _f("int", required=True),
    "tta": _f("choice", choices=("none", "flips", "six"), required=True),
    "class_weighted": _f("bool", required=True),
    "save_features": BOOL,
    "ckpt_path": _f("str", none=True),
    "backbone.drop_path_rate": _f("float", lo=0, hi=1, none=True),
    "resume": _f("choice", choices=("auto", "never")),
    "gpu_pool": _f("gpus", none=True),
    "cpu_jobs": _f("int", lo=1, none=True),
    "data.dataset": _f("choice", choices=("pad_ufes", "isic2019", "derm7pt"), required=True),
    "data.fold": INT0,
    "data.split": _f("choice", choices=("stratified", "lesion_grouped", "official")),
    "data.split_seed": _f("int", none=True),
    "data.hold_out": _f("choice", choices=("second_half",), none=True),
    "data.meta_clean": BOOL,
    "data.scale_numeric": BOOL,
    "data.image_size": _f("int", lo=1, required=True),
    "data.batch_size": _f("int", lo=1, required=True),
    "data.eval_batch_size": _f("int", lo=1, none=True),
    "data.num_workers": INT0,
    "data.missing_images": _f("choice", choices=("error", "skip")),
    "data.normalize": _f("choice", choices=("imagenet", "raw_bgr")),
    "data.augment_on": _f("choice", choices=("cpu", "device")),
    "data.progress": BOOL,
    "data.augment.p": PROB,
    "data.augment.flips": BOOL,
    "data.augment.affine": BOOL,
    "data.augment.shift": PROB,
    "data.augment.scale": NUM0,
    "data.augment.rotate": _f("float", lo=0, hi=180),
    "data.augment.rotate90": BOOL,
    "data.augment.brightness_contrast": BOOL,
    "data.augment.brightness_contrast_in_block": BOOL,
    "data.cache.enabled": BOOL,
    "data.cache.size": INT1,
    "trainer.max_epochs": _f("int", lo=-1, required=True),
    "trainer.devices": _f("devices"),
    "trainer.num_nodes": INT1,
    "trainer.check_val_every_n_epoch": INT1,
    "trainer.log_every_n_steps": INT1,
    "trainer.num_sanity_val_steps": _f("int", lo=-1),
    "trainer.enable_progress_bar": BOOL,
    "trainer.enable_model_summary": BOOL,
    "trainer.sync_batchnorm": BOOL,
    "trainer.accumulate_grad_batches": INT1,
    "trainer.gradient_clip_val": _f("float", lo=0, none=True),
    "optim.optimizer.name": _f("choice", choices=("sgd", "adam", "adamw"), required=True),
    "optim.optimizer.lr": _f("float", lo=0, required=True),
    "optim.optimizer.momentum": PROB,
    "optim.optimizer.weight_decay": NUM0,
    "optim.scheduler.name": _f("choice", choices=("cosine", "none"), none=True),
    "optim.scheduler.T_max": INT1,
    "optim.scheduler.eta_min": NUM0,
    "callbacks.early_stopping.patience": INT0,
    "callbacks.model_checkpoint.save_top_k": _f("int", lo=-1),
    "model.beta": PROB,
    "model.report": _f("str"),
    "model.monitor": _f("str", none=True),   # which branches exist depends on the network: checked when it is built
    "fusion.name": _f("str"),
    "fusion.label": _f("str"),
    "structure.shared_encoder": BOOL,
    "block.name": _f("str"),
    "model.net.fusion_input": _f("choice", choices=("concat", "derm_only", "sum")),
    "model.net.shared_classifier": BOOL,
    "model.search": _f("choice", choices=("scheme1", "none"), none=True),
    **{f"model.input_dropout.{x}": _f("float", lo=0, hi=0.95) for x in INPUTS},
}


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, resolved plain value) of a dotted key; interpolation failures become ConfigErrors."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node.keys():   # keys() lists ??? values too
            return False, None
        if OmegaConf.is_missing(node, part):
            raise ConfigError(f"{key} is not set (???): it is required; a training recipe sets it (recipe=ch4)")
        try:
            node = node[part]
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]})") from None
    if isinstance(node, DictConfig | list) or OmegaConf.is_config(node):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]})") from None
    return True, node


def validate_config(cfg: DictConfig, schema: dict[str, Field] | None = None) -> None:
    """Check the composed config's value types before anything runs; the first wrong value raises a one-line
    ConfigError naming the key, the value and what was expected. The config itself is not changed."""
    if _PLUGIN_ERROR is not None:
        raise ConfigError(_PLUGIN_ERROR)
    try:   # every interpolation resolves (a resolver's own ConfigError is reported as it is)
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise ConfigError(str(cause)) from None
        key = getattr(e, "full_key", "") or "config"
        raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]})") from None
    for key, field in (schema or SCHEMA).items():
        present, value = _lookup(cfg, key)
        if not present:
            if field.required:
                raise ConfigError(f"{key} is missing: expected {field.expected()}")
            continue
        if not field.accepts(value):
            raise ConfigError(f"{key}={value!r}: expected {field.expected()}")


register_resolvers()
_store_fusion_presets(fusion_config_names(dirs=[]))
try:
    register_plugin_configs()
    _PLUGIN_ERROR: str | None = None
except ConfigError as _e:   # reported by validate_config, in one line, instead of an import traceback
    _PLUGIN_ERROR = str(_e)
