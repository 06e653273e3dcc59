"""Weight averaging of the chapter-5 recipe: the mean of the recorded states, BN statistics recomputed, the
learning-rate schedule untouched."""
from __future__ import annotations

import copy

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from skinlesion.swa import WeightAveraging


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)

    def forward(self, batch):
        return self.fc2(torch.relu(self.bn(self.fc1(batch["x"]))))


class _Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.network = _Net()

    def training_step(self, batch, _):
        return torch.nn.functional.cross_entropy(self.network(batch), batch["y"])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)}


class _Record(Callback):
    """Snapshots of the weights and learning rate at the end of each epoch (runs before the averaging)."""

    def __init__(self):
        self.states, self.lrs = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(copy.deepcopy(pl_module.network.state_dict()))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g) * 3 + 1
    return [{"x": x[i], "y": int(x[i, 0] > 1)} for i in range(64)]


def _fit(callbacks, epochs=6):
    torch.manual_seed(0)
    module = _Module()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=DataLoader(_data(), batch_size=16))
    return module, trainer


def test_averaged_weights_are_the_mean_of_the_last_states_and_bn_is_recomputed(tmp_path):
    record, swa = _Record(), WeightAveraging(last_epochs=3, dirpath=str(tmp_path))
    module, _ = _fit([record, swa])
    assert swa.n_averaged == 3
    last = record.states[-3:]
    for name, p in module.network.named_parameters():
        assert torch.allclose(p, torch.stack([s[name] for s in last]).mean(0), atol=1e-6), name
    # BN statistics of the averaged weights: the mean over the training batches of the batch statistics.
    x = torch.stack([d["x"] for d in _data()])
    with torch.no_grad():
        h = module.network.fc1(x).reshape(4, 16, 8)
    assert torch.allclose(module.network.bn.running_mean, h.mean(1).mean(0), atol=1e-5)
    assert torch.allclose(module.network.bn.running_var, h.var(1, unbiased=True).mean(0), atol=1e-5)
    assert (tmp_path / "swa.ckpt").is_file() and swa.checkpoint_path == str(tmp_path / "swa.ckpt")


def test_schedule_is_untouched(tmp_path):
    plain, with_swa = _Record(), _Record()
    _fit([plain])
    _fit([with_swa, WeightAveraging(last_epochs=3, dirpath=str(tmp_path))])
    assert with_swa.lrs == plain.lrs      # the cosine tail runs as without averaging
    assert with_swa.lrs[-1] < with_swa.lrs[0]


def test_the_average_equals_lightnings_weight_averaging_over_the_same_epochs(tmp_path):
    """Lightning's own ``WeightAveraging`` (updated at the ends of the same epochs, parameters only) computes the same
    average. It is not used because the recipe needs what it does differently: it validates (and checkpoints as the
    model's weights) the average instead of the trained weights — before the window opens, that is the untrained
    initial copy — and it leaves the BatchNorm statistics and the evaluated checkpoint to the user."""
    from lightning.pytorch.callbacks import WeightAveraging as LightningAveraging

    class LastEpochs(LightningAveraging):
        def should_update(self, step_idx=None, epoch_idx=None):
            return epoch_idx is not None and epoch_idx >= 3

    ours, theirs = WeightAveraging(last_epochs=3, update_bn=False, dirpath=str(tmp_path)), LastEpochs(use_buffers=False)
    _fit([ours, theirs], epochs=6)
    assert ours.n_averaged == 3 and int(theirs._average_model.n_averaged) == 3
    for a, b in zip(ours.averaged.module.parameters(), theirs._average_model.module.network.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
