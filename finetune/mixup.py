"""Video-aware mixup / cutmix on top of timm's :class:`timm.data.Mixup`.

timm's cutmix slices ``x[:, :, y0:y1, x0:x1]``, which on a video ``(B, 3, T, H, W)`` would cut along
T and H. Here one spatial box is drawn per batch and pasted across ALL frames (the same box at
every time step), so the mixed clip keeps a consistent object over time; the label weight ``lam``
is the box's area share, as in 2D cutmix.
"""

from __future__ import annotations

import torch
from timm.data.mixup import Mixup, cutmix_bbox_and_lam, mixup_target


class VideoMixup(Mixup):
    """timm Mixup for ``(B, C, T, H, W)`` videos (batch mode: one lam / box per batch).

    >>> mix = VideoMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    >>> video, soft_targets = mix(video, labels)   # video mixed in place, targets (B, 10)
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mode", "batch")
        if kwargs["mode"] != "batch":
            raise ValueError("VideoMixup supports mode='batch' only")
        super().__init__(*args, **kwargs)

    def _mix_batch(self, x: torch.Tensor) -> float:
        """x: (B, C, T, H, W), mixed in place with its batch-reversed copy; returns lam."""
        if x.ndim != 5:
            raise ValueError(f"VideoMixup expects (B, C, T, H, W), got {tuple(x.shape)}")
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            # timm computes the box from shape[-2:] (H, W): the same box for every frame
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, ratio_minmax=self.cutmix_minmax,
                                                        correct_lam=self.correct_lam)
            x[..., yl:yh, xl:xh] = x.flip(0)[..., yl:yh, xl:xh]
        else:
            x_flipped = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(x_flipped)
        return float(lam)

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if len(x) % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {len(x)}")
        lam = self._mix_batch(x)
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing)
