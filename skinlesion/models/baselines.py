"""Single-modality baselines: image only (backbone + head) and metadata only (M_M + head)."""
from __future__ import annotations

from skinlesion.data.info import DataInfo
from skinlesion.models import register_model
from skinlesion.models.backbones import Backbone
from skinlesion.models.base import Network, pick_image
from skinlesion.models.heads import MultiTaskHead
from skinlesion.models.meta_encoder import MetaEncoder


@register_model("image_only")
class ImageOnly(Network):
    branches = ("image",)

    @classmethod
    def required_images(cls, cfg, info):
        return (pick_image(cfg.get("image_key"), info),)

    def __init__(self, info: DataInfo, backbone: dict, image_key: str | None = None, head: dict | None = None):
        super().__init__()
        self.image_key = pick_image(image_key, info)
        self.backbone = Backbone(**backbone)
        self.head = MultiTaskHead(self.backbone.num_features, info.tasks, **(head or {}))

    def forward(self, batch):
        f = self.backbone(batch["images"][self.image_key])
        return {"logits": {"image": self.head(f)}, "features": f}


@register_model("meta_only")
class MetaOnly(Network):
    branches = ("meta",)

    @classmethod
    def uses_meta(cls, cfg):
        return True

    # ``backbone`` is accepted (every network gets the backbone config) and unused: no image is read.
    def __init__(self, info: DataInfo, backbone: dict | None = None, meta_encoder: dict | None = None,
                 head: dict | None = None):
        super().__init__()
        self.encoder = MetaEncoder(info.meta_dim, **(meta_encoder or {}))
        self.head = MultiTaskHead(self.encoder.out_features, info.tasks, **(head or {}))

    def forward(self, batch):
        f = self.encoder(batch["meta"])
        return {"logits": {"meta": self.head(f)}, "features": f}
