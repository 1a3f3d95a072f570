"""Temporal clip sampling: which source frames make up a clip.

A clip is ``num_frames`` frames taken ``stride`` source frames apart (``stride`` is
``data.sampling_rate``, or ``source_fps / data.target_fps`` when a target frame rate is set, so it
may be fractional). Its span in source frames is ``round((num_frames - 1) * stride) + 1``.

Videos shorter than the span are sampled with ``linspace(0, n - 1, num_frames)``: the whole video is
stretched over the clip (frames repeat when ``n < num_frames``). Indices stay monotone, so motion
direction is preserved -- looping a short video would add a backwards jump, which breaks classes
defined by direction.

    stride = clip_stride(cfg.sampling_rate, cfg.target_fps, vid.fps)
    idx = train_clip_indices(vid.num_frames, 16, stride, rng)          # (16,) int64, random start
    clips = uniform_clip_indices(vid.num_frames, 16, stride, num_clips=5)  # (5, 16), test views
"""

from __future__ import annotations

import numpy as np


def clip_stride(sampling_rate: int, target_fps: float | None, source_fps: float) -> float:
    """Source frames between two clip frames: ``sampling_rate``, or ``source_fps / target_fps``."""
    if target_fps is None:
        return float(sampling_rate)
    if not source_fps or source_fps <= 0:  # unknown rate: fall back to the fixed stride
        return float(sampling_rate)
    return float(source_fps) / float(target_fps)


def clip_span(num_frames: int, stride: float) -> int:
    """Source frames covered by one clip (first to last sampled frame, inclusive)."""
    return int(round((num_frames - 1) * stride)) + 1


def _offsets(num_frames: int, stride: float) -> np.ndarray:
    """(num_frames,) int64 offsets of the clip frames from the clip start."""
    return np.round(np.arange(num_frames) * stride).astype(np.int64)


def _stretched(n: int, num_frames: int) -> np.ndarray:
    """(num_frames,) int64: the whole (short) video spread over the clip, monotone."""
    return np.round(np.linspace(0, n - 1, num_frames)).astype(np.int64)


def train_clip_indices(n: int, num_frames: int, stride: float, rng: np.random.Generator) -> np.ndarray:
    """(num_frames,) int64 frame indices of one clip at a uniformly random start (temporal jitter)."""
    if n <= 0:
        raise ValueError(f"video has no frames (n={n})")
    span = clip_span(num_frames, stride)
    if n < span:
        return _stretched(n, num_frames)
    start = int(rng.integers(0, n - span + 1))
    return start + _offsets(num_frames, stride)


def uniform_clip_indices(n: int, num_frames: int, stride: float, num_clips: int) -> np.ndarray:
    """(num_clips, num_frames) int64: clips at uniformly spaced starts over the video (test views).

    One clip is centred; K clips start at ``linspace(0, n - span, K)``, so the first touches the
    beginning and the last the end of the video.
    """
    if n <= 0:
        raise ValueError(f"video has no frames (n={n})")
    span = clip_span(num_frames, stride)
    if n < span:
        return np.stack([_stretched(n, num_frames)] * num_clips)
    if num_clips == 1:
        starts = np.array([(n - span) // 2])
    else:
        starts = np.round(np.linspace(0, n - span, num_clips)).astype(np.int64)
    return starts[:, None] + _offsets(num_frames, stride)[None, :]
