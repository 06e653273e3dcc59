"""What training does, checked against independent computations: a model learns, TTA averages softmax over
views (and logits beside them), the evaluated checkpoint is the best one, class weights come from the
training split, seeds matter, and the per-epoch validation metric is scikit-learn's BAC / accuracy."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader

from skinlesion.data.info import DataInfo
from skinlesion.data.tasks import Task
from skinlesion.evaluation.metrics import evaluate_predictions
from skinlesion.evaluation.predictions import combine, read_predictions
from skinlesion.module import MultiTaskModule
from skinlesion.provenance import write_parquet
from skinlesion.testing import compose_cfg, train

META = ["data=pad_ufes", "model=meta_only", "tta=none"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_model_learns_above_chance(pad_root, tmp_path):
    run = train([*META, f"data.root={pad_root}", "trainer.max_epochs=6"], tmp_path / "run")
    pred = pd.read_parquet(run / "predictions" / "test.parquet")
    y = pred["target/diagnostic"].to_numpy()
    p = pred[[c for c in pred.columns if c.startswith("prob/meta/diagnostic/")]].to_numpy()
    bac = balanced_accuracy_score(y, p.argmax(1))
    assert bac > 1 / 6 + 0.1, f"test BAC {bac:.3f} is not above chance (0.167)"
    log = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    assert log["train/loss"].iloc[-1] < log["train/loss"].iloc[0]


# --- test-time augmentation on a toy network --------------------------------------------------------
class _Toy(nn.Module):
    """Two branches whose logits depend on where things are in the image, so every flip changes them."""
    branches = ("a", "b")

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3 * 8 * 8, 3), nn.Linear(3 * 8 * 8, 3)

    def forward(self, batch):
        x = batch["images"]["clinic"].flatten(1)
        za, zb = 4 * self.a(x), 4 * torch.tanh(self.b(x)) * 3
        return {"logits": {"a": {"T": za}, "b": {"T": zb}}, "features": x}


def _toy_batches(n=12):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 3, (n, 1), generator=g)
    return [{"images": {"clinic": images[i]}, "meta": torch.zeros(0), "target": target[i], "index": i}
            for i in range(n)], images, target


def test_tta_averages_softmax_and_logits_over_views_and_all_logits_reads_them(tmp_path):
    info = DataInfo("toy", (Task("T", ("x", "y", "z")),), ("clinic",), 0)
    net = _Toy()
    module = MultiTaskModule(net, info, branch_weights={"a": 1.0, "b": 1.0}, report="all_logits",
                             optim={"name": "sgd", "lr": 0.1}, tta="flips")
    module.eval_views = module.tta
    items, images, target = _toy_batches()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(items, batch_size=5), verbose=False)
    path = tmp_path / "val.parquet"
    write_parquet(path, module.predictions)
    frame = read_predictions(path)

    # independent: ImageNet normalisation by hand, the four flips by hand, the network's raw outputs
    x = images.float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    views = [x, x.flip(2), x.flip(3), x.flip(2).flip(3)]
    with torch.no_grad():
        z = {br: np.stack([net({"images": {"clinic": v}})["logits"][br]["T"].numpy() for v in views])
             for br in ("a", "b")}                                        # (views, N, K)
    for br in ("a", "b"):
        probs = np.mean([_softmax(zv) for zv in z[br]], axis=0)
        np.testing.assert_allclose(frame[[f"prob/{br}/T/{c}" for c in "xyz"]].to_numpy(), probs, atol=1e-6)
        np.testing.assert_allclose(frame[[f"logit/{br}/T/{c}" for c in "xyz"]].to_numpy(), z[br].mean(0), atol=1e-5)
    expected = _softmax((z["a"].mean(0) + z["b"].mean(0)) / 2)
    np.testing.assert_allclose(combine(frame, "all_logits")["T"], expected, atol=1e-6)
    # with several views the probabilities alone cannot give this reading: the logits are needed
    from_probs = _softmax(sum(np.log(frame[[f"prob/{br}/T/{c}" for c in "xyz"]].to_numpy()) for br in "ab") / 2)
    assert np.abs(from_probs - expected).max() > 1e-3
    m = evaluate_predictions(frame, combination="all_logits")
    assert m["tasks"]["T"]["acc"] == pytest.approx(accuracy_score(target[:, 0].numpy(), expected.argmax(1)))


def test_old_prediction_files_without_logits_still_read_with_a_note():
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(size=(10, 3)))
    q = _softmax(rng.normal(size=(10, 3)))
    frame = pd.DataFrame({"case_id": [str(i) for i in range(10)], "target/T": rng.integers(0, 3, 10),
                          **{f"prob/a/T/{c}": p[:, k] for k, c in enumerate("xyz")},
                          **{f"prob/b/T/{c}": q[:, k] for k, c in enumerate("xyz")}})
    with pytest.warns(UserWarning, match="no logit/ columns"):
        out = combine(frame, "all_logits")["T"]
    np.testing.assert_allclose(out, _softmax((np.log(p) + np.log(q)) / 2), atol=1e-12)


# --- checkpoint selection ---------------------------------------------------------------------------
def test_evaluated_checkpoint_is_the_best_epoch(pad_root, tmp_path):
    # a high constant learning rate makes the validation score move so the best epoch is not simply the last
    run = train([*META, f"data.root={pad_root}", "trainer.max_epochs=4", "optim.optimizer.lr=0.2",
                 "optim.scheduler.name=none"], tmp_path / "run")
    log = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/main"])
    best = int(log["val/main"].to_numpy().argmax())
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"epoch{int(log['epoch'].iloc[best]):03d}-" in metrics["best_checkpoint"]
    # the final (identity-view) evaluation on validation reloads those weights and reproduces that epoch's score
    pred = pd.read_parquet(run / "predictions" / "val.parquet")
    p = pred[[c for c in pred.columns if c.startswith("prob/meta/")]].to_numpy()
    score = balanced_accuracy_score(pred["target/diagnostic"], p.argmax(1))
    assert score == pytest.approx(log["val/main"].max(), abs=1e-6)
    if best != len(log) - 1:
        assert score != pytest.approx(log["val/main"].iloc[-1], abs=1e-6)


# --- class weights ----------------------------------------------------------------------------------
def test_class_weights_come_from_the_training_split_only(pad_root, tmp_path):
    from skinlesion.train import build_module, prepare_data

    cfg = compose_cfg(["backbone=test_resnet", *META, f"data.root={pad_root}"], tmp_path)
    dm = prepare_data(cfg)
    weights = build_module(cfg, dm).cw_0.clone()

    # by hand: the training rows of folds.csv, their labels in metadata.csv, w_c = round(N / N_c, 3)
    folds = dm.fold_frame()
    labels = pd.read_csv(pad_root / "metadata.csv").set_index("img_id")["diagnostic"]
    train_labels = labels.loc[folds.loc[folds["partition"] == "train", "case_id"]].value_counts()
    classes = dm.info.tasks[0].classes
    n = train_labels.sum()
    hand = [round(n / train_labels.get(c, 0), 3) if train_labels.get(c, 0) else 0.0 for c in classes]
    np.testing.assert_allclose(weights.numpy(), hand, rtol=0, atol=1e-6)

    # relabelling every validation and test case leaves them unchanged
    held_out = dm.partition != "train"
    dm.table.targets[held_out] = (dm.table.targets[held_out] + 1) % len(classes)
    np.testing.assert_array_equal(build_module(cfg, dm).cw_0.numpy(), weights.numpy())


# --- seeds ------------------------------------------------------------------------------------------
def test_same_seed_reproduces_and_another_seed_changes_the_result(pad_root, tmp_path):
    args = [*META, f"data.root={pad_root}", "trainer.deterministic=true", "trainer.max_epochs=2",
            "trainer.limit_train_batches=2"]

    def probs(seed, name):
        run = train([*args, f"seed={seed}"], tmp_path / name)
        pred = pd.read_parquet(run / "predictions" / "test.parquet")
        return pred[[c for c in pred.columns if c.startswith("prob/")]].to_numpy()

    a, b, c = probs(3, "a"), probs(3, "b"), probs(4, "c")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


# --- per-epoch validation metric --------------------------------------------------------------------
@pytest.mark.parametrize("data,model", [("pad_ufes", "jif_mmfa"), ("derm7pt", "image_only")])
def test_epoch_validation_metric_equals_sklearn(data, model, roots, tmp_path):
    from skinlesion.train import build_module, prepare_data

    cfg = compose_cfg(["backbone=test_resnet", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
                       "data.progress=false", f"data={data}", f"data.root={roots[data]}", f"model={model}"], tmp_path)
    L.seed_everything(0)
    dm = prepare_data(cfg)
    module = build_module(cfg, dm)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=3,
                        limit_test_batches=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/main"]

    # the same network's identity-view outputs on the validation partition, scored by scikit-learn
    trainer.test(module, dataloaders=dm.val_dataloader(), verbose=False)
    pred = module.predictions
    tasks = [t.name for t in dm.info.tasks]
    branches = list(module.network.branches) if cfg.model.report == "all" else [cfg.model.report]
    scores = []
    for t in tasks:
        p = np.mean([pred[[c for c in pred.columns if c.startswith(f"prob/{b}/{t}/")]].to_numpy()
                     for b in branches], axis=0)
        y = pred[f"target/{t}"].to_numpy()
        fn = balanced_accuracy_score if dm.info.main_metric == "bac" else accuracy_score
        scores.append(fn(y, p.argmax(1)))
    assert logged == pytest.approx(np.mean(scores), abs=1e-6)
