"""The composed config is checked before anything runs: a wrong value is one line naming key and expected type."""
from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from skinlesion.config import SCHEMA, validate_config
from skinlesion.errors import ConfigError
from skinlesion.testing import compose_cfg

# (override, message): the key, the value as given, and what was expected, all on one line.
WRONG = [
    ("data.batch_size=big", "data.batch_size='big': expected an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
    ("data.image_size=2.5", "data.image_size=2.5: expected an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers=-1: expected an integer >= 0"),
    ("data.augment.p=1.5", "data.augment.p=1.5: expected a number in [0, 1]"),
    ("data.augment.brightness_contrast=maybe", "data.augment.brightness_contrast='maybe': expected true or false"),
    ("data.missing_images=ignore", "data.missing_images='ignore': expected one of 'error', 'skip'"),
    ("data.eval_batch_size=all", "data.eval_batch_size='all': expected an integer >= 1 or null"),
    ("trainer.max_epochs=ten", "trainer.max_epochs='ten': expected an integer >= -1"),
    ("trainer.devices=two", "trainer.devices='two': expected an integer, 'auto', or a list of device indices"),
    ("trainer.enable_progress_bar=1", "trainer.enable_progress_bar=1: expected true or false"),
    ("optim.optimizer.lr=fast", "optim.optimizer.lr='fast': expected a number >= 0"),
    ("optim.optimizer.name=rmsprop", "optim.optimizer.name='rmsprop': expected one of 'sgd', 'adam', 'adamw'"),
    ("optim.optimizer.weight_decay=-0.1", "optim.optimizer.weight_decay=-0.1: expected a number >= 0"),
    ("callbacks.early_stopping.patience=3.5", "callbacks.early_stopping.patience=3.5: expected an integer >= 0"),
    ("seed=abc", "seed='abc': expected an integer"),
    ("tta=eight", "tta='eight': expected one of 'none', 'flips', 'six'"),
    ("class_weighted=yes", "class_weighted='yes': expected true or false"),
    ("model.beta=2", "model.beta=2: expected a number in [0, 1]"),
]


@pytest.mark.parametrize("override,message", WRONG, ids=[w[0].split("=")[0] for w in WRONG])
def test_wrong_value_is_one_line_config_error(override, message, tmp_path):
    model = ["model=jif_mmfa"] if override.startswith("model.beta") else []
    cfg = compose_cfg([*model, override], tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_interpolation_to_a_wrong_value_is_caught(tmp_path):
    # T_max follows trainer.max_epochs: the resolved value is what is checked
    cfg = compose_cfg(["optim.scheduler.T_max=${seed}", "seed=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"^optim.scheduler.T_max=0: expected an integer >= 1$"):
        validate_config(cfg)
    cfg = compose_cfg(["optim.scheduler.T_max=${nowhere.at_all}"], tmp_path)
    with pytest.raises(ConfigError, match=r"^optim.scheduler.T_max: cannot be resolved"):
        validate_config(cfg)


@pytest.mark.parametrize("overrides", [[], ["model=jif_mmfa", "data=derm7pt_ch4"], ["model=jf", "fusion=cat"],
                                       ["data=derm7pt", "recipe=ch5", "trainer=ddp"], ["experiment=demo"],
                                       ["data=isic2019", "trainer.devices=[0,1]", "data.eval_batch_size=256"]])
def test_valid_config_passes_unchanged(overrides, tmp_path):
    cfg = compose_cfg(overrides, tmp_path)
    before = copy.deepcopy(cfg)
    validate_config(cfg)
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(before)


def test_schema_keys_exist_in_the_default_config(tmp_path):
    """Every checked key is one the configs define (a renamed key must not leave the check looking elsewhere)."""
    cfgs = [compose_cfg(["model=jif_mmfa", "trainer=ddp"], tmp_path), compose_cfg(["data=derm7pt", "model=ammfm"], tmp_path)]
    optional = {"trainer.num_nodes", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val",
                "data.image_dir", "data.split_seed"}
    absent = [k for k in SCHEMA if k not in optional
              and all(OmegaConf.select(cfg, k, default="<absent>") == "<absent>" for cfg in cfgs)]
    assert not absent


def test_training_stops_before_anything_is_written(tmp_path):
    from skinlesion.testing import train

    with pytest.raises(SystemExit, match=r"^error: data.batch_size='big': expected an integer >= 1$"):
        train(["data.batch_size=big"], tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()
