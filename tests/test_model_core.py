"""Model core: backbone factory (timm), shared multi-task head, loss composition, class weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlesion.data.info import DataInfo
from skinlesion.data.tasks import DERM7PT_TASKS, PAD_UFES_TASKS
from skinlesion.errors import ConfigError
from skinlesion.models import build_network
from skinlesion.models.backbones import Backbone
from skinlesion.models.heads import MultiTaskHead
from skinlesion.module import MultiTaskModule, class_weights
from skinlesion.testing import SHARED_DATA

WEIGHTS = SHARED_DATA.parent / "weights" / "mobilenetv2_100.tv_in1k.pth"


def test_pooled_features():
    bb = Backbone("test_resnet")
    x = torch.randn(2, 3, 64, 64)
    feats = bb(x)
    assert feats.shape == (2, bb.num_features)
    # the pooled feature is the global average of the last feature map (timm's own forward_features)
    assert torch.allclose(feats, bb.model.forward_features(x).mean(dim=(2, 3)), atol=1e-6)
    # no half-finished stage-wise API and no unused normalisation attributes (the data side normalises)
    assert not any(hasattr(bb, a) for a in ("forward_stages", "stage_channels", "mean", "std"))
    assert bb.thesis_param_count() == sum(p.numel() for p in bb.parameters()) + bb.num_features * 1000 + 1000


def test_mobilenetv3_small_pools_576_without_conv_head():
    with torch.device("meta"):
        bb = Backbone("mobilenetv3_small_100")
    assert bb.num_features == 576
    assert bb.thesis_param_count() == 2542856          # thesis convention: classifier and conv head included


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shared ImageNet weights not available")
def test_local_pretrained_file_is_loaded():
    bb = Backbone("mobilenetv2_100", pretrained=str(WEIGHTS))
    state = torch.load(WEIGHTS, map_location="cpu")
    assert torch.equal(bb.model.conv_stem.weight, state["conv_stem.weight"])


def test_pretrained_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such weights file"):
        Backbone("test_resnet", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="close matches"):
        Backbone("resnet5O")


def test_mlp_head_per_task_outputs():
    head = MultiTaskHead(48, DERM7PT_TASKS, kind="mlp")
    out = head(torch.randn(4, 48))
    assert [o.shape[1] for o in out.values()] == [5, 3, 3, 3, 2, 3, 2, 3]
    assert sum(p.numel() for p in MultiTaskHead(2048, DERM7PT_TASKS, kind="mlp").parameters()) == 1119128


def test_class_weights_follow_reference_formula():
    counts = np.array([730, 845, 52, 244, 192, 235])           # PAD whole set
    assert class_weights(counts).tolist() == pytest.approx([3.148, 2.72, 44.192, 9.418, 11.969, 9.779], abs=1e-5)
    assert class_weights(np.array([3, 0, 1]))[1] == 0          # a class absent from training


def test_loss_is_weighted_sum_over_branches_and_tasks():
    info = DataInfo("derm7pt", DERM7PT_TASKS[:2], ("derm",), 20)
    net = build_network({"arch": "meta_only"}, None, info)
    module = MultiTaskModule(net, info, branch_weights={"meta": 0.25}, report="meta",
                             optim={"name": "sgd", "lr": 0.1})
    logits = {"meta": {"DIAG": torch.randn(6, 5), "PN": torch.randn(6, 3)}}
    y = torch.tensor([[0, 1], [1, 2], [2, 0], [3, 1], [4, 2], [0, 0]])
    total, parts = module.loss(logits, y)
    ce = torch.nn.functional.cross_entropy
    expected = ce(logits["meta"]["DIAG"], y[:, 0]) + ce(logits["meta"]["PN"], y[:, 1])
    assert torch.allclose(parts["meta"], expected) and torch.allclose(total, 0.25 * expected)


def test_report_and_branch_weights_are_checked():
    info = DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 81)
    net = build_network({"arch": "meta_only"}, None, info)
    with pytest.raises(ConfigError, match="model.report='fusion'"):
        MultiTaskModule(net, info, branch_weights={"meta": 1.0}, report="fusion", optim={"name": "sgd", "lr": 1})
    with pytest.raises(ConfigError, match="branch_weights names \\['image'\\]"):
        MultiTaskModule(net, info, branch_weights={"image": 1.0}, report="meta", optim={"name": "sgd", "lr": 1})


def test_stochastic_depth_is_stated_per_backbone_and_an_explicit_value_applies(tmp_path):
    """Swin-T trains with timm's 0.1 (which the thesis inherits by not stating one), the CNNs with none; an explicit
    0 really switches it off; an architecture without stochastic depth accepts 0 and refuses anything else."""
    import timm.layers

    from skinlesion.testing import compose_cfg

    rates = {b: compose_cfg([f"backbone={b}"], tmp_path).backbone.drop_path_rate
             for b in ("swin_t", "resnet50", "convnext_t", "densenet201", "mobilenetv3_small")}
    assert rates == {"swin_t": 0.1, "resnet50": 0.0, "convnext_t": 0.0, "densenet201": 0.0, "mobilenetv3_small": 0.0}
    assert compose_cfg(["model=ammfm"], tmp_path).model.net.clinic_backbone.drop_path_rate == 0.0   # MobileNetV3-S

    def drop_probs(rate):
        with torch.device("meta"):
            model = Backbone("swin_tiny_patch4_window7_224", drop_path_rate=rate).model
        return [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]

    assert drop_probs(None) and max(drop_probs(None)) == pytest.approx(0.1)      # timm's default
    assert drop_probs(0.0) == []                                                  # 0 is applied, not ignored
    assert max(drop_probs(0.3)) == pytest.approx(0.3)
    with torch.device("meta"):
        Backbone("densenet121", drop_path_rate=0.0)
        with pytest.raises(ConfigError, match="densenet121 has no stochastic depth"):
            Backbone("densenet121", drop_path_rate=0.2)


def test_branch_mean_checkpoint_score_is_each_branch_scored_per_case_then_averaged():
    """FusionNet's checkpoint score (model.monitor=branch_mean): each branch's accuracy from its own per-case
    predictions, averaged over the branches. Two epochs where this and the accuracy of the averaged probabilities
    disagree: epoch A, each branch weakly wrong on one case (the average right on all), epoch B, dermoscopy and
    clinical right everywhere and fusion strongly wrong on one case (the average wrong there)."""
    from types import SimpleNamespace

    from skinlesion.data.tasks import Task

    right, weak_right, weak_wrong, strong_wrong = ([0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.3, 0.4, 0.3],
                                                   [0.01, 0.98, 0.01])
    epochs = {"A": {"derm": [weak_wrong, right, right], "clinic": [right, weak_wrong, right],
                    "fusion": [right, right, weak_wrong]},
              "B": {"derm": [weak_right] * 3, "clinic": [weak_right] * 3, "fusion": [strong_wrong, right, right]}}

    class Fixed(torch.nn.Module):
        branches = ("derm", "clinic", "fusion")

        def __init__(self):
            super().__init__()
            self.probs, self.unused = None, torch.nn.Linear(1, 1)

        def forward(self, batch):
            return {"logits": {b: {"DIAG": torch.tensor(p).log()} for b, p in self.probs.items()},
                    "features": torch.zeros(3, 1)}

    info = DataInfo("derm7pt", (Task("DIAG", ("a", "b", "c")),), ("derm", "clinic"), 0)

    def score(monitor: str, epoch: str) -> float:
        net = Fixed()
        module = MultiTaskModule(net, info, {"derm": 1, "clinic": 1, "fusion": 1}, report="fusion",
                                 optim={"name": "adam", "lr": 1e-3}, tta="none", monitor=monitor)
        logged = {}
        module.log = lambda key, value, **_: logged.__setitem__(key, value)
        module._trainer = SimpleNamespace(sanity_checking=False)
        net.probs = epochs[epoch]
        module.validation_step({"target": torch.zeros(3, 1, dtype=torch.long), "index": torch.arange(3)}, 0)
        module.on_validation_epoch_end()
        return logged["val/main"]

    assert score("branch_mean", "A") == pytest.approx(2 / 3) and score("branch_mean", "B") == pytest.approx(8 / 9)
    assert score("all", "A") == pytest.approx(1.0) and score("all", "B") == pytest.approx(2 / 3)   # the other pick
