"""Factorized space-time attention transformers: TimeSformer (divided attention) and ViViT (factorized encoder).

Joint attention over all ``T·N`` tokens costs ``(T·N)²``; both models factorize it, attending over
space and over time separately:

- TimeSformer (Bertasius et al., ICML 2021), *divided space-time attention*: inside every block,
  each patch first attends to the same spatial position in the other frames (temporal attention,
  ``T`` tokens), then to the other patches of its own frame (spatial attention, ``1+N`` tokens with
  a per-frame copy of the cls token, averaged back), then the MLP. Built from timm's ``Attention``,
  ``Mlp``, ``DropPath`` and ``LayerNorm`` in the order of timm's ``Block``.
- ViViT model 2 (Arnab et al., ICCV 2021), *factorized encoder*: tubelet embedding, a spatial
  transformer (timm ``Block`` s) per temporal index → one cls token per time step → a temporal
  transformer over those → cls → head. Space and time never mix before the temporal encoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath, LayerNorm, Mlp, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from .registry import check_video, register_baseline


def _init_vit(m: nn.Module) -> None:
    """timm ViT init: truncated normal(0.02) linears, zero biases; LayerNorm keeps (1, 0)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _check_divisible(who: str, num_frames: int, img_size: int, patch: int, tubelet: int = 1) -> None:
    if img_size % patch:
        raise ValueError(f"{who}: img_size={img_size} must be divisible by patch_size={patch}")
    if num_frames % tubelet:
        raise ValueError(f"{who}: num_frames={num_frames} must be divisible by tubelet_size={tubelet}")


class DividedBlock(nn.Module):
    """TimeSformer block: temporal attn → spatial attn → MLP, each pre-norm with a residual.

    ``x: (B, 1 + T·N, D)`` with tokens ordered ``[cls, frame 0 patches, frame 1 patches, …]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, proj_drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.norm_t = LayerNorm(dim)
        self.attn_t = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm_s = LayerNorm(dim)
        self.attn_s = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, _, d = x.shape
        t = num_frames
        cls, p = x[:, :1], x[:, 1:]
        n = p.shape[1] // t
        # temporal: (B, T, N, D) -> (B·N, T, D), every patch position attends across frames
        pt = p.reshape(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
        pt = self.temporal_fc(self.attn_t(self.norm_t(pt)))
        p = p + self.drop_path(pt.reshape(b, n, t, d).transpose(1, 2).reshape(b, t * n, d))
        # spatial: (B·T, 1 + N, D), each frame with its own copy of cls; the copies are averaged back
        ps = torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d), p.reshape(b * t, n, d)], 1)
        s = self.attn_s(self.norm_s(ps))
        cls = cls + self.drop_path(s[:, :1].reshape(b, t, d).mean(1, keepdim=True))
        p = p + self.drop_path(s[:, 1:].reshape(b, t * n, d))
        x = torch.cat([cls, p], 1)
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class TimeSformer(nn.Module):
    """TimeSformer with divided space-time attention. ``video: (B, 3, T, H, W) -> (B, num_classes)``.

    Per-frame ``patch_size``² patch embedding, learned spatial (with cls) and temporal position
    embeddings. ``temporal_fc`` is zero-initialised in every block but the first (as the reference
    implementation), so the net starts close to a per-frame image transformer and learns how much
    temporal mixing to add; block 0 keeps it order-aware from the start.
    """

    def __init__(self, num_classes: int, num_frames: int, img_size: int, patch_size: int = 8,
                 embed_dim: int = 96, depth: int = 4, num_heads: int = 3, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        _check_divisible("timesformer", num_frames, img_size, patch_size)
        self.num_frames = num_frames
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, 1, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([DividedBlock(embed_dim, num_heads, mlp_ratio, drop_path=dpr[i],
                                                  proj_drop=drop_rate) for i in range(depth)])
        self.norm = LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        for p in (self.cls_token, self.pos_embed, self.time_embed):
            trunc_normal_(p, std=0.02)
        self.apply(_init_vit)
        for blk in self.blocks[1:]:
            nn.init.zeros_(blk.temporal_fc.weight)
            nn.init.zeros_(blk.temporal_fc.bias)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, 1 + T·N, D)`` normed tokens, cls first."""
        check_video(video, "timesformer", self.num_frames)
        b, _, t = video.shape[:3]
        x = self.patch_embed(video.transpose(1, 2).flatten(0, 1))            # (B·T, N, D)
        x = x.reshape(b, t, x.shape[1], -1) + self.pos_embed[:, None, 1:] + self.time_embed
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x.flatten(1, 2)], 1)
        for blk in self.blocks:
            x = blk(x, t)
        return self.norm(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(video)[:, 0]))


class ViViTFactorized(nn.Module):
    """ViViT factorized encoder. ``video: (B, 3, T, H, W) -> (B, num_classes)``.

    Tubelet embedding ``tubelet_size × patch_size²`` gives ``T' = T / tubelet_size`` time steps of
    ``N`` tokens; ``spatial_depth`` timm Blocks per time step → per-step cls → ``temporal_depth``
    Blocks over ``[cls, T' steps]`` → cls → head.
    """

    def __init__(self, num_classes: int, num_frames: int, img_size: int, patch_size: int = 8,
                 tubelet_size: int = 2, embed_dim: int = 96, spatial_depth: int = 4, temporal_depth: int = 2,
                 num_heads: int = 3, mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        _check_divisible("vivit", num_frames, img_size, patch_size, tubelet_size)
        self.num_frames = num_frames
        k = (tubelet_size, patch_size, patch_size)
        self.tubelet_embed = nn.Conv3d(3, embed_dim, k, stride=k)
        n, t = (img_size // patch_size) ** 2, num_frames // tubelet_size
        self.spatial_cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.spatial_pos = nn.Parameter(torch.zeros(1, 1 + n, embed_dim))
        self.temporal_cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, 1 + t, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, spatial_depth + temporal_depth).tolist()
        blocks = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=drop_rate, drop_path=r)
                  for r in dpr]
        self.spatial_blocks = nn.Sequential(*blocks[:spatial_depth])
        self.spatial_norm = LayerNorm(embed_dim)
        self.temporal_blocks = nn.Sequential(*blocks[spatial_depth:])
        self.temporal_norm = LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        for p in (self.spatial_cls, self.spatial_pos, self.temporal_cls, self.temporal_pos):
            trunc_normal_(p, std=0.02)
        self.apply(_init_vit)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, 1 + T', D)`` normed temporal tokens, cls first."""
        check_video(video, "vivit", self.num_frames)
        b = video.shape[0]
        x = self.tubelet_embed(video)                                        # (B, D, T', h, w)
        t = x.shape[2]
        x = x.flatten(3).permute(0, 2, 3, 1).flatten(0, 1)                   # (B·T', N, D)
        x = torch.cat([self.spatial_cls.expand(x.shape[0], -1, -1), x], 1) + self.spatial_pos
        x = self.spatial_norm(self.spatial_blocks(x))[:, 0].reshape(b, t, -1)  # per-step cls (B, T', D)
        x = torch.cat([self.temporal_cls.expand(b, -1, -1), x], 1) + self.temporal_pos
        return self.temporal_norm(self.temporal_blocks(x))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(video)[:, 0]))


@register_baseline("timesformer", family="transformer", order_aware=True,
                   reference="Bertasius et al., Is Space-Time Attention All You Need for Video "
                             "Understanding?, ICML 2021",
                   description="TimeSformer, divided space-time attention (temporal then spatial per block)")
def timesformer(num_classes=10, num_frames=16, img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3,
                mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1):
    return TimeSformer(num_classes, num_frames, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                       drop_rate, drop_path_rate)


@register_baseline("vivit", family="transformer", order_aware=True,
                   reference="Arnab et al., ViViT: A Video Vision Transformer, ICCV 2021 (model 2)",
                   description="ViViT factorized encoder: spatial transformer per step, then temporal transformer")
def vivit(num_classes=10, num_frames=16, img_size=32, patch_size=8, tubelet_size=2, embed_dim=96,
          spatial_depth=4, temporal_depth=2, num_heads=3, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1):
    return ViViTFactorized(num_classes, num_frames, img_size, patch_size, tubelet_size, embed_dim, spatial_depth,
                           temporal_depth, num_heads, mlp_ratio, drop_rate, drop_path_rate)
