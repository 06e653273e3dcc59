"""Every config preset composes, and every model preset trains end to end on generated data."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from skinlesion.config import expand_sweep, fusion_config_names
from skinlesion.testing import compose_cfg, fit_one_batch, run_record, train
from skinlesion.train import CONFIG_DIR

CONF = Path(CONFIG_DIR)
FUSIONS = fusion_config_names()
CH4_MODELS = ["image_only"] + [f"{arch}_{f}" for arch in ("jf", "jif") for f in FUSIONS]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("data", ["pad_ufes", "derm7pt_ch4"])
@pytest.mark.parametrize("model", CH4_MODELS + ["meta_only"])
def test_model_preset_fits_and_predicts_a_batch(model, data, roots, tmp_path):
    module = fit_one_batch([f"data={data}", f"data.root={roots[data]}", f"model={model}",
                            "backbone=test_efficientnet"], tmp_path)
    pred = module.predictions
    assert len(pred) == 32 and np.isfinite(pred.filter(like="prob/").to_numpy()).all()
    branches = {c.split("/")[1] for c in pred.columns if c.startswith("prob/")}
    assert branches == set(module.network.branches)
    expected = {"image_only": {"image"}, "meta_only": {"meta"}}.get(model, {"fusion"} if model.startswith("jf_")
                                                                   else {"image", "meta", "fusion"})
    assert branches == expected


# whole runs for three presets: the rest of the flow (epochs, best checkpoint, TTA evaluation, metrics) is the same
@pytest.mark.parametrize("model,data", [("jif_mmfa", "pad_ufes"), ("jf_metanet", "derm7pt_ch4"), ("meta_only", "pad_ufes")])
def test_model_preset_trains_one_epoch(model, data, roots, tmp_path):
    run = train([f"data={data}", f"data.root={roots[data]}", f"model={model}", "backbone=test_efficientnet"],
                tmp_path / "run")
    rec = run_record(run)
    assert rec["status"] == "completed"
    assert rec["drop_path_rate"] == (None if model == "meta_only" else 0.0)   # the backbone preset's, recorded
    pred = pd.read_parquet(run / "predictions" / "test.parquet")
    branches = {c.split("/")[1] for c in pred.columns if c.startswith("prob/")}
    assert branches == set(rec["branches"])
    if model.startswith("jif_"):
        assert branches == {"image", "meta", "fusion"} and rec["reported"] == "all"
        # JIF(All) is the mean of the three saved branch probabilities, evaluated without retraining
        task = next(iter(rec["tasks"]))
        probs = [pred[[c for c in pred.columns if c.startswith(f"prob/{b}/{task}/")]].to_numpy()
                 for b in ("image", "meta", "fusion")]
        y = pred[f"target/{task}"].to_numpy()
        acc = float(((sum(probs) / 3).argmax(1) == y).mean())
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test"]["all"]["tasks"][task]["acc"] == pytest.approx(acc)
        assert set(metrics["test"]) == {"image", "meta", "fusion", "all", "all_logits"}   # OFB = "fusion"


def sweep_points(experiment: str) -> list[list[str]]:
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    axes = [[f"{k}={v}" for v in expand_sweep(k, str(vals))] for k, vals in params.items()]
    return [list(p) for p in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("table4")])
def test_sweep_preset_configs_all_resolve(experiment, tmp_path):
    points = sweep_points(experiment)
    assert len(points) == 5 * len(CH4_MODELS) * 5       # backbones x methods x folds/seeds
    # folds/seeds are plain integers and backbone presets set only the backbone: composing every model with
    # the first backbone and every backbone with the first model covers every distinct setting
    axes = {k: sorted({o for p in points for o in p if o.startswith(f"{k}=")}) for k in ("backbone", "model")}
    seen = {}
    for point in points:
        key = tuple(o for o in point if o.split("=")[0] in ("backbone", "model"))
        if key in seen or not (key[0] == axes[key[0].split("=")[0]][0] or key[1] == axes[key[1].split("=")[0]][0]):
            continue
        cfg = compose_cfg([f"experiment={experiment}", *point], tmp_path)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        seen[key] = resolved
        assert resolved["group"] == experiment
        assert resolved["backbone"]["pretrained"] is True          # thesis: ImageNet initialisation
        assert resolved["optim"]["optimizer"] == {"name": "sgd", "lr": 0.005, "momentum": 0.9,
                                                  "weight_decay": 0.001}
        assert resolved["trainer"]["max_epochs"] == 150 and resolved["data"]["batch_size"] == 128
        assert resolved["callbacks"]["early_stopping"]["patience"] == 30 and resolved["tta"] == "six"
        if resolved["model"]["name"].startswith("jif_"):
            assert resolved["model"]["branch_weights"] == {"image": 0.5, "meta": 0.5, "fusion": 1.0}
    assert len(seen) == 5 + len(CH4_MODELS) - 1
    if experiment == "table4_2":
        assert resolved["data"]["tasks"] == ["DIAG"] and resolved["data"]["meta"] == "m14"
        assert resolved["data"]["image_keys"] == ["derm"]


def test_demo_preset_runs(pad_root, tmp_path):
    run = train(["experiment=demo", f"data.root={pad_root}", "trainer.max_epochs=1", "data.image_size=32",
                 "data.num_workers=0", "trainer.enable_progress_bar=false",
                 "callbacks.progress_bar=null"], tmp_path / "run", tiny=False)
    assert run_record(run)["status"] == "completed"


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("local_gpus", "JoblibLauncher")])
def test_launcher_presets_compose(launcher, target, tmp_path):
    cfg = compose_cfg(["experiment=table4_1", f"launcher={launcher}", "gpu_pool=[0]"], tmp_path, with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.hydra.sweeper.params["data.fold"] == "0,1,2,3,4"
