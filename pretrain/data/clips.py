"""From one raw sample to clips: decode once (under a timeout), then R train clips or K x C views.

Everything random about a sample comes from the generator the caller passes in, drawn in a fixed
order (temporal positions inside the decode, then crop and flip per repeat), so the same sample
with the same generator gives bit-identical clips -- in a worker, the main process or on resume.

    frames, plans = train_plans(raw, cfg, rng)           # decoded once; num_repeats plans
    clip = plans[0].build(frames, cfg.img_size)         # (3, T, S, S) uint8
    frames, plans = eval_plans(raw, cfg, num_clips=2, num_crops=3)   # 6 views
    frames, plans = train_plans(raw, cfg, rng, cache=ClipCache(...))  # decoded frames from the cache

Temporal positions follow ``data.sampling`` (``stride`` or TSN ``segment``); with ``data.randaug``
each train plan also carries its clip's RandAugment ops (drawn after crop and flip, so turning it on
changes nothing else). Failures raise :class:`SampleSkipped` with a short reason that the loader counts.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pretrain.config import DataConfig
from pretrain.data.decode import DecodeError, open_video
from pretrain.data.randaug import ClipRandAugment
from pretrain.data.sampling import (clip_stride, train_clip_indices, train_segment_indices,
                                    uniform_clip_indices, uniform_segment_indices)
from pretrain.data.stream import RawSample
from pretrain.data.transforms import (center_box, crop_resize, eval_boxes, multiscale_box,
                                      random_resized_box)


class SampleSkipped(Exception):
    """A sample produced no clip; ``reason`` (e.g. ``timeout``, ``decode:open_failed``) is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _with_timeout(fn: Callable, timeout: float):
    """Run ``fn()`` in a daemon thread; give up after ``timeout`` seconds.

    A decoder stuck inside C code cannot be interrupted, only abandoned: the daemon thread is left
    behind (it dies with the worker) and the loader moves on to the next sample.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            box["error"] = e

    t = threading.Thread(target=target, name="tubelet-decode", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SampleSkipped("timeout")
    if "error" in box:
        raise box["error"]
    return box["value"]


def decode_clips(raw: RawSample, cfg: DataConfig, plan: Callable[[int, float], np.ndarray],
                 cache=None):
    """Decode the frames that ``plan(num_frames, fps) -> (C, T) indices`` asks for, once.

    Returns ``frames: (U, H, W, 3)`` uint8 tensor of the U distinct frames and ``pos: (C, T)``
    int64 tensor locating each clip frame in ``frames``. Raises :class:`SampleSkipped`.

    With a :class:`~pretrain.data.cache.ClipCache` the frames come from its memory-mapped copy of
    the whole decoded video when present; on a miss the whole video is decoded and stored (unless
    the cache is full: then only the needed frames are decoded, as without a cache). The same
    ``plan`` (and generator) gives the same frames either way.
    """
    if raw.error is not None:
        raise SampleSkipped(raw.error)

    def job():
        if cache is not None:
            hit = cache.get(raw.shard, raw.key)
            if hit is not None:
                allf, fps = hit
                idx = np.asarray(plan(allf.shape[0], fps), dtype=np.int64)
                uniq, inv = np.unique(idx, return_inverse=True)
                return np.ascontiguousarray(allf[uniq]), inv.reshape(idx.shape)
        vid = open_video(raw.video, cfg.backend)
        idx = np.asarray(plan(vid.num_frames, vid.fps), dtype=np.int64)
        uniq, inv = np.unique(idx, return_inverse=True)
        if cache is not None and cache.room_for(vid.num_frames * vid.height * vid.width * 3 + 256):
            allf = vid.get(np.arange(vid.num_frames))
            if allf.ndim == 4 and allf.shape[0] == vid.num_frames and allf.shape[-1] == 3:
                cache.put(raw.shard, raw.key, allf, vid.fps)
            frames = allf[uniq]
        else:
            frames = vid.get(uniq)
        if frames.ndim != 4 or frames.shape[0] != len(uniq) or frames.shape[-1] != 3:
            raise DecodeError("bad_frames", f"decoder returned {frames.shape} for {len(uniq)} frames")
        return frames, inv.reshape(idx.shape)

    try:
        frames, pos = _with_timeout(job, cfg.decode_timeout)
    except SampleSkipped:
        raise
    except DecodeError as e:
        raise SampleSkipped(f"decode:{e.reason}") from None
    except Exception as e:  # any other failure of a third-party decoder is the sample's fault
        raise SampleSkipped(f"error:{type(e).__name__}") from None
    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(pos)


def _train_box(cfg: DataConfig, h: int, w: int, rng: np.random.Generator):
    if cfg.train_crop == "multiscale":
        return multiscale_box(h, w, cfg.crop_scales, cfg.img_size, rng)
    if cfg.train_crop == "random_resized":
        return random_resized_box(h, w, cfg.rrc_scale, rng)
    return center_box(h, w)


@dataclass
class ClipPlan:
    """How to cut one clip out of the decoded frames (see :func:`crop_resize`)."""

    index: torch.Tensor
    """(T,) int64 positions of the clip's frames in the decoded ``frames``."""
    box: tuple
    """Crop ``(y, x, h, w)`` in source pixels."""
    flip: bool
    view: int = 0
    """Eval view number ``clip * num_crops + crop`` (0 in train)."""
    ops: list | None = None
    """RandAugment ops of this clip (:meth:`ClipRandAugment.draw`), applied to every frame; None: off."""

    def build(self, frames: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """(3, T, size, size) uint8 clip, written into ``out`` when given."""
        clip = crop_resize(frames, self.box, size, self.flip, index=self.index, out=out)
        if self.ops:
            ClipRandAugment.apply_(clip, self.ops)
        return clip


@functools.lru_cache(maxsize=4)
def _randaug(text: str, img_size: int) -> ClipRandAugment:
    return ClipRandAugment(text, img_size)


def train_plans(raw: RawSample, cfg: DataConfig, rng: np.random.Generator,
                first: int = 0, cache=None) -> tuple[torch.Tensor, list[ClipPlan]]:
    """Decode once and plan the ``cfg.num_repeats`` augmented clips of one sample.

    Returns the decoded ``frames: (U, H, W, 3)`` and one plan per repeat. Repeats ``< first`` are
    drawn (to keep the generator in step) but not returned: resuming in the middle of a sample's
    repeats gives exactly the remaining ones. ``cache``: see :func:`decode_clips`.
    """
    reps, t = cfg.num_repeats, cfg.num_frames

    def one(n: int, fps: float) -> np.ndarray:
        if cfg.sampling == "segment":
            return train_segment_indices(n, t, rng)
        return train_clip_indices(n, t, clip_stride(cfg.sampling_rate, cfg.target_fps, fps), rng)

    def plan(n: int, fps: float) -> np.ndarray:
        first_idx = one(n, fps)
        rows = [first_idx] + [one(n, fps) if cfg.repeat_temporal else first_idx for _ in range(reps - 1)]
        return np.stack(rows)

    frames, pos = decode_clips(raw, cfg, plan, cache)
    h, w = frames.shape[1:3]
    boxes = []
    for r in range(reps):
        box = _train_box(cfg, h, w, rng)
        flip = bool(cfg.hflip and rng.random() < 0.5)
        boxes.append((box, flip))
    ops = [None] * reps
    if cfg.randaug:  # drawn after all crops and flips: switching it on changes nothing else
        ra = _randaug(cfg.randaug, cfg.img_size)
        ops = [ra.draw(rng) for _ in range(reps)]
    plans = [ClipPlan(pos[r], box, flip, ops=ops[r]) for r, (box, flip) in enumerate(boxes) if r >= first]
    return frames, plans


def eval_plans(raw: RawSample, cfg: DataConfig, num_clips: int,
               num_crops: int, cache=None) -> tuple[torch.Tensor, list[ClipPlan]]:
    """Decode once and plan all test views of one sample (``num_clips x num_crops``): clips uniformly
    spread over the video (``segment``: the middle of each segment for one clip), crops centre or
    left/centre/right; nothing random (no RandAugment)."""

    def plan(n: int, fps: float) -> np.ndarray:
        if cfg.sampling == "segment":
            return uniform_segment_indices(n, cfg.num_frames, num_clips)
        stride = clip_stride(cfg.sampling_rate, cfg.target_fps, fps)
        return uniform_clip_indices(n, cfg.num_frames, stride, num_clips)

    frames, pos = decode_clips(raw, cfg, plan, cache)
    boxes = eval_boxes(frames.shape[1], frames.shape[2], num_crops)
    return frames, [ClipPlan(pos[k], box, False, k * num_crops + c)
                    for k in range(num_clips) for c, box in enumerate(boxes)]
