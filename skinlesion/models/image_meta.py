"""Chapter-4 image + metadata networks (thesis Fig. 4.1): joint fusion (JF) and joint-individual
fusion (JIF).

Both are M_I (backbone) + M_M (metadata encoder) + a fusion module F + single-Linear classifiers. JF trains
and predicts only from the fused feature (branch ``fusion``); JIF adds the image and metadata branches, whose
losses also reach the shared M_I and M_M.
"""
from __future__ import annotations

from torch import nn

from skinlesion.data.info import DataInfo
from skinlesion.errors import ConfigError
from skinlesion.models import register_model
from skinlesion.models.backbones import Backbone
from skinlesion.models.base import META_INPUT, Network, pick_image
from skinlesion.models.fusion import build_fusion
from skinlesion.models.heads import MultiTaskHead
from skinlesion.models.meta_encoder import MetaEncoder

META_INPUTS = ("encoded", "raw")   # m fed to F: f_M (default) or the raw encoded metadata vector


class _ImageMetaNetwork(Network):
    branches: tuple[str, ...] = ()

    @classmethod
    def required_images(cls, cfg, info):
        return (pick_image(cfg.get("image_key"), info),)

    @classmethod
    def uses_meta(cls, cfg):
        return True

    @classmethod
    def branch_inputs(cls, cfg, info):
        image = pick_image(cfg.get("image_key"), info)
        inputs = {"image": (image,), "meta": (META_INPUT,), "fusion": (image, META_INPUT)}
        return {b: inputs[b] for b in cls.branches}

    @classmethod
    def check_data(cls, cfg, info):
        meta_input = cfg.get("meta_input", "encoded")
        if meta_input not in META_INPUTS:
            raise ConfigError(f"model '{cls.registry_name}': meta_input={meta_input!r}; expected one of {META_INPUTS}")
        super().check_data(cfg, info)

    def __init__(self, info: DataInfo, backbone: dict, fusion: str = "mmfa", fusion_options: dict | None = None,
                 meta_encoder: dict | None = None, meta_input: str = "encoded", image_key: str | None = None,
                 head: dict | None = None):
        super().__init__()
        # Repeated here so that direct construction (bypassing build_network) fails just as clearly.
        self.check_data({"image_key": image_key, "meta_input": meta_input}, info)
        self.image_key = pick_image(image_key, info)
        self.meta_input = meta_input
        self.fusion_name = fusion

        self.backbone = Backbone(**backbone)
        img_dim = self.backbone.num_features
        # JF with raw metadata never uses f_M: no encoder, so no idle parameters (DDP) and an honest count.
        needs_encoder = meta_input == "encoded" or "meta" in self.branches
        self.encoder = MetaEncoder(info.meta_dim, **(meta_encoder or {})) if needs_encoder else None
        fused_meta_dim = self.encoder.out_features if meta_input == "encoded" else info.meta_dim
        try:
            self.fusion = build_fusion(fusion, img_dim, fused_meta_dim, **(fusion_options or {}))
        except ValueError as err:
            raise ConfigError(f"model '{self.registry_name}' with backbone {backbone.get('name')!r}: {err}") from err

        widths = {"image": img_dim, "meta": self.encoder.out_features if self.encoder else 0,
                  "fusion": self.fusion.out_dim}
        # C_I, C_M, C_IM are single Linear layers in chapter 4; chapter 6's one-stage baselines use the MLP head.
        head = {"kind": "linear", **(head or {})}
        self.heads = nn.ModuleDict({b: MultiTaskHead(widths[b], info.tasks, **head) for b in self.branches})

    def forward(self, batch):
        f_img = self.backbone(batch["images"][self.image_key])
        meta = batch["meta"]
        f_meta = self.encoder(meta) if self.encoder is not None else None
        f_fused = self.fusion(f_img, f_meta if self.meta_input == "encoded" else meta)
        feats = {"image": f_img, "meta": f_meta, "fusion": f_fused}
        logits = {b: self.heads[b](feats[b]) for b in self.branches}
        return {"logits": logits, "features": f_fused}


@register_model("jf")
class JointFusion(_ImageMetaNetwork):
    """JF: P_IM = C_IM(F(f_I, m)); loss L_IM."""
    branches = ("fusion",)


@register_model("jif")
class JointIndividualFusion(_ImageMetaNetwork):
    """JIF: JF plus P_I = C_I(f_I) and P_M = C_M(f_M); loss β·L_I + (1−β)·L_M + L_IM via branch_weights."""
    branches = ("image", "meta", "fusion")
