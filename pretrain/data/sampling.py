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

``data.sampling=segment`` (TSN, VideoMAE's SSv2 fine-tuning) ignores the stride: the video is cut
into ``num_frames`` equal segments (:func:`segment_bounds`) and a clip takes one frame of each --
a uniformly random one in train (:func:`train_segment_indices`), the middle one at test
(:func:`uniform_segment_indices`). Either way the loader decodes the distinct indices of all of a
sample's clips in one batched ``get`` (decord ``get_batch``), each frame once.
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


# ---------------------------------------------------------------- segment (TSN / SSv2) sampling


def segment_bounds(n: int, num_segments: int) -> np.ndarray:
    """(num_segments, 2) int64 ``[lo, hi]`` (inclusive) frame range of each of ``num_segments`` equal
    segments of an ``n``-frame video: segment ``i`` holds frames ``floor(i n / T) ..
    floor((i + 1) n / T) - 1``, so for ``n >= T`` the segments partition the video. When ``n < T`` a
    segment may hold no whole frame and then takes the frame it starts in (frames repeat, indices
    stay monotone)."""
    if n <= 0:
        raise ValueError(f"video has no frames (n={n})")
    edges = (np.arange(num_segments + 1, dtype=np.int64) * n) // num_segments
    lo = np.minimum(edges[:-1], n - 1)
    hi = np.maximum(edges[1:] - 1, lo)
    return np.stack([lo, hi], axis=1)


def train_segment_indices(n: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(num_frames,) int64: TSN train sampling -- the video cut into ``num_frames`` equal segments,
    one uniformly random frame from each (the whole video is always covered, whatever its length)."""
    b = segment_bounds(n, num_frames)
    return b[:, 0] + (rng.random(num_frames) * (b[:, 1] - b[:, 0] + 1)).astype(np.int64)


def uniform_segment_indices(n: int, num_frames: int, num_clips: int) -> np.ndarray:
    """(num_clips, num_frames) int64: TSN test sampling, nothing random. One clip takes the middle
    frame of every segment (``lo + len // 2``); clip ``k`` of ``K`` takes the frame at ``(k + 1/2) / K``
    of each segment (K views spread evenly inside the segments; VideoMAE's 2 SSv2 test views take the
    segment starts and middles instead, i.e. offsets 0 and 1/2 rather than 1/4 and 3/4)."""
    b = segment_bounds(n, num_frames)
    length = (b[:, 1] - b[:, 0] + 1).astype(np.float64)
    frac = (np.arange(num_clips, dtype=np.float64) + 0.5) / num_clips
    return b[None, :, 0] + np.floor(frac[:, None] * length[None, :]).astype(np.int64)
