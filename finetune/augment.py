"""Device-side clip augmentation for fine-tuning: random erasing with per-frame noise.

VideoMAE fine-tunes with timm's ``RandomErasing(reprob=0.25, mode="pixel", max_count=1,
device="cpu", cube=True)`` on ``(T, C, H, W)`` clips: *one* box per clip, at the same place in
every frame (a box that jumps around would be motion), filled with noise drawn *independently per
frame*. :func:`random_erase_` does that on a normalised batch, on whatever device it lives, with
timm's box distribution (area share in ``[0.02, 1/3]``, log-uniform aspect ratio in
``[0.3, 1/0.3]``, 10 attempts, no box when none fits).

    from finetune.augment import random_erase_
    video = normalize_on_device(batch["video"].to(dev), mean, std)   # (B, 3, T, H, W) float
    random_erase_(video, prob=0.25)                  # in place; returns video
    random_erase_(video, 0.25, gen=torch.Generator().manual_seed(0))   # reproducible
"""

from __future__ import annotations

import math

import torch

MIN_AREA, MAX_AREA = 0.02, 1 / 3
"""Erased share of the frame area (timm defaults)."""
MIN_ASPECT = 0.3
"""Aspect ratios are log-uniform in ``[MIN_ASPECT, 1 / MIN_ASPECT]`` (timm default)."""
ATTEMPTS = 10


def _box(h: int, w: int, gen: torch.Generator | None) -> tuple[int, int, int, int] | None:
    """One timm RandomErasing box ``(y, x, eh, ew)``, or None when 10 attempts found none."""
    log_lo, log_hi = math.log(MIN_ASPECT), math.log(1 / MIN_ASPECT)
    for _ in range(ATTEMPTS):
        u = torch.rand(2, generator=gen).tolist()
        target = h * w * (MIN_AREA + (MAX_AREA - MIN_AREA) * u[0])
        ratio = math.exp(log_lo + (log_hi - log_lo) * u[1])
        eh = int(round(math.sqrt(target * ratio)))
        ew = int(round(math.sqrt(target / ratio)))
        if 0 < eh < h and 0 < ew < w:
            y = int(torch.randint(0, h - eh + 1, (), generator=gen))
            x = int(torch.randint(0, w - ew + 1, (), generator=gen))
            return y, x, eh, ew
    return None


def random_erase_(video: torch.Tensor, prob: float, gen: torch.Generator | None = None, mode: str = "pixel",
                  per_frame: bool = True) -> torch.Tensor:
    """Erase one random box per clip, in place, at the same position in every frame.

    Args:
        video: ``(B, 3, T, H, W)`` normalised float batch (any device); modified in place.
        prob: chance that a clip gets a box (VideoMAE ``reprob``: 0.25).
        gen: a ``torch.Generator`` for the draws (boxes always on its device; noise on it too when it
            lives on ``video.device``, else drawn there and moved); None: the global generator.
        mode: box filling as in timm: ``pixel`` (standard-normal noise per pixel), ``rand`` (one
            normal colour per channel) or ``const`` (zeros, the mean after normalisation).
        per_frame: draw the noise independently for every frame (VideoMAE's ``cube`` mode); False:
            one noise image repeated in all frames.

    Returns ``video``.
    """
    if video.dim() != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got {tuple(video.shape)}")
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"mode must be pixel|rand|const, got {mode!r}")
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must lie in [0, 1], got {prob}")
    b, c, t, h, w = video.shape
    noise_dev = gen.device if gen is not None else video.device
    for i in range(b):
        if prob <= 0 or float(torch.rand((), generator=gen)) >= prob:
            continue
        box = _box(h, w, gen)
        if box is None:
            continue
        y, x, eh, ew = box
        if mode == "const":
            video[i, :, :, y:y + eh, x:x + ew] = 0
            continue
        shape = (c, t if per_frame else 1, eh, ew) if mode == "pixel" else (c, t if per_frame else 1, 1, 1)
        fill = torch.randn(shape, generator=gen, device=noise_dev, dtype=torch.float32)
        video[i, :, :, y:y + eh, x:x + ew] = fill.to(device=video.device, dtype=video.dtype)
    return video
