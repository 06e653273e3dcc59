"""Mutual Attention (Cai et al., The Visual Computer 2023) on pooled feature vectors.

No public code exists. Each modality's vector is cut into ``tokens`` chunks, each chunk projected to ``width``
by a modality-specific shared Linear plus a learned position embedding; then two parallel cross-attention
streams (image queries metadata, metadata queries image), each post-norm with an FFN; the two token sets are
mean-pooled and concatenated. Several tokens per modality are needed: with one key token softmax is always 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from skinlesion.models.fusion import register_fusion


class _Tokenizer(nn.Module):
    """(B, dim) -> (B, tokens, width). A width not divisible by ``tokens`` is zero-padded at the end
    (an extension for raw/odd metadata widths; the thesis widths 128 and D/8 need no padding)."""

    def __init__(self, dim: int, tokens: int, width: int):
        super().__init__()
        self.tokens = tokens
        self.chunk = math.ceil(dim / tokens)
        self.pad = self.chunk * tokens - dim
        self.proj = nn.Linear(self.chunk, width)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, self.pad))
        return self.proj(x.reshape(x.shape[0], self.tokens, self.chunk)) + self.pos


class _CrossStream(nn.Module):
    """T' = LN(T + MHA(q=T, kv=other)); T'' = LN(T' + FFN(T'))."""

    def __init__(self, width: int, heads: int, ffn_hidden: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_hidden, width), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        t = self.norm1(tokens + self.attn(tokens, other, other, need_weights=False)[0])
        return self.norm2(t + self.ffn(t))


@register_fusion("mutual_attention")
class MutualAttention(nn.Module):
    def __init__(self, img_dim: int, meta_dim: int, tokens: int = 8, width: int = 256, heads: int = 8,
                 ffn_hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        if tokens < 2:
            raise ValueError(f"Mutual Attention needs at least 2 tokens per modality, got tokens={tokens}")
        if width % heads:
            raise ValueError(f"Mutual Attention token width {width} must be divisible by heads={heads}")
        self.tok_img = _Tokenizer(img_dim, tokens, width)
        self.tok_meta = _Tokenizer(meta_dim, tokens, width)
        self.img_stream = _CrossStream(width, heads, ffn_hidden, dropout)
        self.meta_stream = _CrossStream(width, heads, ffn_hidden, dropout)
        self.out_dim = 2 * width

    def tokenize(self, f_img: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tok_img(f_img), self.tok_meta(m)

    def forward(self, f_img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        t_img, t_meta = self.tokenize(f_img, m)
        # Both streams attend to the other modality's original tokens (parallel, not sequential).
        out_img = self.img_stream(t_img, t_meta)
        out_meta = self.meta_stream(t_meta, t_img)
        return torch.cat([out_img.mean(dim=1), out_meta.mean(dim=1)], dim=1)
