"""2D-CNN video baselines of Karpathy et al. (CVPR 2014): single-frame, late fusion (3 poolings), early fusion.

All share one timm 2D backbone builder, :func:`make_backbone2d` (``pretrained=False`` always). The
default backbone is timm's ResNet-18 narrowed to a quarter width (channels 16-32-64-128, ~0.7 M
params) with a small-input stem (one 3×3 conv of stride 2, no max-pool; stride 1 below 32 px): a
32×32 frame ends on a 2×2 map and a 64×64 frame on 4×4, instead of timm's 1×1 and 2×2 (the
ImageNet stem divides by 4 before the first block). 2D work is paid once per frame (T× per clip),
so the stem is kept cheap.

Why ``single_frame`` and ``late_fusion_avg`` are different models although their *test-time* maths
is nearly the same: ``late_fusion_avg`` = linear head on mean-pooled per-frame features, and since
the head is linear, ``W·mean_t(f_t) + b = mean_t(W·f_t + b)`` — it *is* the average of single-frame
logits (tested). What differs is training: the single-frame CNN is trained on independent frames
(Karpathy et al.'s single-frame model: an image CNN on independent frames) and only averages its
scores at test time; late fusion puts the loss on the fused clip score.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.resnet import ResNet

from .registry import check_video, register_baseline

_RESNET_CHANNELS = (64, 128, 256, 512)


def make_backbone2d(name: str = "resnet18", in_chans: int = 3, img_size: int = 32,
                    width: float | None = None, stem: str = "auto", **timm_kw) -> nn.Module:
    """A timm 2D CNN without classifier: ``(N, in_chans, H, W) -> (N, num_features)``.

    Args:
        name: any timm model name (``pretrained=False`` always; nothing is downloaded).
        width: channel multiplier, timm ResNets only (default 0.25 for them).
        stem: ``"auto"`` (``"small"`` below 112 px, else ``"timm"``), ``"small"`` (3×3 conv, stride 2
            from 32 px up and 1 below, no max-pool; ResNets only) or ``"timm"`` (unchanged).
        timm_kw: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    if stem not in ("auto", "small", "timm"):
        raise ValueError(f"stem must be 'auto', 'small' or 'timm', got {stem!r}")
    is_resnet = name.startswith(("resnet", "resnext")) and "v2" not in name
    if width is not None and not is_resnet:
        raise ValueError(f"backbone {name!r}: width= is only supported for timm ResNets")
    if is_resnet:
        w = 0.25 if width is None else width
        if w <= 0:
            raise ValueError(f"backbone width must be > 0, got {w}")
        timm_kw.setdefault("channels", tuple(max(8, round(c * w)) for c in _RESNET_CHANNELS))
        timm_kw.setdefault("stem_width", max(8, round(64 * w)))
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **timm_kw)
    plain_stem = isinstance(model, ResNet) and isinstance(model.conv1, nn.Conv2d)
    if stem == "auto":
        stem = "small" if (img_size < 112 and plain_stem) else "timm"
    if stem == "small":
        if not plain_stem:
            raise ValueError(f"stem='small' needs a timm ResNet with a plain stem, not {name!r}")
        stride = 1 if img_size < 32 else 2
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def feature_dim(backbone: nn.Module) -> int:
    """Width of a timm backbone's pooled output with ``num_classes=0`` (after any pre-logits head)."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def frames_to_batch(video: torch.Tensor) -> torch.Tensor:
    """``video: (B, 3, T, H, W) -> (B*T, 3, H, W)``, frame-major within each clip."""
    return video.transpose(1, 2).flatten(0, 1)


class FrameFeatures(nn.Module):
    """Shared per-frame 2D feature extractor: ``video (B, 3, T, H, W) -> (B, T, D)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.num_features = feature_dim(backbone)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, T, D)``; the same weights on every frame."""
        b, t = video.shape[0], video.shape[2]
        return self.backbone(frames_to_batch(video)).view(b, t, -1)


class SingleFrame(FrameFeatures):
    """Single-frame CNN: classify frames independently, average their scores at test time.

    Training (``train_frames``): ``"random"`` (default) scores one random frame per clip per step —
    exactly "a normal image CNN trained on independent frames": the expected gradient equals that of
    the mean per-frame loss, at 1/T of the compute. ``"all"`` scores every frame and fuses them as
    at test time (then training coincides with late fusion, which is why it is not the default).
    Test (``score_fusion``): ``"prob"`` returns ``log(mean_t softmax(z_t))`` — softmax of the output
    is exactly the averaged class probabilities; ``"logit"`` returns ``mean_t z_t``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, train_frames: str = "random",
                 score_fusion: str = "prob", drop_rate: float = 0.0):
        super().__init__(backbone)
        if train_frames not in ("random", "all"):
            raise ValueError(f"single_frame: train_frames must be 'random' or 'all', got {train_frames!r}")
        if score_fusion not in ("prob", "logit"):
            raise ValueError(f"single_frame: score_fusion must be 'prob' or 'logit', got {score_fusion!r}")
        self.train_frames, self.score_fusion = train_frames, score_fusion
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def frame_logits(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, T, num_classes)`` per-frame logits."""
        return self.head(self.drop(self.frame_features(video)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, "single_frame")
        b, _, t = video.shape[:3]
        if self.training and self.train_frames == "random":
            idx = torch.randint(t, (b,), device=video.device)
            frame = video[torch.arange(b, device=video.device), :, idx]          # (B, 3, H, W)
            return self.head(self.drop(self.backbone(frame)))
        z = self.frame_logits(video)                                             # (B, T, C)
        if self.score_fusion == "logit":
            return z.mean(1)
        return torch.logsumexp(z.log_softmax(-1), dim=1) - math.log(t)


class LateFusion(FrameFeatures):
    """Late fusion: per-frame 2D features ``(B, T, D)`` → temporal pooling → head.

    ``pool="avg"``: mean over time → linear (== mean of per-frame logits, order-blind);
    ``"meanstd"``: ``[mean, std]`` over time → MLP (still order-blind, but sees the spread);
    ``"concat"``: the T feature vectors concatenated in order → MLP (order-aware; fixes T).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int, pool: str = "avg",
                 mlp_hidden: int | None = None, drop_rate: float = 0.0):
        super().__init__(backbone)
        d = self.num_features
        self.pool, self.num_frames = pool, num_frames
        self.drop = nn.Dropout(drop_rate)
        hidden = mlp_hidden or 2 * d
        if pool == "avg":
            self.head = nn.Linear(d, num_classes)
        elif pool == "meanstd":
            self.head = Mlp(2 * d, hidden, num_classes, drop=(drop_rate, 0.0))
        elif pool == "concat":
            self.head = Mlp(num_frames * d, hidden, num_classes, drop=(drop_rate, 0.0))
        else:
            raise ValueError(f"late fusion: pool must be 'avg', 'meanstd' or 'concat', got {pool!r}")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, f"late_fusion_{self.pool}", self.num_frames if self.pool == "concat" else None)
        f = self.frame_features(video)                                           # (B, T, D)
        if self.pool == "avg":
            pooled = f.mean(1)
        elif self.pool == "meanstd":
            pooled = torch.cat([f.mean(1), f.std(1, unbiased=False)], dim=-1)    # T=1 safe
        else:
            pooled = f.flatten(1)
        return self.head(self.drop(pooled))


class EarlyFusion(nn.Module):
    """Early fusion: the T frames stacked into ``3T`` input channels of the first 2D conv.

    Time is consumed entirely by the first layer (one temporal processing step, which Karpathy
    et al. found weaker than fusing time gradually), and that filter is not shift-invariant in time.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int, drop_rate: float = 0.0):
        super().__init__()
        self.backbone, self.num_frames = backbone, num_frames
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(feature_dim(backbone), num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``; channels are ordered frame-major."""
        check_video(video, "early_fusion", self.num_frames)
        x = video.transpose(1, 2).flatten(1, 2)                                 # (B, T*3, H, W)
        return self.head(self.drop(self.backbone(x)))


def _backbone(img_size: int, in_chans: int, backbone: str, width: float | None, stem: str,
              drop_path_rate: float) -> nn.Module:
    return make_backbone2d(backbone, in_chans=in_chans, img_size=img_size, width=width, stem=stem,
                           drop_path_rate=drop_path_rate)


_REF_KARPATHY = "Karpathy et al., Large-scale Video Classification with CNNs, CVPR 2014"


@register_baseline("single_frame", family="2d", order_aware=False, reference=_REF_KARPATHY,
                   description="2D CNN trained on independent frames; test scores (softmax) averaged over frames")
def single_frame(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None, stem="auto",
                 train_frames="random", score_fusion="prob", drop_rate=0.0, drop_path_rate=0.0):
    bb = _backbone(img_size, 3, backbone, width, stem, drop_path_rate)
    return SingleFrame(bb, num_classes, train_frames, score_fusion, drop_rate)


@register_baseline("late_fusion_avg", family="2d", order_aware=False, reference=_REF_KARPATHY,
                   description="per-frame 2D features, mean over time, linear (== mean of frame logits)")
def late_fusion_avg(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None, stem="auto",
                    drop_rate=0.0, drop_path_rate=0.0):
    bb = _backbone(img_size, 3, backbone, width, stem, drop_path_rate)
    return LateFusion(bb, num_classes, num_frames, "avg", drop_rate=drop_rate)


@register_baseline("late_fusion_meanstd", family="2d", order_aware=False, reference=_REF_KARPATHY,
                   description="per-frame 2D features, [mean, std] over time, MLP")
def late_fusion_meanstd(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None,
                        stem="auto", mlp_hidden=None, drop_rate=0.0, drop_path_rate=0.0):
    bb = _backbone(img_size, 3, backbone, width, stem, drop_path_rate)
    return LateFusion(bb, num_classes, num_frames, "meanstd", mlp_hidden, drop_rate)


@register_baseline("late_fusion_concat", family="2d", order_aware=True, reference=_REF_KARPATHY,
                   description="per-frame 2D features concatenated in time order, MLP")
def late_fusion_concat(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None,
                       stem="auto", mlp_hidden=None, drop_rate=0.0, drop_path_rate=0.0):
    bb = _backbone(img_size, 3, backbone, width, stem, drop_path_rate)
    return LateFusion(bb, num_classes, num_frames, "concat", mlp_hidden, drop_rate)


@register_baseline("early_fusion", family="2d", order_aware=True, reference=_REF_KARPATHY,
                   description="frames stacked into 3T channels of the first 2D conv")
def early_fusion(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None, stem="auto",
                 drop_rate=0.0, drop_path_rate=0.0):
    bb = _backbone(img_size, 3 * num_frames, backbone, width, stem, drop_path_rate)
    return EarlyFusion(bb, num_classes, num_frames, drop_rate)
