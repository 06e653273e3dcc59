"""The one LightningModule: trains any registered network with the multi-branch, multi-task loss."""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from skinlesion.data.info import META_INPUT, DataInfo
from skinlesion.data.transforms import TTA_VIEWS, normalize_batch, tta_views
from skinlesion.errors import ConfigError, SkinLesionError
from skinlesion.evaluation.predictions import to_frame
from skinlesion.payload import PAYLOAD_KEY


class LossDiverged(SkinLesionError):
    """The training loss became NaN or infinite; carries where, so the run record can say so."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss diverged at epoch {epoch}, step {step} (loss={value}); training stopped. "
                         f"A lower learning rate (optim.optimizer.lr) usually helps")


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """w_c = round(N / N_c, 3) from the training split; a class absent from training gets 0."""
    n = counts.sum()
    w = np.where(counts > 0, np.round(n / np.maximum(counts, 1), 3), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class MultiTaskModule(L.LightningModule):
    def __init__(self, network: nn.Module, info: DataInfo, branch_weights: dict[str, float], report: str,
                 optim: dict, scheduler: dict | None = None, class_counts: list[np.ndarray] | None = None,
                 tta: str = "six", save_features: bool = False, normalize: str = "imagenet",
                 monitor: str | None = None, input_dropout: dict[str, float] | None = None,
                 branch_inputs: dict[str, tuple[str, ...]] | None = None, seed: int = 0):
        super().__init__()
        self.network, self.info = network, info
        # A zero weight for a branch the network lacks is ignored (presets switch a branch's loss off that way).
        unknown = {b for b, w in branch_weights.items() if float(w) != 0.0} - set(network.branches)
        if unknown:
            raise ConfigError(f"model.branch_weights names {sorted(unknown)}, but the network has branches "
                              f"{list(network.branches)}")
        if report not in ("all", "all_logits") and report not in network.branches:
            raise ConfigError(f"model.report={report!r}: expected 'all', 'all_logits' or one of "
                              f"{list(network.branches)}")
        # What val/main tracks: the reported output, or ``branch_mean`` — each branch scored on its own and the
        # scores averaged (FusionNet's checkpoint selection: per-task accuracy averaged over its three branches).
        monitor = monitor or report
        if monitor not in ("all", "all_logits", "branch_mean") and monitor not in network.branches:
            raise ConfigError(f"model.monitor={monitor!r}: expected 'all', 'all_logits', 'branch_mean' or one of "
                              f"{list(network.branches)}")
        self.monitor = monitor
        self.branch_weights = {b: float(branch_weights.get(b, 0.0)) for b in network.branches}
        self.report, self.optim_cfg, self.sched_cfg = report, dict(optim), dict(scheduler or {})
        self.tta = tta_views(tta)
        self.save_features, self.normalize = save_features, normalize
        for j, t in enumerate(info.tasks):
            w = class_weights(class_counts[j]) if class_counts is not None else None
            self.register_buffer(f"cw_{j}", w, persistent=False)
        # Per-epoch validation: one confusion matrix per task (torchmetrics sums it across DDP ranks). BAC and
        # ACC are read from it with the offline definitions (recall averaged over the classes present), which
        # macro-averaged MulticlassAccuracy does not match when a class is predicted but absent from the split.
        scored = network.branches if monitor == "branch_mean" else (monitor,)
        self.val_confusion = nn.ModuleDict({b: nn.ModuleList(
            MulticlassConfusionMatrix(num_classes=t.num_classes, validate_args=False) for t in info.tasks)
            for b in scored})
        self._outputs: list[dict] = []
        self.eval_views: tuple[str, ...] = ("identity",)
        self.predictions: pd.DataFrame | None = None
        self.case_ids: np.ndarray | None = None   # dataset row -> case id, for the saved predictions
        self.features: np.ndarray | None = None
        # data.augment_on=device: the DataModule's device augmentation (train.build_module sets it). A plain object,
        # not a submodule, so checkpoints keep their keys.
        self.batch_augment = None
        # model.input_dropout: per input, the probability that a training case goes without it; branch_inputs says
        # which branches lose the case. Only an input a fused branch reads with another can be dropped.
        self.input_dropout = {x: float(p) for x, p in (input_dropout or {}).items() if float(p) > 0}
        self.branch_inputs = {b: tuple(need) for b, need in (branch_inputs or {}).items()}
        self.seed = int(seed)
        for x, p in self.input_dropout.items():
            if not any(x in need and len(need) > 1 for need in self.branch_inputs.values()):
                raise ConfigError(f"model.input_dropout.{x}={p}: no branch of this network reads '{x}' together with "
                                  f"another input (branch inputs: {self.branch_inputs}); input dropout teaches a "
                                  "fused branch to answer without one of its inputs")

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Images arrive as uint8; training batches of data.augment_on=device are augmented here (they carry the
        case's draws as ``aug``; evaluation batches never do), then everything is normalised on the device."""
        draws = batch.pop("aug", None) if isinstance(batch, dict) else None
        if draws is not None and "images" in batch:
            if self.batch_augment is None:
                raise ConfigError("training batches of data.augment_on=device reach a module without its augmentation: "
                                  "set module.batch_augment = datamodule.batch_augment (train.build_module does)")
            batch["images"] = self.batch_augment(batch["images"], draws)
        if "images" in batch:
            batch["images"] = {k: normalize_batch(v, self.normalize) for k, v in batch["images"].items()}
        return batch

    # --- loss ------------------------------------------------------------------------------------------
    def loss(self, logits: dict, target: torch.Tensor, absent: dict[str, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the branches' losses. ``absent`` (input dropout): per input, the cases that went
        without it; a branch that reads none of a case's remaining inputs adds no loss for that case."""
        parts = {}
        for b, w in self.branch_weights.items():
            keep = None
            need = self.branch_inputs.get(b, ())
            if absent and need:   # the cases that kept at least one input this branch reads
                every = torch.ones_like(target[:, 0], dtype=torch.bool)
                keep = torch.stack([~absent[x] if x in absent else every for x in need]).any(0)
            parts[b] = sum(self._cross_entropy(logits[b][t.name].float(), target[:, j], getattr(self, f"cw_{j}"), keep)
                           for j, t in enumerate(self.info.tasks))
        total = sum(w * parts[b] for b, w in self.branch_weights.items() if w)
        return total, parts

    @staticmethod
    def _cross_entropy(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                       keep: torch.Tensor | None) -> torch.Tensor:
        """Class-weighted mean cross-entropy (as F.cross_entropy), over the ``keep`` cases only when given."""
        if keep is None:
            return F.cross_entropy(z, y, weight=weight)
        each = F.cross_entropy(z, y, weight=weight, reduction="none")   # already scaled by the class weight
        w = (weight[y] if weight is not None else torch.ones_like(each)) * keep
        return (each * keep).sum() / w.sum().clamp_min(1e-12)

    # --- input dropout -----------------------------------------------------------------------------------
    def draw_absent(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per dropped input, which cases of the training batch go without it. Drawn from a stream seeded by the
        run's seed and the global step, so a resumed run drops the same inputs as an uninterrupted one. A case never
        loses every input: such a case keeps them all."""
        n = batch["target"].shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))
        absent = {x: torch.rand(n, generator=g) < p for x, p in sorted(self.input_dropout.items())}
        reads = {x for need in self.branch_inputs.values() for x in need}
        if reads <= set(absent):
            everything = torch.stack([absent[x] for x in reads]).all(0)
            absent = {x: m & ~everything for x, m in absent.items()}
        return {x: m.to(batch["target"].device) for x, m in absent.items()}

    @staticmethod
    def blank_absent(batch: dict, absent: dict[str, torch.Tensor]) -> dict:
        """An absent input as the fusion sees it: zeros after normalisation (an image of the normalisation's mean
        colour; an all-zero metadata vector, as a row whose every field is empty and numeric fields at 0)."""
        for x, mask in absent.items():
            if x == META_INPUT and "meta" in batch:
                batch["meta"] = batch["meta"].masked_fill(mask[:, None], 0)
            elif x in batch.get("images", {}):
                batch["images"][x] = batch["images"][x].masked_fill(mask[:, None, None, None], 0)
        return batch

    def training_step(self, batch, batch_idx):
        absent = self.draw_absent(batch) if self.input_dropout else None
        if absent:
            batch = self.blank_absent(batch, absent)
        out = self.network(batch)
        loss, parts = self.loss(out["logits"], batch["target"], absent)
        self._watch_loss(loss, batch_idx)
        bs = batch["target"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        for b, v in parts.items():
            self.log(f"train/loss_{b}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # A non-finite loss stops the run, naming the first step that diverged. On the CPU every step is checked (it
    # costs nothing); on an accelerator the check stays on the device and the host reads it every
    # `divergence_check_every` steps and at the epoch's end, so no step waits for the device. Under DDP every rank
    # reads it at the same steps and takes the same decision, so no rank is left waiting in an all-reduce.
    divergence_check_every: int | None = None   # None: 1 on the CPU, 50 on an accelerator

    def _watch_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        loss = loss.detach()
        if getattr(self, "_first_bad", None) is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        newly = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(newly, torch.full_like(self._first_bad, self.global_step), self._first_bad)
        self._bad_value = torch.where(newly, loss.float(), self._bad_value)
        every = self.divergence_check_every or (1 if loss.device.type == "cpu" else 50)
        if (batch_idx + 1) % every == 0:
            self._check_divergence()

    def _check_divergence(self) -> None:
        first = getattr(self, "_first_bad", None)
        if first is None:
            return
        diverged = bool(first >= 0)   # the one host sync, every few steps
        if self.trainer.world_size > 1:
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            step = int(first) if int(first) >= 0 else self.global_step   # another rank's divergence: here, now
            raise LossDiverged(self.current_epoch, step, float(self._bad_value))

    def on_train_epoch_end(self) -> None:
        self._check_divergence()

    # --- evaluation: per-epoch validation (identity view) and final TTA passes ------------------------
    def tta_outputs(self, batch) -> tuple[dict, dict, torch.Tensor]:
        """Per branch and task, the softmax probabilities and the logits, each averaged over ``eval_views``
        (the same view for all images of a case), and the fused features of the first view."""
        probs: dict = {}
        logits: dict = {}
        feats = None
        n = len(self.eval_views)
        for view in self.eval_views:
            fn = TTA_VIEWS[view]
            b = dict(batch)
            if "images" in batch:
                b["images"] = {k: fn(v) for k, v in batch["images"].items()}
            out = self.network(b)
            if feats is None:
                feats = out["features"]
            for br, per_task in out["logits"].items():
                p_acc, z_acc = probs.setdefault(br, {}), logits.setdefault(br, {})
                for t, z in per_task.items():
                    z = z.float()
                    p_acc[t] = p_acc.get(t, 0) + z.softmax(-1) / n
                    z_acc[t] = z_acc.get(t, 0) + z / n
        return probs, logits, feats

    def combined_probs(self, probs: dict, logits: dict, output: str | None = None) -> dict[str, torch.Tensor]:
        """Per task, the probabilities of an output (default: the reported one): a branch, ``all`` (mean of the
        branch probabilities) or ``all_logits`` (softmax of the mean branch logits)."""
        output = output or self.report
        if output == "all":
            return {t.name: sum(probs[b][t.name] for b in probs) / len(probs) for t in self.info.tasks}
        if output == "all_logits":
            return {t.name: (sum(logits[b][t.name] for b in logits) / len(logits)).softmax(-1)
                    for t in self.info.tasks}
        return probs[output]

    def validation_step(self, batch, batch_idx):
        probs, logits, _ = self.tta_outputs(batch)
        for output, per_task in self.val_confusion.items():
            combined = self.combined_probs(probs, logits, output)
            for j, t in enumerate(self.info.tasks):
                per_task[j].update(combined[t.name].argmax(-1), batch["target"][:, j])

    @staticmethod
    def _read_confusion(per_task) -> tuple[list[float], list[float]]:
        """Per-task BAC and ACC from the epoch's confusion matrices (then reset)."""
        bac, acc = [], []
        for cm_metric in per_task:
            cm = cm_metric.compute().double()   # synchronised across ranks
            cm_metric.reset()
            support = cm.sum(1)
            present = support > 0
            recall = cm.diagonal()[present] / support[present]
            bac.append(recall.mean().item() if present.any() else math.nan)
            acc.append((cm.diagonal().sum() / cm.sum()).item() if cm.sum() > 0 else math.nan)
        return bac, acc

    def on_validation_epoch_end(self):
        per_output = [self._read_confusion(per_task) for per_task in self.val_confusion.values()]
        if self.trainer.sanity_checking:
            return
        # Per task, the scores averaged over the scored outputs (one, unless monitor=branch_mean); then the main
        # metric: mean task BAC (the BAC itself for one task) or mean task ACC (multi-task data).
        bac, acc = (np.nanmean(np.array([o[k] for o in per_output], dtype=float), axis=0) if per_output else []
                    for k in (0, 1))
        defined = [v for v in (bac if self.info.main_metric == "bac" else acc) if not math.isnan(v)]
        score = float(np.mean(defined)) if defined else math.nan
        avg_acc = [v for v in acc if not math.isnan(v)]
        self.log("val/main", score, prog_bar=True)
        self.log(f"val/{self.info.main_metric}", score)
        self.log("val/acc", float(np.mean(avg_acc)) if avg_acc else math.nan)

    def test_step(self, batch, batch_idx):
        probs, logits, feats = self.tta_outputs(batch)
        rec = {"index": batch["index"], "target": batch["target"], "probs": probs, "logits": logits}
        if self.save_features:
            rec["features"] = feats.float()
        self._outputs.append(rec)

    def _gather_frame(self) -> pd.DataFrame:
        """Outputs of all ranks in the saved predictions schema, one row per case (DDP padding duplicates
        removed); ``case_id`` is the dataset's own id when ``case_ids`` is set, else the row index."""
        outs, self._outputs = self._outputs, []
        index = torch.cat([o["index"] for o in outs])
        target = torch.cat([o["target"] for o in outs])
        cols = {(kind, br, t): torch.cat([o[kind][br][t.name] for o in outs])
                for kind in ("probs", "logits") for br in outs[0]["probs"] for t in self.info.tasks}
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
        arrays: dict = {"probs": {}, "logits": {}}
        for (kind, br, t), v in cols.items():
            arrays[kind].setdefault(br, {})[t.name] = v.cpu().numpy()[first]
        self.features = None if feats is None else feats.cpu().numpy()[first]
        return to_frame(ids, targets, arrays["probs"], {t.name: list(t.classes) for t in self.info.tasks},
                        logits=arrays["logits"])

    def on_test_epoch_end(self):
        self.predictions = self._gather_frame()

    # --- checkpoints ------------------------------------------------------------------------------------
    # What predicting new cases needs besides the weights (config, classes, preprocessing, fitted metadata
    # encoding, branch inputs): plain Python values, set by skinlesion.build.build_module (skinlesion.predict reads it).
    inference_payload: dict | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.inference_payload is not None:
            checkpoint[PAYLOAD_KEY] = self.inference_payload

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
        # Stepped once per epoch, T_max in epochs, as in the reference recipe.
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(sched.get("T_max", 150)),
                                                         eta_min=float(sched.get("eta_min", 0.0)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cos, "interval": "epoch"}}
