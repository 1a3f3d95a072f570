"""Video Transformer Network (Neimark et al., "Video Transformer Network", ICCVW 2021).

VTN = a 2D spatial backbone applied to every frame independently, then a *temporal* transformer
over the sequence of frame embeddings with a classification token, then an MLP head:

    video (B, 3, T, H, W) --2D CNN per frame--> (B, T, F) --linear--> (B, T, D) + pos(t)
        --> [cls ; frames] --> temporal transformer (timm Blocks) --> cls --> MLP head --> (B, C)

Differences from the paper, which targets long videos at full size: the paper's temporal encoder
is a Longformer (sliding-window attention, window 32) -- for clips of at most a few dozen frames
that is full attention, so plain timm ``Block`` s are used; the spatial backbone is the zoo's
shared small-input 2D CNN (:func:`~finetune.baselines.frame2d.make_backbone2d`, quarter-width
ResNet-18 by default; any timm model name works) instead of an ImageNet ViT-B / ResNet-50. The
learned temporal position embedding starts from a 1D sin-cos table (so that frame order matters
from the first step), the cls token from ``trunc_normal(0.02)``, linear layers xavier-uniform; the head is the paper's
``Linear -> GELU -> Dropout -> Linear`` on the normalised cls token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Block

from .frame2d import FrameFeatures, make_backbone2d
from .registry import check_video, register_baseline


def _sincos(n: int, dim: int) -> torch.Tensor:
    """(n, dim) 1D sin-cos position table."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(1, half))
    table = torch.zeros(n, dim)
    table[:, :half] = torch.sin(pos * freq)
    table[:, half:2 * half] = torch.cos(pos * freq)
    return table


class VTN(FrameFeatures):
    """2D backbone per frame + temporal transformer with a cls token (see the module docstring).

    ``forward(video: (B, 3, T, H, W)) -> (B, num_classes)`` for any ``T <= max_frames``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, max_frames: int, embed_dim: int = 64,
                 depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__(backbone)
        if embed_dim % num_heads:
            raise ValueError(f"vtn: embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.max_frames = max_frames
        self.proj = nn.Linear(self.num_features, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(_sincos(max_frames + 1, embed_dim).unsqueeze(0))  # slot 0: cls
        dpr = [float(x) for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=drop_rate,
                                            drop_path=dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = Mlp(embed_dim, embed_dim, num_classes, act_layer=nn.GELU, drop=(drop_rate, 0.0))
        trunc_normal_(self.cls_token, std=0.02)
        for m in [self.proj, *self.blocks.modules(), *self.head.modules()]:
            if isinstance(m, nn.Linear):  # xavier as in (Video)MAE's ViTs: frame features matter at init
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, "vtn")
        t = video.shape[2]
        if t > self.max_frames:
            raise ValueError(f"vtn: built for at most {self.max_frames} frames but video has T={t}; "
                             f"rebuild with num_frames={t} (data.num_frames must match)")
        x = self.proj(self.frame_features(video))                                # (B, T, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed[:, : t + 1]               # (B, 1+T, D)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_baseline("vtn", family="transformer", order_aware=True,
                   reference="Neimark et al., Video Transformer Network, ICCV Workshops 2021",
                   description="2D CNN per frame, then a temporal transformer over frame features with a cls token")
def vtn(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None, stem="auto",
        embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
        backbone_drop_path_rate=0.0, max_frames=None):
    bb = make_backbone2d(backbone, in_chans=3, img_size=img_size, width=width, stem=stem,
                         drop_path_rate=backbone_drop_path_rate)
    return VTN(bb, num_classes, max_frames or num_frames, embed_dim, depth, num_heads, mlp_ratio, drop_rate,
               drop_path_rate)
