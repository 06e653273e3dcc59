"""Registries find their modules; a new fusion method is one module file plus its config.

The plugin test adds a trivial fusion module and its config in a directory outside the checkout (named in
``$SKINLESION_PLUGINS``) and shows that it composes, builds, trains and joins the table sweeps, with nothing
else edited."""
from __future__ import annotations

import os
import re
import sys

import pytest
import torch
import yaml
from hydra.core.config_store import ConfigStore

from skinlesion.config import expand_sweep, fusion_config_names, register_plugin_configs
from skinlesion.data.info import DataInfo
from skinlesion.data.tasks import PAD_UFES_TASKS
from skinlesion.errors import ConfigError
from skinlesion.models import MODEL_REGISTRY, build_network, registered_models
from skinlesion.models.fusion import FUSION_REGISTRY, fusion_options, registered_fusions
from skinlesion.registry import PLUGIN_ENV
from skinlesion.testing import REPO, compose_cfg, run_command, run_record, train

CONF = REPO / "conf"

SUM_MODULE = '''"""Sum fusion: both features projected to one width and added."""
from torch import nn

from skinlesion.models.fusion import register_fusion


@register_fusion("sum")
class SumFusion(nn.Module):
    def __init__(self, img_dim: int, meta_dim: int, width: int = 32):
        super().__init__()
        self.img, self.meta = nn.Linear(img_dim, width), nn.Linear(meta_dim, width)
        self.out_dim = width

    def forward(self, f_img, m):
        return self.img(f_img) + self.meta(m)
'''
SUM_CONFIG = "name: sum\nlabel: SUM\noptions:\n  width: 24\n"


@pytest.fixture
def sum_plugin(tmp_path, monkeypatch):
    """A plugin directory with the two files of a new fusion method; removed again afterwards."""
    plugins = tmp_path / "plugins"
    (plugins / "conf" / "fusion").mkdir(parents=True)
    (plugins / "sum_fusion.py").write_text(SUM_MODULE)
    (plugins / "conf" / "fusion" / "sum.yaml").write_text(SUM_CONFIG)
    monkeypatch.setenv(PLUGIN_ENV, str(plugins))
    register_plugin_configs()
    yield plugins
    repo = ConfigStore.instance().repo
    repo["fusion"].pop("sum.yaml", None)
    for arch in ("jf", "jif"):
        repo["model"].pop(f"{arch}_sum.yaml", None)
    FUSION_REGISTRY.pop("sum", None)
    for name in [m for m in sys.modules if m.startswith("skinlesion_plugin_") and "sum_fusion" in m]:
        del sys.modules[name]


def test_new_fusion_composes_builds_and_trains(sum_plugin, pad_root, tmp_path):
    assert "sum" in registered_fusions() and "sum" in fusion_config_names()
    cfg = compose_cfg(["model=jif", "fusion=sum"], tmp_path)
    assert (cfg.model.name, cfg.model.method) == ("jif_sum", "JIF-SUM")
    assert dict(cfg.model.net.fusion_options) == {"width": 24}
    generated = compose_cfg(["model=jf_sum"], tmp_path)
    assert (generated.model.name, generated.model.method, generated.model.net.arch) == ("jf_sum", "JF-SUM", "jf")

    net = build_network(cfg.model.net, {"name": "test_resnet", "pretrained": False},
                        DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 81))
    assert type(net.fusion).__name__ == "SumFusion" and net.fusion.out_dim == 24
    assert net.heads["fusion"].classifiers["diagnostic"].in_features == 24

    run = train(["data=pad_ufes", f"data.root={pad_root}", "model=jif", "fusion=sum"], tmp_path / "run")
    rec = run_record(run)
    assert rec["status"] == "completed"
    assert (rec["model"], rec["method"]) == ("jif_sum", "JIF-SUM")
    assert rec["branches"] == ["image", "meta", "fusion"]


def test_new_fusion_joins_the_table_sweeps(sum_plugin):
    fusions = fusion_config_names()
    assert "sum" in fusions
    for table in ("table4_1", "table4_2", "table4_3"):
        params = yaml.safe_load((CONF / "experiment" / f"{table}.yaml").read_text())["hydra"]["sweeper"]["params"]
        models = expand_sweep("model", params["model"])
        assert "jf_sum" in models and "jif_sum" in models and len(models) == 1 + 2 * len(fusions)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_new_fusion_joins_the_launched_sweep(sum_plugin, tmp_path):
    """The real ``python train.py -m experiment=table4_1`` lists Image plus JF and JIF for every fusion config,
    the new one included (a missing data root makes each job stop at once: only the job list matters here)."""
    fusions = fusion_config_names()
    env = {**os.environ, PLUGIN_ENV: str(sum_plugin)}
    cmd = [sys.executable, "train.py", "-m", "experiment=table4_1", "backbone=test_resnet", "data.fold=0",
           f"data.root={tmp_path / 'absent'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_command(cmd, timeout=300, env=env)
    # every job stops at once, so the sweep ends with status 1, saying no job completed
    assert proc.returncode == 1 and "no job of the sweep in" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    launched = re.findall(r"#\d+ : .*?\bmodel=(\S+)", proc.stdout + proc.stderr)
    expected = ["image_only"] + [f"{arch}_{f}" for arch in ("jf", "jif") for f in fusions]
    assert sorted(launched) == sorted(expected)
    assert "jf_sum" in launched and "jif_sum" in launched


def test_every_registered_fusion_has_a_config_and_back():
    configs = {}
    for name in fusion_config_names():
        cfg = yaml.safe_load((CONF / "fusion" / f"{name}.yaml").read_text())
        assert cfg["name"] == name, f"conf/fusion/{name}.yaml names module {cfg['name']!r}"
        configs[name] = cfg
    assert set(configs) == set(registered_fusions())
    labels = [c["label"] for c in configs.values()]
    assert len(set(labels)) == len(labels)
    for name, cfg in configs.items():
        assert set(cfg.get("options") or {}) <= set(fusion_options(name)), name


def test_table_sweeps_enumerate_the_fusion_group():
    fusions = fusion_config_names()
    for table in ("table4_1", "table4_2", "table4_3"):
        params = yaml.safe_load((CONF / "experiment" / f"{table}.yaml").read_text())["hydra"]["sweeper"]["params"]
        models = expand_sweep("model", params["model"])
        assert models == ["image_only"] + [f"jf_{f}" for f in fusions] + [f"jif_{f}" for f in fusions]


def test_model_registry_discovers_its_modules():
    assert {"image_only", "meta_only", "jf", "jif"} <= set(registered_models())
    assert all(cls.registry_name == name for name, cls in MODEL_REGISTRY.items())


def test_unknown_fusion_lists_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"fusion='nope' is unknown; registered: \['cat'"):
        build_network({"arch": "jf", "fusion": "nope"}, {"name": "test_resnet"},
                      DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 81))


def test_missing_plugin_directory_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere.*not a directory"):
        registered_fusions()


def test_plugin_file_is_imported_once(sum_plugin):
    first = registered_fusions()
    cls = FUSION_REGISTRY["sum"]
    assert registered_fusions() == first and FUSION_REGISTRY["sum"] is cls
    assert cls(4, 2, width=3)(torch.zeros(5, 4), torch.zeros(5, 2)).shape == (5, 3)
