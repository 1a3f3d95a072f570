"""MViTv2 video encoder assembled from torchvision's building blocks.

torchvision ships the MViTv2 pieces (``MultiscaleBlock`` with pooling attention, decomposed
relative position bias and residual pooling; ``PositionalEncoding`` for the class token) and
the S configuration; this module builds any stage layout from ``depths`` the way the MViTv2
paper (Table 1) and SlowFast do: channels and heads double and queries pool 2x spatially at the
first block of every later stage, key/value strides start at ``(1, 8, 8)`` and shrink with the
resolution. S = ``(1, 2, 11, 2)``, B = ``(2, 3, 16, 3)``, both 96 wide with 1 head.

Module names match ``torchvision.models.video.mvit_v2_s`` (``conv_proj``, ``pos_encoding``,
``blocks``, ``norm``; the head is ``head`` instead of ``head.1``), so torchvision weights load
by name.

Interface as :class:`~pretrain.models.vit.VideoViT`: ``forward_features(x) -> (B, 1 + N, D)``
(class token first), ``forward(x) -> (B, D)`` or logits. MaskFeat uses the two halves
``embed(x) -> (tokens, thw)`` and ``forward_tokens(tokens, thw)`` to put mask tokens in between.
"""

from __future__ import annotations

import math
from functools import partial
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.video.mvit import MSBlockConfig, MultiscaleBlock, PositionalEncoding

from .pretrained import PretrainedMixin
from .registry import register_model
from .vit import _pair


def mvit_block_settings(depths: Sequence[int], embed_dim: int = 96, num_heads: int = 1,
                        kernel: Sequence[int] = (3, 3, 3), kv_stride: Sequence[int] = (1, 8, 8)) -> List[MSBlockConfig]:
    """Per-block configuration for an MViTv2 with ``depths[s]`` blocks in stage ``s``.

    ``mvit_block_settings((1, 2, 11, 2))`` reproduces torchvision's ``mvit_v2_s`` exactly.
    """
    settings, stage_starts = [], {sum(depths[:s]) for s in range(1, len(depths))}
    stage = 0
    for i in range(sum(depths)):
        first = i in stage_starts
        stage += first
        dim_out, heads = embed_dim * 2 ** stage, num_heads * 2 ** stage
        dim_in = embed_dim * 2 ** (stage - 1) if first else dim_out
        kv = [kv_stride[0]] + [max(1, s // 2 ** stage) for s in kv_stride[1:]]
        settings.append(MSBlockConfig(num_heads=heads, input_channels=dim_in, output_channels=dim_out,
                                      kernel_q=list(kernel), kernel_kv=list(kernel),
                                      stride_q=[1, 2, 2] if first else [1, 1, 1], stride_kv=kv))
    return settings


class MViT(nn.Module, PretrainedMixin):
    """MViTv2 encoder on ``x: (B, C, T, H, W)``; output stride ``patch_stride * 2^(stages-1)`` in space.

    ``save_pretrained(dir)`` / ``MViT.from_pretrained(dir)`` as VideoViT's (``model_type``
    ``tubelet_mvitv2``; :mod:`pretrain.models.pretrained`)."""

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, num_frames: int = 16, in_chans: int = 3,
                 num_classes: int = 0, embed_dim: int = 96, num_heads: int = 1, depths: Sequence[int] = (1, 2, 11, 2),
                 patch_kernel: Sequence[int] = (3, 7, 7), patch_stride: Sequence[int] = (2, 4, 4),
                 patch_padding: Sequence[int] = (1, 3, 3), drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, use_mean_pooling: bool = False, grad_checkpointing: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.model_config = dict(
            img_size=list(_pair(img_size)), num_frames=int(num_frames), in_chans=int(in_chans),
            num_classes=int(num_classes), embed_dim=int(embed_dim), num_heads=int(num_heads),
            depths=[int(d) for d in depths], patch_kernel=list(patch_kernel), patch_stride=list(patch_stride),
            patch_padding=list(patch_padding), drop_path_rate=float(drop_path_rate), drop_rate=float(drop_rate),
            attn_drop_rate=float(attn_drop_rate), use_mean_pooling=bool(use_mean_pooling),
            grad_checkpointing=bool(grad_checkpointing), norm_eps=float(norm_eps))
        h, w = _pair(img_size)
        self.patch_stride = tuple(patch_stride)
        self.grid_size = (num_frames // patch_stride[0], h // patch_stride[1], w // patch_stride[2])
        if min(self.grid_size) < 1:
            raise ValueError(f"MViT: clip {num_frames}x{h}x{w} is smaller than the patch stride {tuple(patch_stride)}")
        settings = mvit_block_settings(depths, embed_dim, num_heads)
        self.q_strides = [tuple(c.stride_q) for c in settings]
        self.embed_dim = embed_dim
        self.num_features = settings[-1].output_channels
        self.num_classes = num_classes
        self.num_prefix_tokens = 1
        self.global_pool = "avg" if use_mean_pooling else "token"
        self.grad_checkpointing = grad_checkpointing
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.conv_proj = nn.Conv3d(in_chans, embed_dim, tuple(patch_kernel), tuple(patch_stride), tuple(patch_padding))
        self.pos_encoding = PositionalEncoding(embed_dim, self.grid_size[1:], self.grid_size[0], rel_pos_embed=True)
        size = list(self.grid_size)
        self.blocks = nn.ModuleList()
        for i, cnf in enumerate(settings):
            sd = drop_path_rate * i / max(1, len(settings) - 1)
            self.blocks.append(MultiscaleBlock(input_size=size, cnf=cnf, residual_pool=True,
                                               residual_with_cls_embed=False, rel_pos_embed=True,
                                               proj_after_attn=True, dropout=attn_drop_rate,
                                               stochastic_depth_prob=sd, norm_layer=norm_layer))
            size = [s // q for s, q in zip(size, cnf.stride_q)]
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's MViT init: truncated normal linears / position parameters, unit norms
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_encoding.class_token, std=0.02)

    # -- timm conventions -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Class token and relative position tables (exact parameter names)."""
        names = {"pos_encoding.class_token"}
        for i in range(len(self.blocks)):
            names |= {f"blocks.{i}.attn.rel_pos_{a}" for a in "hwt"}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv_proj|^pos_encoding", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.model_config["num_classes"] = int(num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # -- forward ----------------------------------------------------------------------------
    def output_grid(self, thw: Sequence[int]) -> Tuple[int, int, int]:
        """Token grid after all blocks for a patch grid ``thw`` (pooling rounds up)."""
        t, h, w = thw
        for st, sh, sw in self.q_strides:
            t, h, w = math.ceil(t / st), math.ceil(h / sh), math.ceil(w / sw)
        return t, h, w

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """``x: (B, C, T, H, W)`` -> patch tokens ``(B, T'H'W', C0)`` and their grid ``(T', H', W')``."""
        if x.dim() != 5:
            raise ValueError(f"MViT input: expected a (B, C, T, H, W) video, got shape {tuple(x.shape)}")
        x = self.conv_proj(x)
        thw = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), thw

    def forward_tokens(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
        """Patch tokens ``(B, N, C0)`` on grid ``thw`` -> normalised ``(B, 1 + N_out, D)``."""
        x = self.pos_encoding(x)
        thw = tuple(thw)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x, thw = checkpoint(blk, x, thw, use_reentrant=False) if ckpt else blk(x, thw)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> tokens ``(B, 1 + N_out, D)``, class token first."""
        return self.forward_tokens(*self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> ``(B, num_classes)``, or pooled ``(B, D)`` when ``num_classes == 0``."""
        return self.forward_head(self.forward_features(x))


MVIT_SIZES = {
    "test": dict(embed_dim=16, num_heads=1, depths=(1, 1, 1, 1)),
    "s": dict(embed_dim=96, num_heads=1, depths=(1, 2, 11, 2)),
    "b": dict(embed_dim=96, num_heads=1, depths=(2, 3, 16, 3)),
}


@register_model
def mvitv2_test(**kwargs) -> MViT:
    """4 one-block stages, 16 wide: for CPU tests."""
    return MViT(**{**MVIT_SIZES["test"], **kwargs})


@register_model
def mvitv2_s(**kwargs) -> MViT:
    """MViTv2-S: 16 blocks in stages (1, 2, 11, 2), 96 -> 768 wide."""
    return MViT(**{**MVIT_SIZES["s"], **kwargs})


@register_model
def mvitv2_b(**kwargs) -> MViT:
    """MViTv2-B: 24 blocks in stages (2, 3, 16, 3), 96 -> 768 wide."""
    return MViT(**{**MVIT_SIZES["b"], **kwargs})
