"""Stochastic weight averaging for the chapter-5 recipe: average the network's weights at the end of each of the
last ``last_epochs`` epochs, recompute the BatchNorm statistics of the averaged weights on the training set, and
evaluate those weights.

Lightning's own ``StochasticWeightAveraging`` callback switches to its SWA learning-rate schedule for the averaged
epochs; the thesis keeps the cosine schedule running to its end, so this callback only averages and never touches
the optimiser or the scheduler. Lightning's ``WeightAveraging`` computes the same average (a test compares them) but
validates the average in place of the trained weights — before the window opens that is the untrained initial copy,
which would pick the best checkpoint — and stores it as every checkpoint's weights; the recipe validates the trained
weights and evaluates the average once, with recomputed BatchNorm statistics.

A run resumed from a checkpoint written after its last epoch skips Lightning's training loop (and its
``on_train_start``/``on_train_end`` hooks); the average is then finished when fitting starts, so a run stopped
between training and its test evaluates the same averaged weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel

from skinlesion.checkpoints import training_finished

log = logging.getLogger(__name__)


def _network(pl_module: L.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "network", pl_module)


@torch.no_grad()
def recompute_batchnorm(pl_module: L.LightningModule, loader, seed: int = 0) -> int:
    """Reset every BatchNorm layer of the network and re-estimate its statistics over ``loader`` (an equal-weight
    average over batches, as ``torch.optim.swa_utils.update_bn``); returns the number of batches seen.

    The pass runs the network in training mode (dropout, stochastic depth, device-side augmentation draw random
    numbers) on a random stream of its own, seeded with ``seed``: the statistics then depend on the weights and
    the data only, not on how much randomness the process used before, so a run that resumes just to finish its
    averaging gets the statistics of an uninterrupted one."""
    net = _network(pl_module)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average
    was_training = net.training
    net.train()
    n = 0
    devices = [pl_module.device] if pl_module.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in loader:
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            net(pl_module.on_after_batch_transfer(batch, 0))
            n += 1
    for m in norms:
        m.momentum = momenta[m]
    net.train(was_training)
    return n


class WeightAveraging(Callback):
    """Average the weights of epochs ``max_epochs - last_epochs + 1 .. max_epochs`` (1-based), then load the average
    into the module, recompute BN statistics and save ``<dirpath>/swa.ckpt`` for the final evaluation."""

    def __init__(self, last_epochs: int = 50, dirpath: str | None = None, update_bn: bool = True):
        if last_epochs < 1:
            raise ValueError(f"last_epochs must be >= 1, got {last_epochs}")
        self.last_epochs, self.dirpath, self.update_bn = last_epochs, dirpath, update_bn
        self.averaged: AveragedModel | None = None
        self.checkpoint_path: str | None = None
        self._restore: dict | None = None   # a checkpoint's running average, loaded when training starts
        self._resumed_finished = False      # resumed from a checkpoint whose training was over

    def first_epoch(self, trainer: L.Trainer) -> int:
        """0-based epoch index from which weights are averaged."""
        return max(0, int(trainer.max_epochs) - self.last_epochs)

    @property
    def n_averaged(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch < self.first_epoch(trainer):
            return
        net = _network(pl_module)
        if self.averaged is None:
            self.averaged = AveragedModel(net, use_buffers=False)
        self.averaged.update_parameters(net)

    def on_train_end(self, trainer, pl_module):
        self._finish(trainer, pl_module)

    def _finish(self, trainer, pl_module):
        if self.averaged is None:
            log.warning("weight averaging: training ended before epoch %d; the best checkpoint is evaluated instead",
                        self.first_epoch(trainer) + 1)
            return
        net = _network(pl_module)
        with torch.no_grad():   # parameters only: BN statistics are re-estimated below for the new weights
            for p, p_avg in zip(net.parameters(), self.averaged.module.parameters()):
                p.copy_(p_avg)
        if self.update_bn:
            dm = trainer.datamodule
            n = recompute_batchnorm(pl_module, dm.train_dataloader() if dm is not None else trainer.train_dataloader)
            log.info("weight averaging: %d states averaged, BatchNorm statistics recomputed over %d batches",
                     self.n_averaged, n)
        directory = Path(self.dirpath or trainer.default_root_dir)
        self.checkpoint_path = str(directory / "swa.ckpt")
        trainer.save_checkpoint(self.checkpoint_path)

    def state_dict(self):
        # The running average travels with every checkpoint, so a resumed run continues it instead of restarting.
        return {"n_averaged": self.n_averaged,
                "averaged": None if self.averaged is None else self.averaged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._restore = state.get("averaged")

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._resumed_finished = training_finished(checkpoint, trainer.max_epochs)

    def _restore_average(self, pl_module) -> None:
        restore, self._restore = self._restore, None
        if restore is not None:
            self.averaged = AveragedModel(_network(pl_module), use_buffers=False)
            self.averaged.load_state_dict(restore)

    def on_fit_start(self, trainer, pl_module):
        # A run resumed from a checkpoint written after its last epoch skips the training loop, and with it
        # on_train_start/on_train_end: the average is finished here, on the training device, as it would have been.
        if self._resumed_finished:
            self._restore_average(pl_module)
            self._finish(trainer, pl_module)

    def on_train_start(self, trainer, pl_module):
        self._restore_average(pl_module)
