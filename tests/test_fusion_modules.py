"""Chapter-4 fusion modules: shapes, gradient flow, and their formulas (docs/chapter4.md) on hand-set weights."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from skinlesion.errors import ConfigError
from skinlesion.models.fusion import build_fusion, registered_fusions

# The generic contract is checked for every registered module; the formulas below for the thesis's five.
NAMES = tuple(registered_fusions())
THESIS_MODULES = ("cat", "metablock", "metanet", "mutual_attention", "mmfa")
# (D, metadata width): the chapter-4 backbones against f_M and the raw PAD / ISIC / SPC widths.
SHAPES = [(1280, 81), (1536, 128), (2048, 11), (1024, 59), (1280, 128)]


def expected_out_dim(name: str, d: int, m: int) -> int:
    return {"cat": 256 + m, "metablock": d, "metanet": d, "mutual_attention": 512, "mmfa": d + m}[name]


def test_registry_lists_the_thesis_modules():
    assert set(THESIS_MODULES) <= set(NAMES)


@pytest.mark.parametrize("name", THESIS_MODULES)
@pytest.mark.parametrize("d,m", SHAPES)
def test_thesis_out_dim(name, d, m):
    assert build_fusion(name, d, m).out_dim == expected_out_dim(name, d, m)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d,m", SHAPES)
def test_output_shape_and_out_dim(name, d, m):
    torch.manual_seed(0)
    fusion = build_fusion(name, d, m)
    assert isinstance(fusion.out_dim, int) and fusion.out_dim > 0
    f_img, meta = torch.randn(4, d), torch.randn(4, m)
    assert fusion(f_img, meta).shape == (4, fusion.out_dim)
    fusion.eval()
    assert fusion(f_img[:1], meta[:1]).shape == (1, fusion.out_dim)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_both_inputs(name):
    torch.manual_seed(0)
    fusion = build_fusion(name, 256, 128)
    f_img = torch.randn(6, 256, requires_grad=True)
    meta = torch.randn(6, 128, requires_grad=True)
    (fusion(f_img, meta) * torch.randn(6, fusion.out_dim)).sum().backward()
    assert f_img.grad is not None and f_img.grad.abs().sum() > 0
    assert meta.grad is not None and meta.grad.abs().sum() > 0
    unused = [n for n, p in fusion.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"


def test_unknown_fusion_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="registered"):
        build_fusion("nope", 256, 128)
    with pytest.raises(ConfigError, match="reducr"):
        build_fusion("cat", 256, 128, reducr=0)


# --- CAT ---------------------------------------------------------------------------------------------

def test_cat_reducer_and_plain_concat():
    fusion = build_fusion("cat", 1280, 81)
    layers = list(fusion.reducer)
    assert [type(x) for x in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert layers[0].out_features == 256 and layers[3].p == 0.5
    plain = build_fusion("cat", 1280, 81, reducer=0)
    assert plain.out_dim == 1361 and sum(p.numel() for p in plain.parameters()) == 0
    f_img, meta = torch.randn(3, 1280), torch.randn(3, 81)
    assert torch.equal(plain(f_img, meta), torch.cat([f_img, meta], 1))
    # reduced part first, metadata unchanged at the end
    fusion.eval()
    assert torch.equal(fusion(f_img, meta)[:, 256:], meta)


# --- MetaBlock ---------------------------------------------------------------------------------------

def _set_bn(bn: nn.BatchNorm1d, mean, var, weight, bias):
    bn.eval()
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(mean, dtype=torch.float64))
        bn.running_var.copy_(torch.tensor(var, dtype=torch.float64))
        bn.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        bn.bias.copy_(torch.tensor(bias, dtype=torch.float64))


def _set_linear(lin: nn.Linear, weight, bias):
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(bias, dtype=torch.float64))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("d,k", [(1280, 40), (1536, 48), (2048, 64), (1024, 32)])
def test_metablock_group_count(d, k):
    fusion = build_fusion("metablock", d, 128)
    assert fusion.groups == k and fusion.scale[0].out_features == k and fusion.shift[0].out_features == k


def test_metablock_formula_by_hand():
    fusion = build_fusion("metablock", 64, 3).double().eval()   # k = 2 groups of 32
    _set_linear(fusion.scale[0], [[0.5, 0.0, 0.0], [0.0, 0.0, -1.0]], [0.1, -0.2])
    _set_bn(fusion.scale[1], mean=[0.1, 0.0], var=[4.0, 1.0], weight=[1.0, 2.0], bias=[0.0, 0.5])
    _set_linear(fusion.shift[0], [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [0.0, 0.3])
    _set_bn(fusion.shift[1], mean=[0.0, 0.0], var=[1.0, 1.0], weight=[1.0, 1.0], bias=[0.0, 0.0])
    meta = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    x = torch.linspace(-2, 2, 64, dtype=torch.float64).unsqueeze(0)
    # by hand: W_f m + b_f = [0.6, -2.2] -> BN -> [(0.6-0.1)/2, 2*(-2.2)+0.5] = [0.25, -3.9]
    #          W_g m + b_g = [0.0, 3.3]
    f, g = [0.25, -3.9], [0.0, 3.3]
    expected = [_sigmoid(math.tanh(float(x[0, i * 32 + j]) * f[i]) + g[i]) for i in range(2) for j in range(32)]
    got = fusion(x, meta)[0].tolist()
    assert got == pytest.approx(expected, abs=1e-12)


# --- MetaNet -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("d,c,hidden", [(1280, 20, 40), (1536, 24, 64), (2048, 32, 64), (1024, 16, 64)])
def test_metanet_channels_and_hidden(d, c, hidden):
    fusion = build_fusion("metanet", d, 128)
    assert fusion.channels == c
    assert fusion.gate[0].out_features == hidden and fusion.gate[2].out_features == c


def test_metanet_formula_by_hand():
    fusion = build_fusion("metanet", 128, 2, hidden=3).double().eval()   # c = 2 maps of 8x8
    _set_linear(fusion.gate[0], [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], [0.0, -1.0, 0.0])
    _set_linear(fusion.gate[2], [[1.0, 1.0, 1.0], [0.0, -2.0, 0.5]], [0.0, 0.1])
    meta = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    x = torch.linspace(-1, 1, 128, dtype=torch.float64).unsqueeze(0)
    # hidden = ReLU([2, -0.5, 1.5]) = [2, 0, 1.5]; a = sigmoid([3.5, 0.85])
    a = [_sigmoid(3.5), _sigmoid(0.85)]
    expected = [a[i] * float(x[0, i * 64 + j]) for i in range(2) for j in range(64)]
    assert fusion(x, meta)[0].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name,d", [("metanet", 96), ("metablock", 100), ("metanet", 1000)])
def test_indivisible_width_names_backbone_width(name, d):
    with pytest.raises(ValueError, match=f"D={d}"):
        build_fusion(name, d, 128)


# --- Mutual Attention --------------------------------------------------------------------------------

@pytest.mark.parametrize("d,m", [(1280, 128), (2048, 81), (1024, 11)])
def test_mutual_attention_tokens(d, m):
    fusion = build_fusion("mutual_attention", d, m)
    t_img, t_meta = fusion.tokenize(torch.randn(2, d), torch.randn(2, m))
    assert t_img.shape == (2, 8, 256) and t_meta.shape == (2, 8, 256)
    assert fusion.tok_img.proj.in_features == d // 8
    assert fusion.tok_meta.proj.in_features == math.ceil(m / 8)
    assert fusion.img_stream.attn.num_heads == 8
    assert fusion.img_stream.ffn[0].out_features == 512


def test_mutual_attention_sizes_selectable():
    fusion = build_fusion("mutual_attention", 256, 128, tokens=4, width=64, heads=4)
    t_img, t_meta = fusion.tokenize(torch.randn(3, 256), torch.randn(3, 128))
    assert t_img.shape == (3, 4, 64) and t_meta.shape == (3, 4, 64)
    assert fusion.out_dim == 128 and fusion(torch.randn(3, 256), torch.randn(3, 128)).shape == (3, 128)
    with pytest.raises(ValueError, match="tokens"):
        build_fusion("mutual_attention", 256, 128, tokens=1)


def test_mutual_attention_streams_are_cross_modal():
    torch.manual_seed(0)
    fusion = build_fusion("mutual_attention", 64, 16, width=32, heads=4).eval()
    f_img, meta = torch.randn(2, 64), torch.randn(2, 16)
    out = fusion(f_img, meta)
    # The image half changes when only the metadata changes (image tokens attend to metadata tokens).
    out2 = fusion(f_img, meta + 1.0)
    assert not torch.allclose(out[:, :32], out2[:, :32])


# --- MMFA --------------------------------------------------------------------------------------------

def _bn_eval(x, bn):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def _mmfa_reference(fusion, f_img, meta, op):
    """Eqs. 4.6–4.10 written out with explicit loops (eval-mode BN)."""
    lin_i, bn_i = fusion.qkv_img
    lin_m, bn_m = fusion.qkv_meta
    qkv_i = _bn_eval(f_img @ lin_i.weight.T + lin_i.bias, bn_i)
    qkv_m = _bn_eval(meta @ lin_m.weight.T + lin_m.bias, bn_m)
    di, dm = fusion.d_img, fusion.d_meta
    q = torch.cat([qkv_m[:, :dm], qkv_i[:, :di]], 1)                      # metadata first (Eq. 4.8)
    k = torch.cat([qkv_m[:, dm:2 * dm], qkv_i[:, di:2 * di]], 1)
    v = torch.cat([qkv_m[:, 2 * dm:], qkv_i[:, 2 * di:]], 1)
    h, s = fusion.heads, fusion.head_dim
    heads = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for i in range(h):
            sl = slice(i * s, (i + 1) * s)
            qi, ki, vi = q[b, sl], k[b, sl], v[b, sl]
            if op == "outer":
                for a in range(s):
                    scores = torch.stack([qi[a] * ki[c] / math.sqrt(s) for c in range(s)])
                    w = torch.exp(scores - scores.max())
                    w = w / w.sum()
                    heads[b, i * s + a] = sum(w[c] * vi[c] for c in range(s))
            else:
                scores = qi * ki / math.sqrt(s)
                w = torch.exp(scores - scores.max())
                heads[b, sl] = w / w.sum() * vi
    lin_o, bn_o = fusion.proj
    return _bn_eval(heads @ lin_o.weight.T + lin_o.bias, bn_o) + torch.cat([f_img, meta], 1)


def _randomise_bn(module, gen):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm1d):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=gen, dtype=torch.float64))
                bn.running_var.copy_(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)
                bn.weight.copy_(torch.randn(n, generator=gen, dtype=torch.float64))
                bn.bias.copy_(torch.randn(n, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("op", ["outer", "gate"])
def test_mmfa_matches_explicit_equations(op):
    gen = torch.Generator().manual_seed(1)
    # d_meta = 2, d_img = 6, 2 heads of 4: head 0 mixes metadata and image entries, which tests the order.
    fusion = build_fusion("mmfa", 7, 5, d_img=6, d_meta=2, heads=2, op=op).double().eval()
    _randomise_bn(fusion, gen)
    f_img = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    meta = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    expected = _mmfa_reference(fusion, f_img, meta, op)
    assert torch.allclose(fusion(f_img, meta), expected, atol=1e-10)


def test_mmfa_default_sizes():
    fusion = build_fusion("mmfa", 1280, 128)
    assert fusion.op == "outer" and fusion.heads == 8 and fusion.head_dim == 32
    assert fusion.qkv_img[0].out_features == 384 and fusion.qkv_meta[0].out_features == 384
    assert fusion.proj[0].in_features == 256 and fusion.proj[0].out_features == 1408
    # Linear(D->384)+BN, Linear(128->384)+BN, Linear(256->D+128)+BN
    expected = (1280 * 384 + 384 + 768) + (128 * 384 + 384 + 768) + (256 * 1408 + 1408 + 2 * 1408)
    assert sum(p.numel() for p in fusion.parameters()) == expected
    with pytest.raises(ValueError, match="op"):
        build_fusion("mmfa", 1280, 128, op="dot")
    with pytest.raises(ValueError, match="heads"):
        build_fusion("mmfa", 1280, 128, heads=7)


def test_mmfa_ops_differ():
    torch.manual_seed(0)
    outer = build_fusion("mmfa", 64, 16, op="outer").eval()
    gate = build_fusion("mmfa", 64, 16, op="gate").eval()
    gate.load_state_dict(outer.state_dict())
    f_img, meta = torch.randn(2, 64), torch.randn(2, 16)
    assert not torch.allclose(outer(f_img, meta), gate(f_img, meta))
