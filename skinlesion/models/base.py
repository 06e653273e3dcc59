"""Shared pieces of every network: data-compatibility checks and parameter accounting."""
from __future__ import annotations

from torch import nn

from skinlesion.data.info import META_INPUT, DataInfo
from skinlesion.errors import ConfigError


class Network(nn.Module):
    registry_name: str = "?"
    branches: tuple[str, ...] = ()

    # What the network reads; checked against the dataset before anything is built.
    @classmethod
    def required_images(cls, cfg: dict, info: DataInfo) -> tuple[str, ...]:
        return ()

    @classmethod
    def uses_meta(cls, cfg: dict) -> bool:
        return False

    @classmethod
    def branch_inputs(cls, cfg: dict, info: DataInfo) -> dict[str, tuple[str, ...]]:
        """Per branch, the inputs its prediction depends on: image keys and ``"meta"``. A case that lacks an input
        can still be predicted from the branches that do not need it. Default: every branch reads every input."""
        need = (*cls.required_images(cfg, info), *((META_INPUT,) if cls.uses_meta(cfg) else ()))
        return {b: need for b in cls.branches}

    @classmethod
    def check_data(cls, cfg: dict, info: DataInfo) -> None:
        need = cls.required_images(cfg, info)
        missing = [k for k in need if k not in info.image_keys]
        if missing:
            raise ConfigError(
                f"model '{cls.registry_name}' needs image modality {missing} "
                f"({len(need)} image(s): {list(need)}) but data '{info.dataset}' provides {list(info.image_keys)}")
        if cls.uses_meta(cfg) and info.meta_dim == 0:
            raise ConfigError(f"model '{cls.registry_name}' needs metadata but data '{info.dataset}' "
                              "is configured without metadata (data.meta is null)")
        if cls.uses_meta(cfg) and info.meta_leaks:
            raise ConfigError(f"model '{cls.registry_name}' reads metadata that encodes the labels of task(s) "
                              f"{list(info.meta_leaks)} it predicts (derm7pt m14 holds the seven raw criteria): "
                              "use data.meta=m20, or data.tasks=[DIAG] for the chapter-4 setting")

    def param_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        # Thesis convention: backbones counted with their unused ImageNet classifier.
        thesis = total
        for module in self.modules():
            if hasattr(module, "thesis_param_count") and module is not self:
                thesis += module.thesis_param_count() - sum(p.numel() for p in module.parameters())
        return {"total": total, "trainable": trainable, "thesis_count": thesis}


def pick_image(image_key: str | None, info: DataInfo) -> str:
    """The image modality a single-image network reads: as configured, else the dataset's primary one."""
    if image_key is None:
        return info.image_keys[0]
    return image_key
