"""End-to-end: compose like `python train.py`, fit + TTA test on generated data, check every run artefact."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.testing import run_record, train

READERS = {"pad_ufes": pad_ufes, "isic2019": isic2019, "derm7pt": derm7pt}


@pytest.mark.parametrize("data,model", [("pad_ufes", "image_only"), ("isic2019", "meta_only"),
                                        ("derm7pt", "image_only")])
def test_fit_test_writes_every_artefact(data, model, roots, tmp_path):
    # wiring only: two training batches; validation and test run in full (every case must be saved)
    run = train([f"data={data}", f"data.root={roots[data]}", f"model={model}", "data.fold=1",
                 "trainer.limit_train_batches=2"], tmp_path / "run")
    for name in ("config.yaml", "run.json", "environment.json", "folds.csv", "metrics.json", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("*.ckpt"))
    rec = run_record(run)
    assert rec["status"] == "completed" and rec["dataset"] == data
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and "commit" in env["git"]

    folds = pd.read_csv(run / "folds.csv")
    table = READERS[data].read(roots[data])
    assert len(folds) == len(table) and list(folds["case_id"].astype(str)) == list(table.case_ids)
    metrics = json.loads((run / "metrics.json").read_text())
    parts = ["val"] if data == "isic2019" else ["val", "test"]
    assert [p for p in ("val", "test") if p in metrics] == parts
    label = dict(zip(table.case_ids, table.targets.tolist()))
    for part in parts:
        pred = pd.read_parquet(run / "predictions" / f"{part}.parquet")
        # one row per case of the partition, with the dataset's own ids and the official labels
        assert sorted(pred["case_id"]) == sorted(folds.loc[folds["partition"] == part, "case_id"].astype(str))
        targets = pred[[c for c in pred.columns if c.startswith("target/")]].to_numpy()
        assert (targets == np.array([label[c] for c in pred["case_id"]])).all()
        probs = pred[[c for c in pred.columns if c.startswith("prob/")]]
        assert np.allclose(probs.T.groupby(lambda c: c.rsplit("/", 1)[0]).sum().T.to_numpy(), 1.0, atol=1e-4)
        # metrics.json agrees with scikit-learn run directly on the saved columns of the reported output
        rep = metrics["reported"]
        for task in rec["tasks"]:
            y = pred[f"target/{task}"].to_numpy()
            p = pred[[c for c in pred.columns if c.startswith(f"prob/{rep}/{task}/")]].to_numpy()
            got = metrics[part][rep]["tasks"][task]
            assert got["bac"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), abs=1e-12)
            assert got["acc"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-12)
            # macro one-vs-rest AUC over the classes with both positives and negatives in the partition
            both = [k for k in range(p.shape[1]) if 0 < (y == k).sum() < len(y)]
            auc = np.mean([roc_auc_score(y == k, p[:, k]) for k in both]) if both else None
            assert got["auc"] == pytest.approx(auc, abs=1e-12)
    if data == "derm7pt":
        assert len(rec["tasks"]) == 8 and "avg_auc" in metrics["test"]["image"]


def test_two_image_dataset_loads_both_images_with_one_geometry(roots):
    """derm7pt pairs get the same geometric transform: with identical files the tensors stay identical."""
    from skinlesion.data.datamodule import SkinLesionDataModule
    root = roots["derm7pt"]
    dm = SkinLesionDataModule("derm7pt", root=str(root), image_size=32, batch_size=8, num_workers=0,
                              augment={"p": 1.0, "brightness_contrast": False}, progress=False)
    dm.setup()
    table = dm.table
    table.images["clinic"] = list(table.images["derm"])   # same source for both modalities
    ds = dm.datasets["train"]
    torch_item = ds[0]
    assert set(torch_item["images"]) == {"derm", "clinic"}
    assert (torch_item["images"]["derm"] == torch_item["images"]["clinic"]).all()
    assert torch_item["target"].shape == (8,) and torch_item["meta"].shape == (20,)


def test_image_cache_is_built_and_reused(roots, tmp_path):
    args = ["data=pad_ufes", f"data.root={roots['pad_ufes']}", "data.cache.enabled=true", "data.cache.size=48",
            f"data.cache.dir={tmp_path}/cache", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    a = json.loads((train(args, tmp_path / "a") / "metrics.json").read_text())
    files = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(files) == 240
    mtimes = [f.stat().st_mtime_ns for f in files]
    b = json.loads((train(args, tmp_path / "b") / "metrics.json").read_text())
    assert [f.stat().st_mtime_ns for f in files] == mtimes and a["test"] == b["test"]
