"""Clinical + dermoscopy networks (thesis chapters 5-6): two image encoders run stage by stage, optional
attention blocks between the stages, and three multi-task heads.

    stem_C(x_C), stem_D(x_D)
    for stage i = 1..4:  C, D = stage_i(C), stage_i(D);  if i in block_stages: C, D = block_i(C, D)
    f_C, f_D = pool(C), pool(D)
    P_clinic = head_C(f_C),  P_derm = head_D(f_D),  P_fusion = head_F(fuse(f_C, f_D))

One class covers the chapter's structures, chosen by configuration:
- SFF: the same backbone for both images (``clinic_backbone`` unset); AFF: a different clinical backbone
  (MobileNetV3-Small clinical with Swin-T dermoscopy by default);
- ``shared_encoder``: one encoder for both images (PEMM), run once over the two images stacked on the batch axis
  (which matters for BatchNorm backbones: both modalities share the batch statistics);
- ``block``: none (CAT), aab, bab, sca, self or sca_self (see :mod:`skinlesion.models.spatial_attention`);
- ``fusion_input``: concat ([f_C; f_D], default), derm_only (f_D alone: the reading under which the thesis's
  AAB parameter counts come out exactly) or sum (f_C + f_D, FusionNet);
- ``shared_classifier``: one head serves both single-image branches;
- ``heads``: all three heads (default) or ``fusion`` alone (the one-stage baselines of chapter 6);
- ``meta_fusion``: also fuse the raw metadata vector into the fused image feature with a chapter-4 fusion module
  (``cat`` with ``reducer: 0`` = concatenation, ``metablock``, ``metanet``; options in ``meta_fusion_options``).

Branches are (derm, clinic, fusion), the order every weight search uses.
"""
from __future__ import annotations

import torch
from torch import nn

from skinlesion.data.info import DataInfo
from skinlesion.errors import ConfigError
from skinlesion.models import register_model
from skinlesion.models.backbones import Backbone
from skinlesion.models.base import META_INPUT, Network
from skinlesion.models.fusion import build_fusion
from skinlesion.models.heads import MultiTaskHead
from skinlesion.models.spatial_attention import BLOCK_REGISTRY
from skinlesion.models.stagewise import StageRunner

FUSION_INPUTS = ("concat", "derm_only", "sum")
BLOCKS = ("none", *BLOCK_REGISTRY)


@register_model("two_image")
class TwoImageNetwork(Network):
    branches = ("derm", "clinic", "fusion")

    @classmethod
    def required_images(cls, cfg, info):
        return ("derm", "clinic")

    @classmethod
    def uses_meta(cls, cfg):
        return cfg.get("meta_fusion") is not None

    @classmethod
    def branch_inputs(cls, cfg, info):
        # Attention blocks pass information between the encoders: aab refines the dermoscopy map with the clinical
        # one (the clinical map passes unchanged), bab and sca work both ways; none (CAT), self and sca_self keep
        # them apart.
        # A shared encoder runs the images as one batch, but in eval mode every sample is computed on its own.
        block = cfg.get("block", "none") if list(cfg.get("block_stages", (1, 2, 3, 4))) else "none"
        apart = block in ("none", "self", "sca_self")
        derm = ("derm",) if apart else ("derm", "clinic")
        clinic = ("clinic",) if apart or block == "aab" else ("clinic", "derm")
        fused = derm if cfg.get("fusion_input", "concat") == "derm_only" else tuple(dict.fromkeys(derm + clinic))
        if cfg.get("meta_fusion") is not None:
            fused = (*fused, META_INPUT)
        inputs = {"derm": derm, "clinic": clinic, "fusion": fused}
        return {b: inputs[b] for b in (("fusion",) if cfg.get("heads", "all") == "fusion" else cls.branches)}

    @classmethod
    def check_data(cls, cfg, info):
        block, fusion_input = cfg.get("block", "none"), cfg.get("fusion_input", "concat")
        if block not in BLOCKS:
            raise ConfigError(f"model.net.block={block!r}: expected one of {list(BLOCKS)}")
        if fusion_input not in FUSION_INPUTS:
            raise ConfigError(f"model.net.fusion_input={fusion_input!r}: expected one of {list(FUSION_INPUTS)}")
        stages = list(cfg.get("block_stages", (1, 2, 3, 4)))
        if any(s not in (1, 2, 3, 4) for s in stages):
            raise ConfigError(f"model.net.block_stages={stages}: stages are numbered 1..4")
        if cfg.get("heads", "all") not in ("all", "fusion"):
            raise ConfigError(f"model.net.heads={cfg.get('heads')!r}: expected 'all' or 'fusion'")
        if cfg.get("shared_encoder") and cfg.get("clinic_backbone"):
            raise ConfigError("model.net.shared_encoder=true runs one encoder for both images; "
                              "a separate clinic_backbone contradicts it")
        super().check_data(cfg, info)

    def __init__(self, info: DataInfo, backbone: dict, clinic_backbone: dict | None = None,
                 shared_encoder: bool = False, block: str = "none", block_stages=(1, 2, 3, 4),
                 block_options: dict | None = None, fusion_input: str = "concat", shared_classifier: bool = False,
                 head: dict | None = None, heads: str = "all", meta_fusion: str | None = None,
                 meta_fusion_options: dict | None = None):
        super().__init__()
        self.check_data({"block": block, "fusion_input": fusion_input, "block_stages": block_stages,
                         "shared_encoder": shared_encoder, "clinic_backbone": clinic_backbone, "heads": heads,
                         "meta_fusion": meta_fusion}, info)
        if heads == "fusion":
            self.branches = ("fusion",)
        self.shared_encoder, self.fusion_input = shared_encoder, fusion_input
        self.derm_encoder = Backbone(**backbone)
        if shared_encoder:
            self.clinic_encoder = None
        else:
            self.clinic_encoder = Backbone(**{**backbone, **(clinic_backbone or {})})
        self._runners = {"derm": StageRunner(self.derm_encoder.model),
                         "clinic": StageRunner(self._encoder("clinic").model)}
        c_ch, d_ch = self._runners["clinic"].channels, self._runners["derm"].channels
        self.block_stages = tuple(sorted(set(int(s) for s in block_stages))) if block != "none" else ()
        try:
            self.blocks = nn.ModuleDict({str(s): BLOCK_REGISTRY[block](c_ch[s - 1], d_ch[s - 1], **(block_options or {}))
                                         for s in self.block_stages})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.net.block={block!r}: {e}") from None

        f_c, f_d = self._encoder("clinic").num_features, self.derm_encoder.num_features
        if fusion_input == "sum" and f_c != f_d:
            raise ConfigError(f"model.net.fusion_input=sum needs equal feature widths; clinical {f_c}, dermoscopy {f_d}")
        if shared_classifier and f_c != f_d:
            raise ConfigError(f"model.net.shared_classifier=true needs equal feature widths; clinical {f_c}, "
                              f"dermoscopy {f_d}")
        fused = {"concat": f_c + f_d, "derm_only": f_d, "sum": f_d}[fusion_input]
        self.meta_fusion = None
        if meta_fusion is not None:
            try:
                self.meta_fusion = build_fusion(meta_fusion, fused, info.meta_dim, **(meta_fusion_options or {}))
            except ValueError as e:
                raise ConfigError(f"model.net.meta_fusion={meta_fusion!r}: {e}") from None
            fused = self.meta_fusion.out_dim
        head = {"kind": "mlp", **(head or {})}
        self.heads = nn.ModuleDict({"fusion": MultiTaskHead(fused, info.tasks, **head)})
        self.clinic_head = None
        if heads == "all":
            self.heads["derm"] = MultiTaskHead(f_d, info.tasks, **head)
            # A shared classifier is the derm head used for both images (registered once).
            self.clinic_head = None if shared_classifier else MultiTaskHead(f_c, info.tasks, **head)

    def _encoder(self, modality: str) -> Backbone:
        return self.derm_encoder if modality == "derm" or self.clinic_encoder is None else self.clinic_encoder

    def encode(self, x_clinic: torch.Tensor, x_derm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled (clinical, dermoscopy) features after the stage-wise blocks."""
        rc, rd = self._runners["clinic"], self._runners["derm"]
        if self.shared_encoder:
            n = x_clinic.shape[0]
            x = rd.stem(torch.cat([x_clinic, x_derm]))
            for i in range(4):
                x = rd.stage(i, x)
                if i + 1 in self.block_stages:
                    x = torch.cat(self.blocks[str(i + 1)](x[:n], x[n:]))
            f = rd.pool(x)
            return f[:n], f[n:]
        c, d = rc.stem(x_clinic), rd.stem(x_derm)
        for i in range(4):
            c, d = rc.stage(i, c), rd.stage(i, d)
            if i + 1 in self.block_stages:
                c, d = self.blocks[str(i + 1)](c, d)
        return rc.pool(c), rd.pool(d)

    def forward(self, batch):
        f_c, f_d = self.encode(batch["images"]["clinic"], batch["images"]["derm"])
        fused = {"concat": lambda: torch.cat([f_c, f_d], 1), "derm_only": lambda: f_d,
                 "sum": lambda: f_c + f_d}[self.fusion_input]()
        if self.meta_fusion is not None:
            fused = self.meta_fusion(fused, batch["meta"])
        logits = {"fusion": self.heads["fusion"](fused)}
        if "derm" in self.heads:
            clinic_head = self.clinic_head if self.clinic_head is not None else self.heads["derm"]
            logits = {"derm": self.heads["derm"](f_d), "clinic": clinic_head(f_c), **logits}
        return {"logits": logits, "features": fused}
