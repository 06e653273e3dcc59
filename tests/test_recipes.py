"""One owner per setting: data presets say what the data is, the recipe says how to train.

Every documented entry command is composed and its resolved training settings are compared with the thesis's
chapter-4 recipe, written out here by hand (thesis §4.3.2)."""
from __future__ import annotations

import hydra
import pytest
import yaml
from omegaconf import OmegaConf

from skinlesion.config import expand_sweep, validate_config
from skinlesion.errors import ConfigError
from skinlesion.testing import REPO, compose_cfg

CONF = REPO / "conf"

# Thesis chapter 4: SGD 0.005 / momentum 0.9 / weight decay 1e-3, cosine stepped per epoch with T_max 150,
# at most 150 epochs, early stopping after 30 epochs on the validation main score, batch 128, 224 x 224,
# class-weighted cross-entropy, six-view TTA, the geometric augmentation block with probability 0.5.
CH4 = {
    "optimizer": {"name": "sgd", "lr": 0.005, "momentum": 0.9, "weight_decay": 0.001},
    "scheduler": {"name": "cosine", "T_max": 150, "eta_min": 0.0},
    "max_epochs": 150,
    "early_stopping": {"monitor": "val/main", "mode": "max", "patience": 30},
    "batch_size": 128,
    "image_size": 224,
    "class_weighted": True,
    "tta": "six",
    "augment": {"p": 0.5, "flips": True, "affine": True, "shift": 0.0625, "scale": 0.5, "rotate": 45,
                "rotate90": True, "brightness_contrast": False},
}
# Thesis chapters 5-6: Adam 3e-5 without weight decay, cosine per epoch over 250 epochs, no early stopping,
# batch 24, 224 x 224, unweighted cross-entropy, augmentation with brightness/contrast, six-view TTA.
CH5 = {
    "optimizer": {"name": "adam", "lr": 3e-5, "weight_decay": 0.0},
    "scheduler": {"name": "cosine", "T_max": 250, "eta_min": 0.0},
    "max_epochs": 250,
    "early_stopping": None,
    "batch_size": 24,
    "image_size": 224,
    "class_weighted": False,
    "tta": "six",
    "augment": {**CH4["augment"], "brightness_contrast": True, "brightness_contrast_in_block": True},
}

# The README's training commands (data roots left at their defaults: composing reads no file).
DOCUMENTED = {
    "pad_meta_only": ["data=pad_ufes", "data.fold=3", "model=meta_only"],
    "derm7pt_image": ["data=derm7pt", "model=image_only", "backbone=resnet50"],
    "jif_mmfa_pad": ["model=jif_mmfa", "data=pad_ufes", "data.fold=2", "backbone=efficientnet_b3"],
    "jf_metablock_isic": ["model=jf_metablock", "data=isic2019", "backbone=densenet121"],
    "isic_image": ["data=isic2019", "data.fold=0", "model=image_only"],
}


def training_settings(cfg) -> dict:
    r = OmegaConf.to_container(cfg, resolve=True)
    es = (r.get("callbacks") or {}).get("early_stopping")
    return {
        "optimizer": r["optim"]["optimizer"], "scheduler": r["optim"]["scheduler"],
        "max_epochs": r["trainer"]["max_epochs"],
        "early_stopping": None if es is None else {k: es[k] for k in ("monitor", "mode", "patience")},
        "batch_size": r["data"]["batch_size"], "image_size": r["data"]["image_size"],
        "class_weighted": r["class_weighted"], "tta": r["tta"], "augment": r["data"]["augment"],
    }


def sweep_points(experiment: str) -> list[list[str]]:
    """One point per distinct (data, model) of the preset's sweep (backbones, folds and seeds do not touch the
    recipe)."""
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    models = expand_sweep("model", params["model"])
    return [[f"experiment={experiment}", f"model={m}"] for m in models]


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_commands_follow_the_chapter4_recipe(name, tmp_path):
    cfg = compose_cfg(DOCUMENTED[name], tmp_path)
    assert training_settings(cfg) == CH4
    validate_config(cfg)


@pytest.mark.parametrize("experiment", ["table4_1", "table4_2", "table4_3"])
def test_table_sweeps_follow_the_chapter4_recipe(experiment, tmp_path):
    points = sweep_points(experiment)
    assert len(points) >= 11
    for point in points:
        cfg = compose_cfg(point, tmp_path)
        assert training_settings(cfg) == CH4, point
        assert cfg.backbone.pretrained is True      # ImageNet initialisation


def test_demo_states_only_its_deltas(tmp_path):
    got = training_settings(compose_cfg(["experiment=demo"], tmp_path))
    # the demo's stated deltas: small images and batches, a larger learning rate, a short schedule
    expected = {**CH4, "optimizer": {**CH4["optimizer"], "lr": 0.05},
                "scheduler": {**CH4["scheduler"], "T_max": 12}, "max_epochs": 12,
                "early_stopping": {**CH4["early_stopping"], "patience": 12}, "batch_size": 32, "image_size": 64}
    assert got == expected


@pytest.mark.parametrize("data", ["pad_ufes", "isic2019", "derm7pt", "derm7pt_ch4"])
def test_ch5_recipe_on_any_data(data, tmp_path):
    cfg = compose_cfg([f"data={data}", "recipe=ch5"], tmp_path)
    assert training_settings(cfg) == CH5
    assert cfg.data.dataset == ("derm7pt" if data.startswith("derm7pt") else data)


def test_derm7pt_ch4_is_the_chapter4_setting(tmp_path):
    cfg = compose_cfg(["data=derm7pt_ch4", "model=jif_mmfa"], tmp_path)
    assert training_settings(cfg) == CH4
    assert list(cfg.data.tasks) == ["DIAG"] and list(cfg.data.image_keys) == ["derm"] and cfg.data.meta == "m14"
    assert cfg.data.split == "official"


TRAINING_KEYS = {"batch_size", "image_size", "augment", "class_weighted", "tta", "max_epochs", "optimizer"}


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    return set()


@pytest.mark.parametrize("path", sorted((CONF / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_presets_hold_no_training_settings(path):
    assert not _keys(yaml.safe_load(path.read_text())) & TRAINING_KEYS


def test_entry_config_leaves_training_settings_to_the_recipe(tmp_path):
    top = yaml.safe_load((CONF / "train.yaml").read_text())
    assert top["class_weighted"] == "???" and top["tta"] == "???"
    cfg = compose_cfg(["~recipe"], tmp_path)
    with pytest.raises(ConfigError, match=r"^tta is not set .*recipe"):
        validate_config(cfg)


def test_recipe_reaches_the_datamodule(derm7pt_root, tmp_path):
    dm = hydra.utils.instantiate(compose_cfg(["data=derm7pt", f"data.root={derm7pt_root}", "recipe=ch5"],
                                            tmp_path).data, _convert_="all")
    assert dm.batch_size == 24 and dm.augment["brightness_contrast"] is True
    dm = hydra.utils.instantiate(compose_cfg(["data=derm7pt", f"data.root={derm7pt_root}"], tmp_path).data,
                                 _convert_="all")
    assert dm.batch_size == 128 and dm.augment["brightness_contrast"] is False


def test_readme_commands_are_the_ones_tested():
    readme = (REPO / "README.md").read_text()
    for cmd in (["data=pad_ufes", "model=meta_only"], ["data=derm7pt", "model=image_only", "backbone=resnet50"],
                ["model=jif_mmfa", "data=pad_ufes"], ["model=jf_metablock", "data=isic2019"]):
        assert any(all(w in line.split() for w in cmd) for line in readme.splitlines()
                   if "python train.py" in line), cmd


@pytest.mark.parametrize("data,cls", [("pad_ufes", "PadUfes20DataModule"), ("isic2019", "Isic2019DataModule"),
                                      ("derm7pt", "Derm7ptDataModule"), ("derm7pt_ch4", "Derm7ptDataModule")])
def test_data_presets_build_their_dataset_class(data, cls, tmp_path):
    import skinlesion.data

    dm = hydra.utils.instantiate(compose_cfg([f"data={data}"], tmp_path).data, _convert_="all")
    assert type(dm) is getattr(skinlesion.data, cls)
    assert dm.augment["brightness_contrast"] is False and dm.batch_size == 128   # the default recipe's
