"""Dense optical flow (OpenCV Farnebäck) for two-stream models.

Computed in the loader workers on the *augmented* clip (after crop, resize and flip), so flow and
RGB stay pixel-aligned and a flipped clip gets mirrored flow with negated x component.

    flow = farneback_flow(clip)     # clip: (3, T, H, W) uint8 -> (2, T-1, H, W) float16, (dx, dy) px
"""

from __future__ import annotations

import numpy as np
import torch

# OpenCV's standard parameters for Farnebäck (pyramid 0.5, 3 levels, 15 px window)
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def farneback_flow(clip: torch.Tensor) -> torch.Tensor:
    """clip: (3, T, H, W) uint8 RGB -> (2, T-1, H, W) float16 flow between consecutive frames,
    channel 0 = horizontal, 1 = vertical displacement in pixels (frame t -> t+1)."""
    import cv2

    if clip.dim() != 4 or clip.shape[0] != 3 or clip.dtype != torch.uint8:
        raise ValueError(f"clip must be (3, T, H, W) uint8, got {tuple(clip.shape)} {clip.dtype}")
    _, t, h, w = clip.shape
    out = np.zeros((2, max(t - 1, 0), h, w), dtype=np.float16)
    if t < 2:
        return torch.from_numpy(out)
    rgb = clip.permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in rgb]
    for i in range(t - 1):
        f = cv2.calcOpticalFlowFarneback(gray[i], gray[i + 1], None, **FARNEBACK)  # (H, W, 2) float32
        out[:, i] = f.transpose(2, 0, 1)
    return torch.from_numpy(out)
