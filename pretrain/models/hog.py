"""Histograms of oriented gradients as torch ops (MaskFeat targets).

Per frame and colour channel: Sobel gradients (reflect padding), unsigned orientation in
``[0, pi)`` voted into ``bins`` orientation bins weighted by gradient magnitude, summed over
``cell x cell`` pixel cells. Votes are split linearly between the two nearest bin centres
(centres at ``(k + 1/2) pi / bins``): hard binning puts the axis-aligned gradients of real and
synthetic edges exactly on a bin border, where rounding noise would flip them between bins. :func:`hog_targets` cuts the cell histograms into the prediction
units of a masked model and L2-normalises each unit's histograms per frame and channel
(local contrast normalisation, as in MaskFeat), which also makes them invariant to the
per-channel affine input normalisation.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .tubelets import gather_tubelets


def hog_histograms(frames: torch.Tensor, bins: int = 9, cell: int = 8) -> torch.Tensor:
    """``frames: (N, C, H, W)`` -> cell histograms ``(N, C, bins, H // cell, W // cell)``."""
    n, c, h, w = frames.shape
    if h % cell or w % cell:
        raise ValueError(f"HOG: frame {h}x{w} is not a multiple of the cell size {cell}")
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=frames.device)
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1).repeat(c, 1, 1, 1)     # (2C, 1, 3, 3): gx, gy per channel
    x = F.pad(frames.float(), (1, 1, 1, 1), mode="reflect")
    g = F.conv2d(x, kernels, groups=c).view(n, c, 2, h, w)
    gx, gy = g[:, :, 0], g[:, :, 1]
    mag = torch.sqrt(gx * gx + gy * gy)
    pos = torch.atan2(gy, gx) * (bins / math.pi) - 0.5       # orientation in bin units, circular mod bins
    hist = []
    for b in range(bins):   # one bin at a time: a (N, C, bins, H, W) buffer would be bins x the clip size
        dist = (pos - b + bins / 2).remainder(bins) - bins / 2   # circular distance to centre b
        hist.append(F.avg_pool2d(mag * (1 - dist.abs()).clamp_(min=0), cell))
    return torch.stack(hist, dim=2) * (cell * cell)


def hog_targets(video: torch.Tensor, ids: torch.Tensor, unit: Sequence[int], bins: int = 9, cell: int = 8,
                eps: float = 1e-6) -> torch.Tensor:
    """HOG of the units ``ids: (B, n)`` of ``video: (B, C, T, H, W)`` -> ``(B, n, K)``.

    ``unit = (ut, uh, uw)`` in frames and pixels; ``K = ut * C * (uh // cell) * (uw // cell) * bins``,
    ordered ``(frame, cell row, cell col, channel, bin)``.
    """
    b, c, t, h, w = video.shape
    ut, uh, uw = unit
    if uh % cell or uw % cell:
        raise ValueError(f"HOG: unit {uh}x{uw} is not a multiple of the cell size {cell}")
    # fp32 targets even inside a bf16 autocast region (the Sobel convolution would run in bf16)
    with torch.no_grad(), torch.autocast(video.device.type, enabled=False):
        hist = hog_histograms(video.float().transpose(1, 2).reshape(b * t, c, h, w), bins, cell)
        hist = hist.view(b, t, c * bins, h // cell, w // cell).transpose(1, 2)      # (B, C*bins, T, Hc, Wc)
        ch, cw = uh // cell, uw // cell
        x = gather_tubelets(hist.contiguous(), ids, (ut, ch, cw), layout="thwc")   # (B, n, ut*ch*cw*C*bins)
        x = x.view(b, ids.shape[1], ut, ch * cw, c, bins)
        x = x / (x.pow(2).sum(dim=(3, 5), keepdim=True).sqrt() + eps)
        return x.reshape(b, ids.shape[1], -1)
