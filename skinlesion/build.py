"""What a run is built from, shared by training, :func:`skinlesion.load_run` and prediction: the configured
DataModule and the LightningModule around the configured network."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


def prepare_data(cfg: DictConfig):
    """The DataModule, set up for the configured model (checked against the dataset before any file is read)."""
    from skinlesion.models import required_inputs

    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.set_input_keys(required_inputs(cfg.model.net, dm.info))
    dm.setup()
    return dm


def build_module(cfg: DictConfig, dm, pretrained: bool = True):
    """The configured network inside the LightningModule, with class weights from ``dm``'s training split.
    ``pretrained=False`` skips loading ImageNet weights (a checkpoint will supply them)."""
    from skinlesion.models import branch_inputs, build_network
    from skinlesion.module import MultiTaskModule
    from skinlesion.payload import inference_payload

    backbone, net_cfg = cfg.backbone, cfg.model.net
    if not pretrained:
        backbone = OmegaConf.merge(backbone, {"pretrained": False})
        net_cfg = OmegaConf.to_container(net_cfg, resolve=True)
        if net_cfg.get("clinic_backbone"):
            net_cfg["clinic_backbone"]["pretrained"] = False
    network = build_network(net_cfg, backbone, dm.info)
    module = MultiTaskModule(
        network, dm.info, branch_weights=OmegaConf.to_container(cfg.model.branch_weights, resolve=True),
        report=cfg.model.report, monitor=cfg.model.get("monitor"), optim=cfg.optim.optimizer,
        scheduler=cfg.optim.scheduler,
        class_counts=dm.class_counts() if cfg.class_weighted else None, tta=cfg.tta,
        save_features=cfg.save_features, normalize=dm.normalize,
        input_dropout=dict(cfg.model.get("input_dropout") or {}),
        branch_inputs=branch_inputs(net_cfg, dm.info), seed=int(cfg.get("seed") or 0))
    module.case_ids = dm.table.case_ids
    module.batch_augment = getattr(dm, "batch_augment", None)   # data.augment_on=device: training batches
    module.inference_payload = inference_payload(cfg, dm, module)   # saved into every checkpoint
    return module
