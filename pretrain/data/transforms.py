"""Clip augmentation on uint8 tensors, and normalisation on the device.

Workers only crop, resize and flip uint8 frames: each clip is cropped once and resized once with
``torch.nn.functional.interpolate`` (bilinear, antialiased), which is several times cheaper than
per-frame PIL transforms and keeps the batch 4x smaller than float32 on its way to the device.
Normalisation to float happens on the device with :func:`normalize_on_device`.

Crop boxes are ``(y, x, h, w)`` in source pixels, drawn from a ``numpy.random.Generator`` that the
caller derives from counters, so every augmentation is reproducible.

    box = multiscale_box(H, W, (1, .875, .75, .66), 224, rng)     # VideoMAE multi-scale crop
    clip = crop_resize(frames, box, 224, flip=True)               # (3, T, 224, 224) uint8
    x = normalize_on_device(batch["video"].cuda(), mean, std)     # (B, 3, T, 224, 224) float32
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple  # (y, x, h, w)


def multiscale_box(h: int, w: int, scales: Sequence[float], out_size: int, rng: np.random.Generator,
                   max_distort: int = 1) -> Box:
    """VideoMAE/TSN multi-scale crop: side lengths from ``scales`` x short side, aspect distorted by
    at most ``max_distort`` scale steps, placed at one of 13 fixed positions (corners, centre,
    edge centres and quarter points)."""
    base = min(h, w)
    # sizes within 3 px of the output are snapped to it (the crop then needs no resize)
    sizes = [out_size if abs(int(base * s) - out_size) < 3 else int(base * s) for s in scales]
    sizes = [max(1, min(s, base)) for s in sizes]
    pairs = [(sw, sh) for i, sw in enumerate(sizes) for j, sh in enumerate(sizes) if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    cw, ch = min(cw, w), min(ch, h)
    sx, sy = (w - cw) // 4, (h - ch) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners and centre
            (0, 2), (4, 2), (2, 4), (2, 0),          # edge centres
            (1, 1), (3, 1), (1, 3), (3, 3)]          # quarter points
    gx, gy = grid[int(rng.integers(len(grid)))]
    return (gy * sy, gx * sx, ch, cw)


def random_resized_box(h: int, w: int, scale: Sequence[float], rng: np.random.Generator,
                       ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Box:
    """Inception-style random resized crop (area share in ``scale``, aspect ratio in ``ratio``)."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
    # fallback: the largest centred crop whose aspect ratio lies in ``ratio``
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return ((h - ch) // 2, (w - cw) // 2, ch, cw)


def center_box(h: int, w: int) -> Box:
    """The centred square of side ``min(h, w)``."""
    s = min(h, w)
    return ((h - s) // 2, (w - s) // 2, s, s)


def eval_boxes(h: int, w: int, num_crops: int) -> list[Box]:
    """Squares of side ``min(h, w)``: 1 centre crop, or 3 crops along the long side
    (left/centre/right for landscape, top/centre/bottom for portrait), in that order."""
    s = min(h, w)
    if num_crops == 1:
        return [center_box(h, w)]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if w >= h:
        return [(0, x, s, s) for x in (0, (w - s) // 2, w - s)]
    return [(y, 0, s, s) for y in (0, (h - s) // 2, h - s)]


def crop_resize(frames: torch.Tensor, box: Box, size: int, flip: bool = False,
                index: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop, resize and optionally flip one clip.

    frames: (N, H, W, 3) uint8 (decoder layout); ``index`` picks the clip's T frames out of the N
    decoded ones (default: all). Returns (3, T, size, size) uint8, contiguous -- written into
    ``out`` (e.g. a slot of the batch tensor) when given.
    """
    import cv2

    y, x, h, w = box
    clip = frames[:, y:y + h, x:x + w]               # view, no copy
    if index is not None:
        clip = clip.index_select(0, index)           # copies only the cropped pixels
    t = clip.shape[0]
    if (h, w) != (size, size):
        # (T, 3, h, w) channels-last view in, channels-last out: torch's fast uint8 path
        clip = F.interpolate(clip.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True).permute(0, 2, 3, 1)
    src = np.ascontiguousarray(clip.numpy()).reshape(t * size, size, 3)  # frames stacked as rows
    if flip:
        src = cv2.flip(src, 1)                       # mirrors every row = every frame
    if out is None:
        out = torch.empty((3, t, size, size), dtype=torch.uint8)
    if out.shape != (3, t, size, size) or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f"out must be contiguous uint8 {(3, t, size, size)}, got {tuple(out.shape)} {out.dtype}")
    # (T*S, S, 3) -> 3 planes: cv2.split de-interleaves at memcpy speed, ~3x torch's permute copy
    planes = out.numpy().reshape(3, t * size, size)
    dst = [planes[0], planes[1], planes[2]]
    got = cv2.split(src, dst)
    for g, d in zip(got, dst):
        if g.ctypes.data != d.ctypes.data:  # OpenCV reallocated instead of writing in place
            np.copyto(d, g)
    return out


def normalize_on_device(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``video: (B, 3, T, H, W)`` (or ``(3, T, H, W)``) -> float32 ``(x / 255 - mean) / std``,
    computed on ``video.device``. ``mean``/``std`` are per channel in [0, 1] units."""
    if video.dim() not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W) or (3, T, H, W), got {tuple(video.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=video.device).view(3, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=video.device).view(3, 1, 1, 1)
    # fold /255 into the affine map: one multiply-add pass over the float tensor
    scale = 1.0 / (255.0 * s)
    return video.to(torch.float32).mul_(scale).sub_(m / s)
