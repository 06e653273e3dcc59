"""Chapter-6 baselines and sweep presets: every one-stage baseline trains end to end; the Table 6.x sweeps
compose into the networks, recipe and run counts they name; the two-stage (C-M) pipeline runs on one image."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from skinlesion.config import expand_sweep, validate_config
from skinlesion.data.info import DataInfo
from skinlesion.data.tasks import DERM7PT_TASKS
from skinlesion.fusionm4net.pipeline import run_pipeline
from skinlesion.models import build_network
from skinlesion.testing import TINY, compose_cfg, fit_one_batch, run_record, train
from skinlesion.train import CONFIG_DIR

CONF = Path(CONFIG_DIR)
INFO = DataInfo("derm7pt", DERM7PT_TASKS, ("derm", "clinic"), 20)
# (variant, method, branches, network input widths to check)
BASELINES = [("ch6_c", "C", {"image"}), ("ch6_d", "D", {"image"}), ("ch6_cd", "C-D", {"fusion"}),
             ("ch6_cm", "C-M", {"fusion"}), ("ch6_dm", "D-M", {"fusion"}), ("ch6_cdm", "C-D-M", {"fusion"}),
             ("ch6_cdm_metablock", "C-D-M MetaBlock", {"fusion"}), ("ch6_cdm_metanet", "C-D-M MetaNet", {"fusion"})]


@pytest.mark.parametrize("variant,method,branches", BASELINES, ids=[b[0] for b in BASELINES])
def test_chapter6_baseline_fits_and_predicts_a_batch(variant, method, branches, derm7pt_root, tmp_path):
    module = fit_one_batch(["data=derm7pt", f"data.root={derm7pt_root}", f"+variant={variant}"], tmp_path)
    test = module.predictions
    assert {c.split("/")[1] for c in test.columns if c.startswith("prob/")} == branches
    assert {c.split("/")[2] for c in test.columns if c.startswith("prob/")} == {t.name for t in DERM7PT_TASKS}


def test_chapter6_baseline_trains_end_to_end(derm7pt_root, tmp_path):
    """One whole run (C-D-M); every baseline's wiring is checked on a batch above."""
    run = train(["data=derm7pt", f"data.root={derm7pt_root}", "+variant=ch6_cdm", "trainer.limit_train_batches=2"],
                tmp_path / "run")
    rec = run_record(run)
    assert rec["status"] == "completed", rec.get("error")
    assert rec["method"] == "C-D-M" and set(rec["branches"]) == {"fusion"}
    test = pd.read_parquet(run / "predictions" / "test.parquet")
    assert {c.split("/")[2] for c in test.columns if c.startswith("prob/")} == {t.name for t in DERM7PT_TASKS}


def _net(variant: str, tmp_path):
    cfg = compose_cfg(["data=derm7pt", f"+variant={variant}"], tmp_path)
    with torch.device("meta"):
        return build_network(cfg.model.net, {**OmegaConf.to_container(cfg.backbone), "pretrained": False}, INFO), cfg


def test_one_stage_networks_read_what_their_names_say(tmp_path):
    cdm, cfg = _net("ch6_cdm", tmp_path)
    assert cfg.backbone.name.startswith("resnet50") and cfg.data.batch_size == 32 and cfg.class_weighted is False
    assert cdm.branches == ("fusion",)
    assert cdm.heads["fusion"].trunk[0].in_features == 2048 + 2048 + 20      # [f_C; f_D; m20]
    cd, _ = _net("ch6_cd", tmp_path)
    assert cd.heads["fusion"].trunk[0].in_features == 4096
    mb, _ = _net("ch6_cdm_metablock", tmp_path)
    assert mb.meta_fusion.groups == 128 and mb.heads["fusion"].trunk[0].in_features == 4096   # k = 4096/32
    mn, _ = _net("ch6_cdm_metanet", tmp_path)
    assert mn.meta_fusion.channels == 64                                                      # c = 4096/64
    cm, cfg = _net("ch6_cm", tmp_path)
    assert cfg.model.net.image_key == "clinic" and cm.encoder is None                         # raw m20, no M_M
    assert cm.heads["fusion"].trunk[0].in_features == 2048 + 20


CH6_RECIPE = {"name": "adam", "lr": 3e-5, "weight_decay": 0.0}
# the rest of the chapter-6 recipe, written out: cosine per epoch over 250 epochs, batch 32, 224 px, the full
# augmentation block with brightness/contrast inside it, plain cross-entropy, six-view TTA
CH6_SETTINGS = {"scheduler": {"name": "cosine", "T_max": 250, "eta_min": 0.0}, "batch_size": 32, "image_size": 224,
                "augment": {"p": 0.5, "flips": True, "affine": True, "shift": 0.0625, "scale": 0.5, "rotate": 45,
                            "rotate90": True, "brightness_contrast": True, "brightness_contrast_in_block": True},
                "class_weighted": False, "tta": "six"}


def _recipe(cfg) -> dict:
    r = OmegaConf.to_container(cfg, resolve=True)
    return {"scheduler": r["optim"]["scheduler"], "batch_size": r["data"]["batch_size"],
            "image_size": r["data"]["image_size"], "augment": r["data"]["augment"],
            "class_weighted": r["class_weighted"], "tta": r["tta"]}
# experiment -> (entry config, points without seeds, methods)
CH6_SWEEPS = {
    "table6_3": ("train", 6, {("C", "image_only"), ("D", "image_only"), ("C-D", "two_image"), ("C-M", "jf"),
                              ("D-M", "jf"), ("C-D-M", "two_image")}),
    "table6_8": ("train", 2, {("C-D-M MetaBlock", "two_image"), ("C-D-M MetaNet", "two_image")}),
    "table6_3_two_stage": ("fusionm4net", 2, {("C", "image_only"), ("D", "image_only")}),
    "table6_4": ("fusionm4net", 3, {("FusionNet", "two_image")}),
}


@pytest.mark.parametrize("experiment", sorted(CH6_SWEEPS))
def test_chapter6_sweep_presets_compose(experiment, tmp_path):
    entry, n_points, methods = CH6_SWEEPS[experiment]
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    assert len(expand_sweep("seed", str(params["seed"]))) == 5            # the thesis's 5 runs
    axes = [[f"{k}={v}" for v in expand_sweep(k, str(vals))] for k, vals in params.items() if k != "seed"]
    points = [list(p) for p in itertools.product(*axes)] or [[]]
    assert len(points) == n_points
    seen = set()
    for point in points:
        cfg = compose_cfg([f"experiment={experiment}", *point], tmp_path, config_name=entry)
        if experiment == "table6_4":   # a seed's classifiers share its stage 1, in the sweep directory
            assert OmegaConf.to_container(cfg)["stage1_dir"] == "${hydra:sweep.dir}/stage1_s${seed}"
            cfg.stage1_dir = str(tmp_path / "stage1")   # (the sweep directory is known only in a sweep)
        validate_config(cfg)
        assert cfg.group == experiment and cfg.data.dataset == "derm7pt"
        assert OmegaConf.to_container(cfg.optim.optimizer) == CH6_RECIPE and cfg.trainer.max_epochs == 250
        assert _recipe(cfg) == CH6_SETTINGS, point
        assert cfg.callbacks.get("swa") is None and cfg.callbacks.get("early_stopping") is None
        assert cfg.backbone.name.startswith("resnet50")
        seen.add((cfg.model.method, cfg.model.net.arch))
    assert seen == methods


def test_two_stage_c_m_runs_the_pipeline_on_one_image(derm7pt_root, tmp_path):
    cfg = compose_cfg([f"data.root={derm7pt_root}", *TINY, "trainer.limit_train_batches=2", "stage2.grid_n=5",
                       "model=single_image", "+variant=two_stage_cm"], tmp_path, config_name="fusionm4net")
    result = run_pipeline(cfg)
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["method"] == "(C-M)" and rec["branches"] == ["p1", "p2", "p3", "p3_avg"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fusion_scheme1"]["weights"] == {"image": 1.0}       # one image: its output is P1
    main = pd.read_parquet(tmp_path / "stage1" / "main" / "predictions" / "test.parquet")
    p1 = pd.read_parquet(tmp_path / "predictions" / "test.parquet").set_index("case_id")
    for t in DERM7PT_TASKS:
        cols = [f"prob/image/{t.name}/{c}" for c in t.classes]
        got = p1.loc[main["case_id"], [f"prob/p1/{t.name}/{c}" for c in t.classes]].to_numpy()
        assert abs(got - main[cols].to_numpy()).max() < 1e-9
    assert 0.0 <= result["w"] <= 1.0


def test_metadata_only_baseline_reproduces_table_6_3_on_the_real_metadata(tmp_path):
    """M needs no images: on the real derm7pt metadata it lands at the thesis's 70.2 ± 0.1 AVG ACC."""
    from skinlesion.fusionm4net.metadata_only import main
    from skinlesion.testing import shared

    assert main([str(shared("derm7pt")), "--out", str(tmp_path / "m")]) == 0
    test = pd.read_parquet(tmp_path / "m" / "predictions" / "test.parquet")
    assert len(test) == 395
    accs = [(test[[f"prob/m/{t.name}/{c}" for c in t.classes]].to_numpy().argmax(1)
             == test[f"target/{t.name}"].to_numpy()).mean() for t in DERM7PT_TASKS]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["m"]["avg_acc"] == pytest.approx(sum(accs) / 8)
    assert abs(sum(accs) / 8 - 0.702) < 0.015


def test_no_configuration_is_trained_by_two_chapter6_sweeps(tmp_path):
    """Rows that several thesis tables share (C-D-M in T6.3/T6.8, FusionM4Net-SVM in T6.4/6.6/6.7/6.8) are trained
    by one sweep; the report takes them from whichever sweep holds them."""
    trained = {}
    for experiment, (entry, _, _) in CH6_SWEEPS.items():
        params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
        axes = [[f"{k}={v}" for v in expand_sweep(k, str(vals))] for k, vals in params.items() if k != "seed"]
        for point in itertools.product(*axes):
            cfg = compose_cfg([f"experiment={experiment}", *point], tmp_path, config_name=entry)
            net = OmegaConf.to_container(cfg.model.net, resolve=True)
            key = json.dumps([entry, cfg.model.method, net, cfg.get("cluster")], sort_keys=True)
            assert key not in trained, f"{experiment} {point} repeats {trained.get(key)}"
            trained[key] = (experiment, point)
    clusters = {json.loads(k)[3] for k, (e, _) in trained.items() if e == "table6_4"}
    assert clusters == {"svm", "logreg", "mlp"}
