"""The named DataModules work without Hydra: construct, set up, iterate, on the generated layouts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.data import Derm7ptDataModule, Isic2019DataModule, PadUfes20DataModule
from skinlesion.errors import ConfigError

FAST = {"image_size": 32, "batch_size": 16, "num_workers": 0, "progress": False}


def _parts(dm) -> dict[str, set[str]]:
    return {p: set(dm.table.case_ids[dm.partition == p]) for p in ("train", "val", "test")}


def test_pad_ufes_folds_partition_every_case_once_with_a_fixed_test_set(pad_root):
    csv = pd.read_csv(pad_root / "metadata.csv")
    parts = []
    for fold in (0, 2):
        dm = PadUfes20DataModule(root=str(pad_root), fold=fold, **FAST)
        dm.setup()
        parts.append(_parts(dm))
        p = parts[-1]
        assert p["train"] | p["val"] | p["test"] == set(csv["img_id"])
        assert not (p["train"] & p["val"]) and not (p["train"] & p["test"]) and not (p["val"] & p["test"])
        # 1/6 of the cases are held out for test, 1/5 of the rest validate (stratified: within a few cases)
        assert abs(len(p["test"]) - len(csv) / 6) <= 6 and abs(len(p["val"]) - len(csv) * 5 / 6 / 5) <= 6
    assert parts[0]["test"] == parts[1]["test"] and parts[0]["val"] != parts[1]["val"]

    batch = next(iter(dm.train_dataloader()))
    assert batch["images"]["clinic"].shape == (16, 3, 32, 32) and batch["images"]["clinic"].dtype == torch.uint8
    assert batch["meta"].shape == (16, 81) and batch["target"].shape == (16, 1)
    assert dm.info.dataset == "pad_ufes" and dm.info.image_keys == ("clinic",)
    # the targets are the CSV's diagnoses in alphabetical code order
    codes = {c: i for i, c in enumerate(sorted(csv["diagnostic"].unique()))}
    rows = batch["index"].numpy()
    assert [codes[d] for d in csv["diagnostic"].iloc[rows]] == batch["target"][:, 0].tolist()


def test_isic_fold_is_the_reported_partition_without_test(isic_root):
    dm = Isic2019DataModule(root=str(isic_root), fold=1, **FAST)
    dm.setup()
    n = len(pd.read_csv(isic_root / "ISIC_2019_Training_Metadata.csv"))
    p = _parts(dm)
    assert not p["test"] and len(p["train"]) + len(p["val"]) == n and abs(len(p["val"]) - n / 5) <= 8
    assert not dm.has_partition("test")
    with pytest.raises(ConfigError, match="no 'test' partition"):
        dm.test_dataloader()
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"]["derm"].shape == (16, 3, 32, 32) and batch["meta"].shape == (16, 11)
    assert batch["target"].shape == (16, 1) and int(batch["target"].max()) < 8


def test_derm7pt_uses_the_official_index_files_and_both_images(derm7pt_root):
    dm = Derm7ptDataModule(root=str(derm7pt_root), **FAST)
    dm.setup()
    meta = derm7pt_root / "meta"
    case_nums = pd.read_csv(meta / "meta.csv")["case_num"].astype(str).to_numpy()
    for part, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        rows = pd.read_csv(meta / f"{name}_indexes.csv")["indexes"].to_numpy()
        assert _parts(dm)[part] == set(case_nums[rows])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["images"]) == {"derm", "clinic"}
    assert batch["images"]["derm"].shape == batch["images"]["clinic"].shape == (16, 3, 32, 32)
    assert batch["target"].shape == (16, 8) and batch["meta"].shape == (16, 20)
    assert dm.augment["brightness_contrast"] is True      # the two-image setting's default


def test_derm7pt_chapter4_setting_by_keywords(derm7pt_root):
    dm = Derm7ptDataModule(root=str(derm7pt_root), tasks=["DIAG"], image_keys=["derm"], meta="m14",
                           augment={"brightness_contrast": False}, **FAST)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["images"]) == {"derm"} and batch["target"].shape == (16, 1) and batch["meta"].shape == (16, 59)
    assert dm.augment["p"] == 0.5 and dm.augment["brightness_contrast"] is False


def test_config_keywords_are_accepted_and_checked(pad_root):
    # the same keys a data preset passes, including `dataset`
    dm = PadUfes20DataModule(dataset="pad_ufes", root=str(pad_root), fold=1, split="lesion_grouped",
                             split_seed=8, meta="m45", eval_batch_size=64, **FAST)
    assert dm.info.meta_dim == 45 and dm.eval_batch_size == 64
    with pytest.raises(ConfigError, match="Isic2019DataModule"):
        PadUfes20DataModule(dataset="isic2019", root=str(pad_root))
    with pytest.raises(ConfigError, match="batchsize"):
        PadUfes20DataModule(root=str(pad_root), batchsize=8)
    with pytest.raises(ConfigError, match="flip"):
        PadUfes20DataModule(root=str(pad_root), augment={"flip": False})


def test_default_training_augmentation_is_on(pad_root):
    dm = PadUfes20DataModule(root=str(pad_root), **FAST)
    assert dm.augment["p"] == 0.5 and dm.augment["affine"] and not dm.augment["brightness_contrast"]
    dm.setup()
    ds = dm.datasets["train"]
    views = np.stack([ds[0]["images"]["clinic"].numpy() for _ in range(12)])
    assert len({v.tobytes() for v in views}) > 1          # random draws differ
    val = dm.datasets["val"]
    assert (val[0]["images"]["clinic"] == val[0]["images"]["clinic"]).all()
