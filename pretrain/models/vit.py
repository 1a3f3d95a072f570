"""VideoViT: a plain ViT over tubelet tokens (VideoMAE's encoder).

Input (the frames, or their differences with ``input_mode="rgb_diff"``) -> tubelet embedding
(Conv3d, default 2x16x16) -> fixed sine-cosine position embedding ->
transformer blocks (timm ``Block`` with fused scaled-dot-product attention, or divided
space-time blocks) -> norm -> pooling head.

Parameter names follow VideoMAE so checkpoints map by name: ``patch_embed.proj``,
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``fc_norm``,
``head`` (VideoMAE splits the qkv bias into ``q_bias``/``v_bias``; its missing k bias is a
zero slice of ``attn.qkv.bias``).

Pooling follows timm: with ``use_mean_pooling`` the pooled feature is ``fc_norm(mean(tokens))``
and the token ``norm`` is skipped; a masked autoencoder builds its encoder with
``fc_norm=False`` so ``norm`` is the pre-decoder norm and no parameter goes unused.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from .attention import Attention, DividedSpaceTimeBlock
from .pos_embed import POS_EMBED_TYPES, build_pos_embed, pos_embed_for_grid
from .pretrained import PretrainedMixin
from .registry import register_model
from .tubelets import ConvPoolEmbed3d, PatchEmbed3d, tubelet_grid

ATTN_TYPES = ("joint", "divided")
INPUT_MODES = ("rgb", "rgb_diff")
RGB_DIFF_SCALE = 4.0
"""``rgb_diff`` multiplies the frame differences by this: a moving edge then has about the
magnitude of a normalised pixel, while static regions are 0."""


def rgb_difference(x: torch.Tensor) -> torch.Tensor:
    """TSN's "RGB difference" input: ``x: (B, C, T, H, W)`` -> ``RGB_DIFF_SCALE * (x[t+1] - x[t])``
    for ``t < T-1``, the last difference repeated once so the clip keeps ``T`` frames (and its
    tubelet grid). A static clip maps to zeros whatever its colours."""
    d = x[:, :, 1:] - x[:, :, :-1]
    return torch.cat([d, d[:, :, -1:]], dim=2) * RGB_DIFF_SCALE


EMBED_INITS = ("default", "temporal_diff")
STEMS = ("linear", "conv_maxpool")
"""``linear``: VideoMAE's tubelet embedding (one Conv3d, kernel = stride = tubelet);
``conv_maxpool``: :class:`~pretrain.models.tubelets.ConvPoolEmbed3d` (3x3x3 filters, BatchNorm,
ReLU, max over each tubelet, linear to the width)."""


@torch.no_grad()
def temporal_difference_init_(weight: torch.Tensor, gain: float = 4.0, share: float = 1.0) -> torch.Tensor:
    """Make the first ``share`` of the output channels of a tubelet embedding ``(D, C, kt, kh, kw)``
    temporal-difference filters: ``w[:, :, t] = (-1)^(t+1) w[:, :, 0]`` (for ``kt = 2``:
    ``w[:, :, 1] = -w[:, :, 0]``, so a static tubelet embeds to 0 and a moving edge does not),
    then scale them by ``gain``. Channels past the share keep their init.

    This is the ``w_{t+1} - w_t`` start that lets a small video ViT learn motion from frames
    (``benchmarks/vit_motion.py``): with a random init its tubelet embedding is dominated by the
    frames' appearance and the model stays at chance on motion-only classes.
    """
    d, _, kt = weight.shape[:3]
    n = max(1, int(round(share * d)))
    w = weight[:n]
    base = w[:, :, :1].clone()
    signs = torch.tensor([(-1.0) ** (t + 1) for t in range(kt)], dtype=w.dtype, device=w.device)
    if kt % 2:                      # odd tubelets: the last frame gets 0 so every filter sums to 0
        signs[-1] = 0.0
    w.copy_(base * signs.view(1, 1, kt, 1, 1) * gain)
    return weight


def _pair(x: Union[int, Sequence[int]]) -> tuple:
    return (int(x), int(x)) if isinstance(x, (int, float)) else tuple(int(v) for v in x)


def init_vit_weights(m: nn.Module) -> None:
    """VideoMAE init: truncated normal (std 0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class VideoViT(nn.Module, PretrainedMixin):
    """Video ViT encoder on ``x: (B, C, T, H, W)`` normalised clips.

    ``forward_features(x, ids_keep=None) -> (B, P + N, D)`` tokens (``P`` prefix tokens, 1 with
    a class token else 0); ``forward(x) -> (B, num_classes)`` or ``(B, D)`` when
    ``num_classes == 0``. ``model_config`` holds the constructor kwargs (JSON-serialisable):
    ``type(m)(**m.model_config)`` rebuilds the same architecture; ``m.save_pretrained(dir)`` /
    ``VideoViT.from_pretrained(dir)`` write and read it with its weights (``model_type``
    ``tubelet_vit``; :mod:`pretrain.models.pretrained`).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16, num_frames: int = 16,
                 tubelet_size: int = 2, in_chans: int = 3, num_classes: int = 0, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, init_values: Optional[float] = None, use_mean_pooling: bool = True,
                 fc_norm: Optional[bool] = None, class_token: Optional[bool] = None, attn_type: str = "joint",
                 pos_embed_type: str = "sincos_1d", grad_checkpointing: bool = False, norm_eps: float = 1e-6,
                 input_mode: str = "rgb", embed_init: str = "default", embed_init_gain: float = 4.0,
                 embed_init_share: float = 1.0, stem: str = "linear", stem_width: int = 16):
        super().__init__()
        self.model_config = dict(
            img_size=list(_pair(img_size)), patch_size=int(patch_size), num_frames=int(num_frames),
            tubelet_size=int(tubelet_size), in_chans=int(in_chans), num_classes=int(num_classes),
            embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads), mlp_ratio=float(mlp_ratio),
            qkv_bias=bool(qkv_bias), drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
            proj_drop_rate=float(proj_drop_rate), drop_path_rate=float(drop_path_rate),
            init_values=None if init_values is None else float(init_values),
            use_mean_pooling=bool(use_mean_pooling), fc_norm=fc_norm, class_token=class_token,
            attn_type=attn_type, pos_embed_type=pos_embed_type, grad_checkpointing=bool(grad_checkpointing),
            norm_eps=float(norm_eps), input_mode=str(input_mode), embed_init=str(embed_init),
            embed_init_gain=float(embed_init_gain), embed_init_share=float(embed_init_share),
            stem=str(stem), stem_width=int(stem_width))
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if stem != "linear" and embed_init != "default":
            raise ValueError(f"embed_init={embed_init!r} initialises the linear tubelet embedding; stem={stem!r} has none")
        if stem_width < 1:
            raise ValueError(f"stem_width must be >= 1, got {stem_width}")
        if embed_init not in EMBED_INITS:
            raise ValueError(f"embed_init must be one of {EMBED_INITS}, got {embed_init!r}")
        if embed_init == "temporal_diff" and tubelet_size < 2:
            raise ValueError("embed_init='temporal_diff' needs tubelet_size >= 2 (a difference across the tubelet's frames)")
        if not 0.0 < embed_init_share <= 1.0:
            raise ValueError(f"embed_init_share must be in (0, 1], got {embed_init_share}")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if input_mode == "rgb_diff" and num_frames < 2:
            raise ValueError("input_mode='rgb_diff' needs num_frames >= 2")
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        if pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {pos_embed_type!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        h, w = _pair(img_size)
        self.tubelet = (int(tubelet_size), int(patch_size), int(patch_size))
        self.grid_size = tubelet_grid((1, in_chans, num_frames, h, w), self.tubelet, "VideoViT config")
        self.num_patches = math.prod(self.grid_size)
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.attn_type = attn_type
        self.input_mode = input_mode
        self.pos_embed_type = pos_embed_type
        self.grad_checkpointing = grad_checkpointing
        self.global_pool = "avg" if use_mean_pooling else "token"
        use_cls = (not use_mean_pooling) if class_token is None else class_token
        use_fc_norm = use_mean_pooling if fc_norm is None else fc_norm
        self.num_prefix_tokens = 1 if use_cls else 0
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = (PatchEmbed3d(self.tubelet, in_chans, embed_dim) if stem == "linear"
                            else ConvPoolEmbed3d(self.tubelet, in_chans, embed_dim, stem_width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls else None
        # fixed, so a non-persistent buffer: rebuilt from the config, never in a state dict
        self.register_buffer("pos_embed", build_pos_embed(pos_embed_type, self.grid_size, embed_dim), persistent=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        if attn_type == "joint":
            make = lambda i: Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                                   attn_drop=attn_drop_rate, init_values=init_values, drop_path=dpr[i],
                                   norm_layer=norm_layer, attn_layer=Attention)
        else:
            make = lambda i: DividedSpaceTimeBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias,
                                                   proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                                                   init_values=init_values, drop_path=dpr[i], norm_layer=norm_layer)
        self.blocks = nn.ModuleList([make(i) for i in range(depth)])
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_vit_weights)
        if stem != "linear":
            self.patch_embed.reset_parameters()
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        if embed_init == "temporal_diff":
            temporal_difference_init_(self.patch_embed.proj.weight, embed_init_gain, embed_init_share)

    # -- timm conventions -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters exempt from weight decay (norms and biases are excluded by ndim anyway)."""
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for ``timm.optim.param_groups_layer_decay``: stem, one per block, final norm."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.model_config["num_classes"] = int(num_classes)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_vit_weights(self.head)

    # -- forward ----------------------------------------------------------------------------
    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The representation the tubelet embedding sees: ``x`` itself (``rgb``) or
        :func:`rgb_difference` (``rgb_diff``). A masked autoencoder reconstructs this, too."""
        return rgb_difference(x) if self.input_mode == "rgb_diff" else x

    def pos_embed_for(self, grid: Sequence[int]) -> torch.Tensor:
        """Position table ``(1, T'H'W', D)`` for a token grid (resampled if not the native one)."""
        return pos_embed_for_grid(self.pos_embed, self.pos_embed_type, self.grid_size, grid)

    def _check_tube_layout(self, ids_keep: torch.Tensor, grid: Sequence[int]) -> None:
        t, s = grid[0], grid[1] * grid[2]
        b, n = ids_keep.shape
        ids = ids_keep.view(b, t, n // t) if n % t == 0 else None
        ok = ids is not None and bool(
            ((ids // s) == torch.arange(t, device=ids.device).view(1, t, 1)).all()
            and ((ids % s) == (ids[:, :1] % s)).all())
        if not ok:
            raise ValueError("attn_type='divided' needs the visible tokens to form a (T', S) grid, i.e. tube "
                             "masking (the same positions visible at every time step, time-major ids_keep); "
                             "random masking is not supported with divided attention")

    def forward_features(self, x: torch.Tensor, ids_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> tokens ``(B, P + n, D)``.

        ``ids_keep: (B, n)`` (optional) embeds and encodes only those tubelets (MAE encoder);
        otherwise all ``N = T'H'W'`` tubelets, time-major.
        """
        grid = tubelet_grid(x.shape, self.tubelet, "VideoViT input")
        pos = self.pos_embed_for(grid)
        x = self.prepare_input(x)
        if ids_keep is None:
            x = self.patch_embed(x) + pos
        else:
            if self.attn_type == "divided" and not torch.compiler.is_compiling():
                self._check_tube_layout(ids_keep, grid)
            x = self.patch_embed(x, ids_keep) + pos[0][ids_keep]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            args = (x,) if self.attn_type == "joint" else (x, grid[0], self.num_prefix_tokens)
            x = checkpoint(blk, *args, use_reentrant=False) if ckpt else blk(*args)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, P + n, D)`` -> pooled ``(B, D)`` (``pre_logits``) or logits ``(B, num_classes)``."""
        x = x[:, self.num_prefix_tokens:].mean(1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, ids_keep: Optional[torch.Tensor] = None,
                return_tokens: bool = False) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> ``(B, num_classes)``, or pooled ``(B, D)`` when ``num_classes == 0``.

        ``return_tokens=True`` returns ``forward_features(x, ids_keep)`` instead; wrappers (the
        MAE) call the encoder this way so that its own parameters (``cls_token``) are used
        inside its call, as hook-based sharding (FSDP, ZeRO-3) expects.
        """
        tokens = self.forward_features(x, ids_keep)
        return tokens if return_tokens else self.forward_head(tokens)


# name -> (embed_dim, depth, num_heads); VideoMAE sizes plus a CPU test size
VIT_SIZES = {
    "test": dict(embed_dim=64, depth=2, num_heads=2),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _vit(size: str, **kwargs) -> VideoViT:
    return VideoViT(**{**VIT_SIZES[size], **kwargs})


@register_model
def vit_test(**kwargs) -> VideoViT:
    """64 wide, 2 deep, 2 heads: for CPU tests."""
    return _vit("test", **kwargs)


@register_model
def vit_tiny(**kwargs) -> VideoViT:
    """ViT-Ti: 192 wide, 12 deep, 3 heads."""
    return _vit("tiny", **kwargs)


@register_model
def vit_small(**kwargs) -> VideoViT:
    """ViT-S: 384 wide, 12 deep, 6 heads."""
    return _vit("small", **kwargs)


@register_model
def vit_base(**kwargs) -> VideoViT:
    """ViT-B: 768 wide, 12 deep, 12 heads."""
    return _vit("base", **kwargs)


@register_model
def vit_large(**kwargs) -> VideoViT:
    """ViT-L: 1024 wide, 24 deep, 16 heads."""
    return _vit("large", **kwargs)


@register_model
def vit_huge(**kwargs) -> VideoViT:
    """ViT-H: 1280 wide, 32 deep, 16 heads."""
    return _vit("huge", **kwargs)
