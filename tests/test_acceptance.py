"""Acceptance on directories laid out exactly like the official releases: the real CSVs with generated
images. `python train.py ... trainer.max_epochs=1` must predict every case of the held-out partition with the
official labels. Slow (official sizes): run with `make test-all`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.data.synthetic import generate
from skinlesion.testing import python, shared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # official-size runs: minutes each


def cli(args: list[str], run_dir) -> None:
    proc = python("train.py", *args, f"hydra.run.dir={run_dir}", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def check_predictions(run_dir, part: str, table, expected_ids: set[str]) -> None:
    pred = pd.read_parquet(run_dir / "predictions" / f"{part}.parquet")
    assert len(pred) == len(expected_ids) and set(pred["case_id"]) == expected_ids
    label = dict(zip(table.case_ids, table.targets.tolist()))
    targets = pred[[c for c in pred.columns if c.startswith("target/")]].to_numpy()
    assert (targets == np.array([label[c] for c in pred["case_id"]])).all()


def test_derm7pt_official_layout(tmp_path):
    src = shared("derm7pt", "meta", "meta.csv")
    root = generate("derm7pt", tmp_path / "derm7pt" / "release_v0", size=64, from_csv=src, progress=False)
    cli(["data=derm7pt", f"data.root={root}", "model=image_only", "backbone=test_resnet", "trainer.max_epochs=1"],
        tmp_path / "run")
    table = derm7pt.read(shared("derm7pt"))
    part = derm7pt.partition(table, shared("derm7pt"))
    assert (part == "test").sum() == 395
    check_predictions(tmp_path / "run", "test", table, set(table.case_ids[part == "test"]))


def test_pad_ufes_official_layout(tmp_path):
    root = generate("pad_ufes", tmp_path / "pad-ufes-20", size=32, progress=False,
                    from_csv=shared("pad_ufes_20", "metadata.csv"))
    cli(["data=pad_ufes", f"data.root={root}", "model=image_only", "backbone=test_resnet", "trainer.max_epochs=1",
         "data.image_size=64", "data.fold=2"], tmp_path / "run")
    table = pad_ufes.read(shared("pad_ufes_20"))
    folds = pd.read_csv(tmp_path / "run" / "folds.csv")
    test_ids = set(folds.loc[folds["partition"] == "test", "case_id"])
    assert len(test_ids) == 383
    check_predictions(tmp_path / "run", "test", table, test_ids)
    check_predictions(tmp_path / "run", "val", table, set(folds.loc[folds["partition"] == "val", "case_id"]))


def test_isic2019_official_layout(tmp_path):
    root = generate("isic2019", tmp_path / "isic2019", size=16, progress=False,
                    from_csv=shared("isic_2019", isic2019.GROUND_TRUTH))
    cli(["data=isic2019", f"data.root={root}", "model=image_only", "backbone=test_resnet", "trainer.max_epochs=1",
         "data.image_size=32", "data.fold=4", "tta=none"], tmp_path / "run")
    table = isic2019.read(root)
    folds = pd.read_csv(tmp_path / "run" / "folds.csv")
    val_ids = set(folds.loc[folds["partition"] == "val", "case_id"])
    assert len(table) == 25331 and len(val_ids) in (5066, 5067)
    check_predictions(tmp_path / "run", "val", table, val_ids)
    assert not (tmp_path / "run" / "predictions" / "test.parquet").exists()


def test_derm7pt_official_layout_two_image_model(tmp_path):
    """AMMFM on the official layout: the three branches and the Scheme-1 weighted output for all 395 test cases."""
    src = shared("derm7pt", "meta", "meta.csv")
    root = generate("derm7pt", tmp_path / "derm7pt" / "release_v0", size=64, from_csv=src, progress=False)
    cli(["data=derm7pt", f"data.root={root}", "model=ammfm", "backbone=test_resnet", "backbone.pretrained=false",
         "structure.clinic_backbone.name=test_efficientnet", "trainer=cpu", "trainer.max_epochs=2",
         "callbacks.swa.last_epochs=1", "data.image_size=64", "data.batch_size=32", "data.num_workers=2"],
        tmp_path / "run")
    table = derm7pt.read(shared("derm7pt"))
    part = derm7pt.partition(table, shared("derm7pt"))
    test_ids = set(table.case_ids[part == "test"])
    check_predictions(tmp_path / "run", "test", table, test_ids)
    pred = pd.read_parquet(tmp_path / "run" / "predictions" / "test.parquet")
    assert {c.split("/")[1] for c in pred.columns if c.startswith("prob/")} == {"derm", "clinic", "fusion"}
    assert {c.split("/")[2] for c in pred.columns if c.startswith("prob/")} == {t.name for t in derm7pt.TASKS}
    fused = pd.read_parquet(tmp_path / "run" / "search" / "test_fused.parquet")
    assert set(fused["case_id"]) == test_ids
