"""Classification heads and frozen-encoder probes on top of a video encoder.

An encoder follows the ``pretrain.models`` interface: ``enc.forward_features(x) -> (B, N, D)`` tokens
and ``enc(x) -> (B, D)`` pooled features (mean pool + norm, or cls).

- :class:`VideoClassifier` — full fine-tuning: encoder → dropout → linear (VideoMAE recipe: the head is
  initialised small, ``init_scale``), with timm-style ``group_matcher`` so layer-wise LR decay works.
- :class:`LinearProbe` — frozen encoder, BatchNorm without affine + linear on pooled features (MAE).
- :class:`AttentiveProbe` — frozen encoder, one learned query cross-attends over all tokens, then linear.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from pretrain.probe import AttentivePooler, LinearOnFeatures


def _encoder_groups(prefix: str, enc: nn.Module, coarse: bool) -> dict:
    """The encoder's timm ``group_matcher`` with every pattern anchored under ``prefix``."""
    import re

    gm = enc.group_matcher(coarse=coarse) if hasattr(enc, "group_matcher") else {
        "stem": r"^(patch_embed|pos_embed|cls_token)", "blocks": r"^blocks\.(\d+)"}

    def anchor(pattern: str) -> str:
        # "^a|^b" -> "^encoder\.(?:a|b)": every alternative moves under the prefix
        return "^" + re.escape(prefix) + "(?:" + pattern.replace("^", "") + ")"

    return {k: anchor(v) if isinstance(v, str) else [(anchor(p), o) for p, o in v] for k, v in gm.items()}


class _FrozenEncoderMixin(nn.Module):
    """Keeps the encoder frozen and in eval mode (no dropout/drop-path, no BN updates)."""

    def _freeze(self) -> None:
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self


class VideoClassifier(nn.Module):
    """Encoder + linear head for full fine-tuning.

    Args:
        encoder: video encoder; ``encoder(x)`` gives pooled ``(B, D)`` features.
        num_classes: number of classes.
        head_dropout: dropout before the linear layer.
        init_scale: the head's weights are scaled by this after truncated-normal init (VideoMAE: 0.001).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head_dropout: float = 0.0, init_scale: float = 1e-3):
        super().__init__()
        self.encoder = encoder
        dim = getattr(encoder, "num_features", None) or encoder.embed_dim
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
            self.head.bias.zero_()
        self.num_classes = num_classes

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) normalized float -> logits (B, num_classes)."""
        return self.head(self.head_drop(self.encoder(video)))

    def no_weight_decay(self) -> set[str]:
        nwd = getattr(self.encoder, "no_weight_decay", lambda: set())()
        return {f"encoder.{n}" for n in nwd}

    def group_matcher(self, coarse: bool = False) -> dict:
        return _encoder_groups("encoder.", self.encoder, coarse)


class LinearProbe(_FrozenEncoderMixin, LinearOnFeatures):
    """Frozen encoder → BatchNorm1d(affine=False) → linear, on pooled features (MAE linear probing;
    :class:`pretrain.probe.LinearOnFeatures`, same parameter names)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        LinearOnFeatures.__init__(self, getattr(encoder, "num_features", None) or encoder.embed_dim, num_classes)
        self.encoder = encoder
        self.num_classes = num_classes
        self._freeze()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) -> logits (B, num_classes); no gradient reaches the encoder."""
        with torch.no_grad():
            feats = self.encoder(video)
        return LinearOnFeatures.forward(self, feats)


class AttentiveProbe(_FrozenEncoderMixin, AttentivePooler):
    """Frozen encoder; a learned query cross-attends over all tokens (multi-head), then linear
    (:class:`pretrain.probe.AttentivePooler`, same parameter names)."""

    def __init__(self, encoder: nn.Module, num_classes: int, num_heads: int = 4):
        AttentivePooler.__init__(self, encoder.embed_dim, num_classes, num_heads)
        self.encoder = encoder
        self._freeze()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) -> logits (B, num_classes)."""
        with torch.no_grad():
            tokens = self.encoder.forward_features(video)  # (B, N, D)
        return AttentivePooler.forward(self, tokens)

    def no_weight_decay(self) -> set[str]:
        return {"query"}


HEADS = {"finetune": VideoClassifier, "linear": LinearProbe, "attentive": AttentiveProbe}


def build_classifier(kind: str, encoder: nn.Module, num_classes: int, **kw) -> nn.Module:
    """``kind``: ``finetune`` (full fine-tuning), ``linear`` or ``attentive`` probe."""
    if kind not in HEADS:
        raise ValueError(f"head kind {kind!r} unknown; choose one of {sorted(HEADS)}")
    return HEADS[kind](encoder, num_classes, **kw)
