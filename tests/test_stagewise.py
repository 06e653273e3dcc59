"""Stage-wise backbone execution and the spatial attention blocks between two encoders."""
from __future__ import annotations

import pytest
import timm
import torch

from skinlesion.models.spatial_attention import BLOCK_REGISTRY, attention
from skinlesion.models.stagewise import StageRunner

SWIN = (96, 192, 384, 768)
MNV3_SMALL = (16, 24, 48, 576)


def _model(name: str):
    m = timm.create_model(name, pretrained=False, num_classes=0).eval()
    if type(m).__name__ == "MobileNetV3":   # pooled 576-d feature of forward_features, as the Backbone does
        for a in ("conv_head", "norm_head", "act2"):
            setattr(m, a, torch.nn.Identity())
    return m


@pytest.mark.parametrize("name,size", [("test_resnet", 64), ("test_efficientnet", 64), ("test_convnext", 64),
                                       ("resnet50", 224), ("convnext_tiny", 224), ("densenet201", 224),
                                       ("swin_tiny_patch4_window7_224", 224), ("mobilenetv3_small_100", 224)])
def test_stagewise_without_refinement_equals_plain_forward(name, size):
    torch.manual_seed(0)
    m = _model(name)
    runner = StageRunner(m)
    x = torch.randn(2, 3, size, size)
    maps = []
    with torch.no_grad():
        ref = m.forward_head(m.forward_features(x), pre_logits=True)
        y = runner.stem(x)
        for i in range(4):
            y = runner.stage(i, y)
            maps.append(y)
        stepped = runner.pool(y)
    assert torch.equal(stepped, ref)
    assert [t.shape[1] for t in maps] == list(runner.channels)
    assert [t.shape[-1] for t in maps] == [size // s for s in (4, 8, 16, 32)]   # NCHW, strides 4..32


def test_stage_widths_known_before_the_first_batch():
    assert StageRunner(_model("mobilenetv3_small_100")).channels == MNV3_SMALL
    assert StageRunner(_model("swin_tiny_patch4_window7_224")).channels == SWIN
    assert StageRunner(_model("resnet50")).channels == (256, 512, 1024, 2048)


def _explicit(q, k, v, axis):
    scores = torch.einsum("bic,bjc->bij", q.double(), k.double())
    m = scores.softmax(dim=2 if axis == "keys" else 1)
    return torch.einsum("bij,bjc->bic", m, v.double()).float()


@pytest.mark.parametrize("axis", ["keys", "queries"])
def test_attention_equals_the_explicit_formula(axis):
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 49, 4), torch.randn(2, 49, 4), torch.randn(2, 49, 32)
    assert torch.allclose(attention(q, k, v, axis), _explicit(q, k, v, axis), atol=1e-5)


def _reference_refine(t, q_conv, k_conv, v_conv, s):
    """T + softmax_j(q_i · k_j) v, written out per position on small tensors."""
    b, c, h, w = t.shape
    q = q_conv(s).flatten(2)[0].T   # (N, c')
    k = k_conv(s).flatten(2)[0].T
    v = v_conv(t).flatten(2)[0].T   # (N, C)
    out = torch.zeros_like(v)
    for i in range(q.shape[0]):
        weights = torch.softmax(torch.stack([q[i] @ k[j] for j in range(k.shape[0])]), 0)
        out[i] = (weights[:, None] * v).sum(0)
    return t + out.T.reshape(1, c, h, w)


def test_blocks_match_a_hand_written_reference_and_refine_the_right_maps():
    torch.manual_seed(2)
    c, d = torch.randn(1, 16, 4, 4), torch.randn(1, 24, 4, 4)
    aab = BLOCK_REGISTRY["aab"](16, 24)
    c2, d2 = aab(c, d)
    assert torch.equal(c2, c)                                  # AAB never refines the clinical map
    ref = _reference_refine(d, aab.qk_clin.q, aab.qk_clin.k, aab.to_derm.v, c)
    assert torch.allclose(d2, ref, atol=1e-5) and not torch.allclose(d2, d)

    bab = BLOCK_REGISTRY["bab"](16, 24)
    c3, d3 = bab(c, d)                                         # BAB changes both maps
    assert torch.allclose(d3, _reference_refine(d, bab.qk_clin.q, bab.qk_clin.k, bab.to_derm.v, c), atol=1e-5)
    assert torch.allclose(c3, _reference_refine(c, bab.qk_derm.q, bab.qk_derm.k, bab.to_clin.v, d), atol=1e-5)

    e = torch.randn(1, 24, 4, 4)
    sca = BLOCK_REGISTRY["sca"](24, 24)
    e2, d4 = sca(e, d)
    assert torch.allclose(d4, _reference_refine(d, sca.qk.q, sca.qk.k, sca.refine.v, e), atol=1e-5)
    assert torch.allclose(e2, _reference_refine(e, sca.qk.q, sca.qk.k, sca.refine.v, d), atol=1e-5)

    sca_self = BLOCK_REGISTRY["sca_self"](24, 24)              # shared convolutions, each map attends to itself
    e3, d5 = sca_self(e, d)
    assert torch.allclose(e3, _reference_refine(e, sca_self.qk.q, sca_self.qk.k, sca_self.refine.v, e), atol=1e-5)
    assert torch.allclose(d5, _reference_refine(d, sca_self.qk.q, sca_self.qk.k, sca_self.refine.v, d), atol=1e-5)
    assert _count("sca_self", SWIN, SWIN) == _count("sca", SWIN, SWIN)   # one set of convolutions, as SCA


def test_zero_init_gamma_starts_as_identity():
    c, d = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    c2, d2 = BLOCK_REGISTRY["bab"](8, 8, gamma="zero_init")(c, d)
    assert torch.equal(c2, c) and torch.equal(d2, d)


def _count(block_name, clin, derm):
    return sum(sum(p.numel() for p in BLOCK_REGISTRY[block_name](a, b).parameters()) for a, b in zip(clin, derm))


def test_block_parameter_counts_match_the_thesis_accounting():
    assert _count("bab", SWIN, SWIN) == 1_962_000            # BAB / CA over Swin-T stages, both modalities
    assert _count("sca", SWIN, SWIN) == 981_000              # SCA: half of CA
    assert _count("aab", SWIN, SWIN) == 981_000              # AAB in SFF
    assert _count("aab", MNV3_SMALL, SWIN) == 868_694        # AAB in AFF (MobileNetV3-Small clinical)
    assert _count("bab", MNV3_SMALL, SWIN) == 1_400_470      # BAB in AFF
