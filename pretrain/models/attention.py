"""Attention layers and blocks for the video transformers.

- :class:`Attention`: timm's ``Attention`` (same parameters and names, fused
  scaled-dot-product attention) with two changes: q, k, v are split along the qkv axis, so
  the backward writes their gradients straight into the qkv layout (timm's head-first permute
  costs one extra copy of that gradient per block), and an optional ``n_query`` computes
  outputs for the last ``n_query`` tokens only (keys and values still come from all tokens).
- :func:`block_forward_tail`: run a timm ``Block`` built with this attention for its last
  ``n_out`` tokens only. A decoder's last block only needs the rows that are read out, so
  this skips the other rows' attention, projection and MLP.
- :class:`DividedSpaceTimeBlock`: TimeSformer's divided attention. Temporal attention among the
  tokens at one spatial position, then spatial attention within one time step, then the MLP.
  Tokens must form a regular ``(T', S)`` grid, time-major; prefix (class) tokens join every
  time step's spatial attention and keep the mean of their per-step outputs (TimeSformer).
"""

from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.vision_transformer import Block


class Attention(TimmAttention):
    """Multi-head self-attention; ``x: (B, N, D) -> (B, N, D)``, or ``(B, n_query, D)`` (last rows)."""

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                n_query: Optional[int] = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)   # (B, N, H, hd) views
        if n_query is not None:
            q = q[:, n - n_query:]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop.p if self.training else 0.0
        if self.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal)
        else:   # timm's exportable mode (e.g. ONNX)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                attn = attn + attn_mask
            o = self.attn_drop(attn.softmax(dim=-1)) @ v
        o = self.norm(o.transpose(1, 2).reshape(b, q.shape[2], self.attn_dim))
        if getattr(self, "gate", None) is not None:
            o = o * self.gate(x if n_query is None else x[:, n - n_query:]).sigmoid()
        return self.proj_drop(self.proj(o))


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: temporal attention, spatial attention, MLP (each with a residual)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, init_values: Optional[float] = None,
                 drop_path: float = 0.0, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.temporal_norm = norm_layer(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.temporal_ls = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_frames: int, num_prefix: int = 0) -> torch.Tensor:
        """``x: (B, P + T' * S, D)`` with patch tokens time-major -> same shape."""
        b, n, d = x.shape
        p, t = num_prefix, num_frames
        prefix, tokens = x[:, :p], x[:, p:]
        s = (n - p) // t
        if s * t != n - p:
            raise ValueError(f"divided attention: {n - p} tokens do not form a grid of {t} time steps")
        # temporal: sequences of length T' at each spatial position
        xt = tokens.reshape(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        xt = xt + self.drop_path(self.temporal_ls(self.temporal_attn(self.temporal_norm(xt))))
        tokens = xt.view(b, s, t, d).transpose(1, 2).reshape(b * t, s, d)
        # spatial: sequences of length S (plus the prefix tokens) within each time step
        xs = torch.cat([prefix.repeat_interleave(t, dim=0), tokens], dim=1) if p else tokens
        ys = self.attn(self.norm1(xs))
        tokens = tokens.reshape(b, t * s, d)
        res = ys[:, p:].reshape(b, t * s, d)
        if p:
            tokens = torch.cat([prefix, tokens], dim=1)
            res = torch.cat([ys[:, :p].reshape(b, t, p, d).mean(1), res], dim=1)
        x = tokens + self.drop_path(self.ls1(res))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def block_forward_tail(block: Block, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """``block(x)[:, -n_out:]`` for a timm ``Block`` without computing the other rows.

    ``x: (B, N, D)`` -> ``(B, n_out, D)``. Needs the block's attention to be :class:`Attention`
    (else it falls back to the full block). Every submodule is entered through its own call,
    as hook-based sharding (FSDP, ZeRO-3) expects.
    """
    if not isinstance(block.attn, Attention):
        return block(x)[:, -n_out:]
    o = block.attn(block.norm1(x), n_query=n_out)
    xt = x[:, x.shape[1] - n_out:] + block.drop_path1(block.ls1(o))
    return xt + block.drop_path2(block.ls2(block.mlp(block.norm2(xt))))
