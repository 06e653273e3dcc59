"""The inference payload: what predicting new cases needs besides a checkpoint's weights, written into every
checkpoint at training time (``MultiTaskModule.on_save_checkpoint``) and read by :mod:`skinlesion.predict`. A
versioned record of plain Python values (loadable with ``torch.load(..., weights_only=True)``): the resolved config,
tasks and classes, the image keys the network reads, image size, normalisation, test-time views, the fitted metadata
vectorizer and the inputs each branch needs."""
from __future__ import annotations

PAYLOAD_KEY = "inference"
PAYLOAD_VERSION = 1


def _vectorizer(dm):
    """The run's fitted metadata vectorizer (None without metadata)."""
    return dm.vectorizer if dm.info.meta_dim else None


def _plain_config(cfg) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        # e.g. ${hydra:...} paths outside a Hydra app; the model's own keys still resolve when the config is
        # recreated from the saved (interpolated) values
        return OmegaConf.to_container(cfg, resolve=False)


def inference_payload(cfg, dm, module=None) -> dict:
    """What predicting new cases needs besides the weights, as plain Python values (loadable with
    ``torch.load(..., weights_only=True)``). ``dm`` is the run's set-up DataModule."""
    saved = getattr(dm, "inference_payload", None)
    if saved is not None:   # the stand-in DataModule of a model rebuilt from a checkpoint
        return saved
    from skinlesion.config import dropped_inputs
    from skinlesion.data.transforms import tta_views
    from skinlesion.models import branch_inputs, required_inputs

    info = dm.info
    vec = _vectorizer(dm)
    inputs = branch_inputs(cfg.model.net, info)
    cache = dict(getattr(dm, "cache_cfg", None) or {})
    image_keys = list(required_inputs(cfg.model.net, info))
    return {
        "version": PAYLOAD_VERSION,
        "config": _plain_config(cfg),
        "dataset": info.dataset,
        "tasks": {t.name: list(t.classes) for t in info.tasks},
        "image_keys": image_keys,                       # what the network reads, primary first
        "dataset_image_keys": list(info.image_keys),
        "meta_dim": int(info.meta_dim),
        "image_size": int(dm.image_size),
        "normalize": str(dm.normalize),
        # evaluation read the run's pre-resized cache copies (PIL bilinear) when it had one
        "pre_resize": int(cache.get("size", 256)) if cache.get("enabled") and image_keys else None,
        "tta": list(module.tta if module is not None else tta_views(cfg.tta)),
        "report": str(cfg.model.report),
        "search": cfg.model.get("search"),
        "branches": list(inputs),
        "branch_inputs": {b: list(need) for b, need in inputs.items()},
        # inputs the fused branches learned to do without (model.input_dropout): prediction then keeps them
        "input_dropout": dropped_inputs(cfg),
        "metadata": None if vec is None else vec.state_dict(),
    }
