"""End-to-end: compose like `python train.py`, fit + TTA test on generated data, check every run artefact."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.evaluation.metrics import evaluate_predictions
from tests.conftest import run_record, train

READERS = {"pad_ufes": pad_ufes, "isic2019": isic2019, "derm7pt": derm7pt}


@pytest.mark.parametrize("data,model", [("pad_ufes", "image_only"), ("isic2019", "meta_only"),
                                        ("derm7pt", "image_only")])
def test_fit_test_writes_every_artefact(data, model, roots, tmp_path):
    run = train([f"data={data}", f"data.root={roots[data]}", f"model={model}", "data.fold=1"], tmp_path / "run")
    for name in ("config.yaml", "run.json", "environment.json", "folds.csv", "metrics.json", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("*.ckpt"))
    rec = run_record(run)
    assert rec["status"] == "completed" and rec["dataset"] == data and rec["params"]["total"] > 0
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
        # metrics.json recomputes exactly from the saved predictions
        rep = metrics["reported"]
        again = evaluate_predictions(pred, combination=rep, dataset=data)
        assert json.dumps(again, sort_keys=True) == json.dumps(metrics[part][rep], sort_keys=True)
    if data == "derm7pt":
        assert len(rec["tasks"]) == 8 and "avg_auc" in metrics["test"]["image"]


def test_same_seed_same_metrics(roots, tmp_path):
    args = ["data=pad_ufes", f"data.root={roots['pad_ufes']}", "seed=3", "trainer.deterministic=true"]
    a = json.loads((train(args, tmp_path / "a") / "metrics.json").read_text())
    b = json.loads((train(args, tmp_path / "b") / "metrics.json").read_text())
    assert a["val"] == b["val"] and a["test"] == b["test"]


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


def test_wandb_logs_offline_without_credentials(roots, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))            # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(["data=pad_ufes", f"data.root={roots['pad_ufes']}", "logger=wandb", "group=table4_1"],
                tmp_path / "run")
    import wandb
    assert wandb.run is None                              # finished: the next job opens its own run
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (run / "csv" / "metrics.csv").is_file()       # CSV is always written as well


def test_image_cache_is_built_and_reused(roots, tmp_path):
    args = ["data=pad_ufes", f"data.root={roots['pad_ufes']}", "data.cache.enabled=true", "data.cache.size=48",
            f"data.cache.dir={tmp_path}/cache"]
    a = json.loads((train(args, tmp_path / "a") / "metrics.json").read_text())
    files = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(files) == 240
    mtimes = [f.stat().st_mtime_ns for f in files]
    b = json.loads((train(args, tmp_path / "b") / "metrics.json").read_text())
    assert [f.stat().st_mtime_ns for f in files] == mtimes and a["test"] == b["test"]
