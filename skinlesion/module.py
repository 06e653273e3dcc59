"""The one LightningModule: trains any registered network with the multi-branch, multi-task loss."""
from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from skinlesion.data.info import DataInfo
from skinlesion.data.transforms import TTA_VIEWS, normalize_batch, tta_views
from skinlesion.errors import ConfigError
from skinlesion.evaluation.metrics import evaluate_predictions, main_score
from skinlesion.evaluation.predictions import to_frame


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """w_c = round(N / N_c, 3) from the training split (METHODS §1.2); a class absent from training gets 0."""
    n = counts.sum()
    w = np.where(counts > 0, np.round(n / np.maximum(counts, 1), 3), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class MultiTaskModule(L.LightningModule):
    def __init__(self, network: nn.Module, info: DataInfo, branch_weights: dict[str, float], report: str,
                 optim: dict, scheduler: dict | None = None, class_counts: list[np.ndarray] | None = None,
                 tta: str = "six", save_features: bool = False, normalize: str = "imagenet"):
        super().__init__()
        self.network, self.info = network, info
        unknown = set(branch_weights) - set(network.branches)
        if unknown:
            raise ConfigError(f"model.branch_weights names {sorted(unknown)}, but the network has branches "
                              f"{list(network.branches)}")
        if report not in ("all", "all_logits") and report not in network.branches:
            raise ConfigError(f"model.report={report!r}: expected 'all', 'all_logits' or one of "
                              f"{list(network.branches)}")
        self.branch_weights = {b: float(branch_weights.get(b, 0.0)) for b in network.branches}
        self.report, self.optim_cfg, self.sched_cfg = report, dict(optim), dict(scheduler or {})
        self.tta = tta_views(tta)
        self.save_features, self.normalize = save_features, normalize
        for j, t in enumerate(info.tasks):
            w = class_weights(class_counts[j]) if class_counts is not None else None
            self.register_buffer(f"cw_{j}", w, persistent=False)
        self._outputs: list[dict] = []
        self.eval_views: tuple[str, ...] = ("identity",)
        self.predictions: pd.DataFrame | None = None
        self.case_ids: np.ndarray | None = None   # dataset row -> case id, for the saved predictions
        self.features: np.ndarray | None = None

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Images arrive as uint8; normalise on the device."""
        if "images" in batch:
            batch["images"] = {k: normalize_batch(v, self.normalize) for k, v in batch["images"].items()}
        return batch

    # --- loss ------------------------------------------------------------------------------------------
    def loss(self, logits: dict, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        for b, w in self.branch_weights.items():
            parts[b] = sum(F.cross_entropy(logits[b][t.name].float(), target[:, j], weight=getattr(self, f"cw_{j}"))
                           for j, t in enumerate(self.info.tasks))
        total = sum(w * parts[b] for b, w in self.branch_weights.items() if w)
        return total, parts

    def training_step(self, batch, batch_idx):
        out = self.network(batch)
        loss, parts = self.loss(out["logits"], batch["target"])
        bs = batch["target"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        for b, v in parts.items():
            self.log(f"train/loss_{b}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # --- evaluation: per-epoch validation (identity view) and final TTA passes ------------------------
    def _probs(self, batch) -> tuple[dict, torch.Tensor]:
        """Softmax probabilities per branch and task averaged over ``eval_views`` (same view for all images)."""
        probs: dict = {}
        feats = None
        for view in self.eval_views:
            fn = TTA_VIEWS[view]
            b = dict(batch)
            if "images" in batch:
                b["images"] = {k: fn(v) for k, v in batch["images"].items()}
            out = self.network(b)
            if feats is None:
                feats = out["features"]
            for br, per_task in out["logits"].items():
                acc = probs.setdefault(br, {})
                for t, z in per_task.items():
                    acc[t] = acc.get(t, 0) + z.float().softmax(-1) / len(self.eval_views)
        return probs, feats

    def _collect(self, batch):
        probs, feats = self._probs(batch)
        rec = {"index": batch["index"], "target": batch["target"], "probs": probs}
        if self.save_features and self.trainer.testing:
            rec["features"] = feats.float()
        self._outputs.append(rec)

    def validation_step(self, batch, batch_idx):
        self._collect(batch)

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def _gather_frame(self) -> pd.DataFrame:
        """Outputs of all ranks in the saved predictions schema, one row per case (DDP padding duplicates
        removed); ``case_id`` is the dataset's own id when ``case_ids`` is set, else the row index."""
        outs, self._outputs = self._outputs, []
        index = torch.cat([o["index"] for o in outs])
        target = torch.cat([o["target"] for o in outs])
        cols = {(br, t): torch.cat([o["probs"][br][t.name] for o in outs])
                for br in outs[0]["probs"] for t in self.info.tasks}
        feats = torch.cat([o["features"] for o in outs]) if "features" in outs[0] else None
        if self.trainer.world_size > 1:
            index = self.all_gather(index).flatten(0, 1)
            target = self.all_gather(target).flatten(0, 1)
            cols = {k: self.all_gather(v).flatten(0, 1) for k, v in cols.items()}
            feats = None if feats is None else self.all_gather(feats).flatten(0, 1)
        index_np = index.cpu().numpy()
        _, first = np.unique(index_np, return_index=True)
        ids = index_np[first] if self.case_ids is None else self.case_ids[index_np[first]]
        targets = {t.name: target[:, j].cpu().numpy()[first] for j, t in enumerate(self.info.tasks)}
        probs: dict = {}
        for (br, t), p in cols.items():
            probs.setdefault(br, {})[t.name] = p.cpu().numpy()[first]
        self.features = None if feats is None else feats.cpu().numpy()[first]
        return to_frame(ids, targets, probs, {t.name: list(t.classes) for t in self.info.tasks})

    def on_validation_epoch_end(self):
        if not self._outputs:
            return
        frame = self._gather_frame()
        if self.trainer.sanity_checking:
            return
        metrics = evaluate_predictions(frame, combination=self.report, dataset=self.info.dataset)
        score = main_score(metrics, self.info.main_metric)
        self.log("val/main", score, prog_bar=True, sync_dist=False)
        self.log(f"val/{self.info.main_metric}", score, sync_dist=False)
        self.log("val/acc", metrics["avg_acc"], sync_dist=False)

    def on_test_epoch_end(self):
        self.predictions = self._gather_frame()

    # --- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = dict(self.optim_cfg)
        name = cfg.pop("name")
        params = [p for p in self.parameters() if p.requires_grad]
        if name == "sgd":
            opt = torch.optim.SGD(params, **cfg)
        elif name == "adam":
            opt = torch.optim.Adam(params, **cfg)
        elif name == "adamw":
            opt = torch.optim.AdamW(params, **cfg)
        else:
            raise ConfigError(f"optim.name={name!r}: expected sgd, adam or adamw")
        sched = dict(self.sched_cfg)
        kind = sched.pop("name", None)
        if kind in (None, "none"):
            return opt
        if kind != "cosine":
            raise ConfigError(f"scheduler.name={kind!r}: expected cosine or none")
        # Stepped once per epoch, T_max in epochs (METHODS §3.3, §4.4).
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(sched.get("T_max", 150)),
                                                         eta_min=float(sched.get("eta_min", 0.0)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cos, "interval": "epoch"}}
