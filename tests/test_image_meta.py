"""Chapter-4 JF / JIF networks: construction from a DataInfo, forward contract, configs, parameter counts."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from skinlesion.data.info import DataInfo
from skinlesion.data.tasks import DERM7PT_TASKS, PAD_UFES_TASKS
from skinlesion.errors import ConfigError
from skinlesion.models import MODEL_REGISTRY, build_network, required_inputs
from skinlesion.models.fusion import registered_fusions
from skinlesion.models.meta_encoder import MetaEncoder
from skinlesion.testing import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
FUSIONS = tuple(registered_fusions())
PAD = DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 81)
TEST_EFFNET = {"name": "test_efficientnet", "pretrained": False}
TEST_RESNET = {"name": "test_resnet", "pretrained": False}
BRANCHES = {"jf": ("fusion",), "jif": ("image", "meta", "fusion")}


def make_batch(info: DataInfo, b: int = 3, size: int = 64) -> dict:
    return {"images": {k: torch.randn(b, 3, size, size) for k in info.image_keys},
            "meta": torch.rand(b, info.meta_dim)}


def net_cfg(arch: str, fusion: str, **kw) -> dict:
    return {"arch": arch, "fusion": fusion, **kw}


@pytest.mark.parametrize("arch", ["jf", "jif"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_contract_test_efficientnet(arch, fusion):
    torch.manual_seed(0)
    net = build_network(net_cfg(arch, fusion), TEST_EFFNET, PAD)
    assert type(net).branches == BRANCHES[arch]
    assert required_inputs(net_cfg(arch, fusion), PAD) == ("clinic",)
    out = net(make_batch(PAD))
    assert tuple(out["logits"]) == BRANCHES[arch]
    for branch, per_task in out["logits"].items():
        assert set(per_task) == {"diagnostic"}
        assert per_task["diagnostic"].shape == (3, 6)
    assert out["features"].shape == (3, net.fusion.out_dim)
    counts = net.param_counts()
    assert counts["total"] == counts["trainable"] == sum(p.numel() for p in net.parameters())
    assert counts["thesis_count"] > counts["total"]   # the backbone's unused classifier is added


@pytest.mark.parametrize("fusion", ["cat", "metablock", "mutual_attention", "mmfa"])
def test_test_resnet_works_where_divisible(fusion):
    net = build_network(net_cfg("jif", fusion), TEST_RESNET, PAD)   # D = 96
    assert net(make_batch(PAD, b=2))["features"].shape[0] == 2


def test_indivisible_backbone_is_config_error():
    with pytest.raises(ConfigError, match=r"test_resnet.*D=96"):
        build_network(net_cfg("jf", "metanet"), TEST_RESNET, PAD)


def test_heads_are_single_linear_layers():
    net = build_network(net_cfg("jif", "mmfa"), TEST_EFFNET, PAD)
    for branch, width in {"image": 256, "meta": 128, "fusion": 256 + 128}.items():
        clf = net.heads[branch].classifiers["diagnostic"]
        assert isinstance(net.heads[branch].trunk, torch.nn.Identity)
        assert (clf.in_features, clf.out_features) == (width, 6)
    assert isinstance(net.encoder, MetaEncoder) and net.encoder.out_features == 128


def test_jif_branch_losses_reach_shared_encoders():
    torch.manual_seed(0)
    net = build_network(net_cfg("jif", "mmfa"), TEST_EFFNET, PAD)
    batch = make_batch(PAD)

    def grads_after(branch):
        net.zero_grad(set_to_none=True)
        net(batch)["logits"][branch]["diagnostic"].sum().backward()
        touched = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())  # noqa: E731
        return touched(net.backbone), touched(net.encoder), touched(net.fusion)

    assert grads_after("image") == (True, False, False)
    assert grads_after("meta") == (False, True, False)
    assert grads_after("fusion") == (True, True, True)


def test_raw_meta_input():
    jf = build_network(net_cfg("jf", "cat", meta_input="raw"), TEST_EFFNET, PAD)
    assert jf.encoder is None                         # f_M unused in JF with raw metadata
    assert jf.fusion.out_dim == 256 + 81
    assert jf(make_batch(PAD))["features"].shape == (3, 337)
    jif = build_network(net_cfg("jif", "metablock", meta_input="raw"), TEST_EFFNET, PAD)
    assert jif.encoder is not None and jif.fusion.scale[0].in_features == 81
    assert set(jif(make_batch(PAD))["logits"]) == {"image", "meta", "fusion"}
    with pytest.raises(ConfigError, match="meta_input"):
        build_network(net_cfg("jf", "cat", meta_input="onehot"), TEST_EFFNET, PAD)


def test_fusion_options_and_encoder_options_pass_through():
    net = build_network(net_cfg("jf", "cat", fusion_options={"reducer": 0},
                                meta_encoder={"hidden": [64, 32]}), TEST_EFFNET, PAD)
    assert net.fusion.out_dim == 256 + 32
    with pytest.raises(ConfigError, match="unknown option"):
        build_network(net_cfg("jf", "mmfa", fusion_options={"ops": "gate"}), TEST_EFFNET, PAD)
    with pytest.raises(ConfigError, match="unknown"):
        build_network(net_cfg("jf", "concat"), TEST_EFFNET, PAD)


@pytest.mark.parametrize("arch", ["jf", "jif"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_no_metadata_is_config_error(arch, fusion):
    no_meta = DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 0)
    with pytest.raises(ConfigError, match="metadata"):
        build_network(net_cfg(arch, fusion), TEST_EFFNET, no_meta)
    with pytest.raises(ConfigError, match="metadata"):
        MODEL_REGISTRY[arch](info=no_meta, backbone=TEST_EFFNET, fusion=fusion)


def test_image_key_selection():
    info = DataInfo("derm7pt", DERM7PT_TASKS[:1], ("derm", "clinic"), 59)
    net = build_network(net_cfg("jif", "mmfa", image_key="clinic"), TEST_EFFNET, info)
    assert required_inputs(net_cfg("jif", "mmfa", image_key="clinic"), info) == ("clinic",)
    batch = make_batch(info, b=2)
    batch["images"]["derm"] = None                   # must not be read
    assert net(batch)["logits"]["fusion"]["DIAG"].shape == (2, 5)
    assert required_inputs(net_cfg("jf", "cat"), info) == ("derm",)
    with pytest.raises(ConfigError, match="clinic"):
        build_network(net_cfg("jf", "cat", image_key="clinic"), TEST_EFFNET,
                      DataInfo("isic2019", PAD_UFES_TASKS, ("derm",), 11))


def test_mobilenetv2_parameter_counts():
    """Parameter accounting: Image 3.51M -> JIF-MMFA ≈4.49M (thesis 3.6 -> 4.4) on PAD m81, thesis convention."""
    bb = {"name": "mobilenetv2_100", "pretrained": False}
    image = build_network({"arch": "image_only"}, bb, PAD).param_counts()
    jif = build_network(net_cfg("jif", "mmfa"), bb, PAD).param_counts()
    assert 3.45e6 < image["thesis_count"] < 3.55e6
    assert 4.40e6 < jif["thesis_count"] < 4.50e6
    # What JIF-MMFA adds, in closed form: M_M + MMFA + C_M + C_IM (C_I is the image-only classifier).
    m_m = (81 * 256 + 256 + 512) + (256 * 128 + 128 + 256)
    mmfa = (1280 * 384 + 384 + 768) + (128 * 384 + 384 + 768) + (256 * 1408 + 1408 + 2816)
    heads = (128 * 6 + 6) + (1408 * 6 + 6)
    assert jif["thesis_count"] - image["thesis_count"] == m_m + mmfa + heads
    assert jif["thesis_count"] - jif["total"] == image["thesis_count"] - image["total"] == 1280 * 1000 + 1000


# --- configs ---------------------------------------------------------------------------------------

# The thesis's names of the ten chapter-4 fusion methods (Tables 4.1-4.9).
THESIS_LABELS = {"jf_cat": "JF-CAT", "jf_metablock": "JF-MB", "jf_metanet": "JF-MN", "jf_mutual_attention": "JF-MA",
                 "jf_mmfa": "JF-MMFA", "jif_cat": "JIF-CAT", "jif_metablock": "JIF-MB", "jif_metanet": "JIF-MN",
                 "jif_mutual_attention": "JIF-MA", "jif_mmfa": "JIF-MMFA"}


@pytest.mark.parametrize("preset", sorted(THESIS_LABELS))
def test_model_presets(preset, tmp_path):
    arch, fusion = preset.split("_", 1)
    model = compose_cfg([f"model={preset}"], tmp_path).model
    assert model.name == preset and model.method == THESIS_LABELS[preset]
    assert model.net.arch == arch and model.net.fusion == fusion
    # the same network as model=<arch> fusion=<module>
    assert OmegaConf.to_yaml(model) == OmegaConf.to_yaml(compose_cfg([f"model={arch}", f"fusion={fusion}"],
                                                                      tmp_path).model)
    weights = OmegaConf.to_container(model.branch_weights, resolve=True)
    if arch == "jf":
        assert weights == {"fusion": 1.0} and model.report == "fusion"
    else:
        assert model.beta == 0.5 and model.report == "all"
        assert weights == {"image": 0.5, "meta": 0.5, "fusion": 1.0}
        model.beta = 0.3
        assert OmegaConf.to_container(model.branch_weights, resolve=True)["meta"] == pytest.approx(0.7)
    net = build_network(model.net, OmegaConf.load(CONF / "backbone" / "test_efficientnet.yaml"), PAD)
    assert set(net(make_batch(PAD, b=2))["logits"]) == set(BRANCHES[arch])


def test_fusion_options_are_set_in_the_fusion_config(tmp_path):
    model = compose_cfg(["model=jf_cat", "fusion.options.reducer=0"], tmp_path).model
    net = build_network(model.net, {"name": "test_efficientnet", "pretrained": False}, PAD)
    assert net.fusion.out_dim == 256 + 128          # plain concatenation of f_I (D = 256) and f_M


BACKBONES = {"efficientnet_b3": 1536, "resnet50": 2048, "densenet121": 1024, "xception": 2048, "swin_t": 768,
             "convnext_t": 768, "mobilenetv3_small": 576, "mobilenetv3_large": 960, "test_efficientnet": 256}


@pytest.mark.parametrize("preset,width", sorted(BACKBONES.items()))
def test_backbone_presets(preset, width):
    from skinlesion.models.backbones import Backbone

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "backbone" / f"{preset}.yaml"))
    # real backbones start from ImageNet weights (the thesis recipe); timm's test networks have none
    assert cfg["pretrained"] is (not preset.startswith("test_"))
    cfg["pretrained"] = False   # no downloads here: build the structure only
    if "." in cfg["name"]:
        assert cfg["name"] in timm.list_pretrained(cfg["name"].split(".")[0] + ".*")
    with torch.device("meta"):   # structure only: no weights, no memory
        assert Backbone(**cfg).num_features == width
