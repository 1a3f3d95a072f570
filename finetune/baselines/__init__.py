"""The classic video models (single-frame and fusion CNNs, 3D CNNs, C3D, two-stream, recurrent
convolution, non-local, TimeSformer / ViViT / VTN), one registry, one calling convention.

>>> from finetune.baselines import create_baseline, list_baselines, BASELINE_INFO
>>> model = create_baseline("c3d", num_classes=10, num_frames=16, img_size=32, width=0.25)
>>> logits = model(video)                      # video: (B, 3, T, H, W) float normalized -> (B, 10)
>>> logits = two_stream_model(video, flow=flow)  # only where model.needs_flow; flow: (B, 2, T-1, H, W)

Models (``list_baselines()``): single_frame, late_fusion_{avg,meanstd,concat}, early_fusion
(``frame2d``); cnn3d, c3d, r3d_18, r2plus1d_18 (``cnn3d``); nonlocal_3d (``nonlocal_block``);
two_stream (``two_stream``); recurrent_conv (``recurrent``); timesformer, vivit (``factorized``);
vtn (``vtn``).
``BASELINE_INFO[name]``: description, order_aware, family, reference, needs_flow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from . import cnn3d, factorized, frame2d, nonlocal_block, recurrent, two_stream, vtn  # noqa: F401  (registers)
from .registry import BASELINE_INFO, check_video, create_baseline, list_baselines, register_baseline

__all__ = ["BASELINE_INFO", "check_video", "count_params", "create_baseline", "gflops_per_clip",
           "list_baselines", "register_baseline"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gflops_per_clip(model: nn.Module, num_frames: int, img_size: int) -> float:
    """Forward GFLOPs for one ``(3, num_frames, img_size, img_size)`` clip, in eval mode.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs
    (matmuls, convolutions, attention); elementwise ops are not counted. Papers usually quote multiply-adds ("C3D: 39.5 GFLOP" is ~38.5 G multiply-adds), i.e. half of this.
    Two-stream models get a zero flow of the matching shape. A model built under
    ``torch.device("meta")`` is counted without any arithmetic (useful at full size).
    """
    p = next(model.parameters())
    video = torch.zeros(1, 3, num_frames, img_size, img_size, device=p.device, dtype=p.dtype)
    kwargs = {}
    if getattr(model, "needs_flow", False):
        kwargs["flow"] = torch.zeros(1, 2, num_frames - 1, img_size, img_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(video, **kwargs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
