"""Clip index sampling, crop boxes, uint8 crop/resize and Farnebäck flow, one function at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.data.flow import farneback_flow
from pretrain.data.sampling import clip_span, clip_stride, train_clip_indices, uniform_clip_indices
from pretrain.data.transforms import (center_box, crop_resize, eval_boxes, multiscale_box,
                                      random_resized_box)


def test_train_indices_stride_jitter_and_short_videos():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = train_clip_indices(100, 16, 4, rng)
        assert np.all(np.diff(idx) == 4) and idx[0] >= 0 and idx[-1] <= 99
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 100 - clip_span(16, 4)  # jitter covers the whole range
    short = train_clip_indices(20, 16, 4, rng)  # span 61 > 20 frames: stretched, still monotone
    assert short[0] == 0 and short[-1] == 19 and np.all(np.diff(short) >= 0)
    tiny = train_clip_indices(5, 16, 4, rng)  # fewer frames than the clip: frames repeat
    assert sorted(set(tiny.tolist())) == [0, 1, 2, 3, 4] and np.all(np.diff(tiny) >= 0)


def test_target_fps_stride_and_uniform_clips():
    assert clip_stride(4, None, 30.0) == 4.0
    assert clip_stride(4, 10.0, 30.0) == 3.0  # 30 fps source, 10 fps clips
    idx = uniform_clip_indices(300, 8, clip_stride(4, 10.0, 30.0), 3)
    assert idx.shape == (3, 8)
    assert idx[0, 0] == 0 and idx[-1, -1] == 299 and np.all(np.diff(idx[:, 0]) > 0)
    one = uniform_clip_indices(100, 4, 2, 1)
    assert one[0, 0] == (100 - clip_span(4, 2)) // 2  # a single test clip is centred


def test_crop_boxes_stay_inside_and_follow_their_rules():
    rng = np.random.default_rng(1)
    h, w = 240, 320
    sides = set()
    for _ in range(300):
        y, x, ch, cw = multiscale_box(h, w, (1.0, 0.875, 0.75, 0.66), 224, rng)
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w
        sides.add(ch)
        y, x, ch, cw = random_resized_box(h, w, (0.25, 1.0), rng)
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w
        assert 0.2 <= ch * cw / (h * w) <= 1.0
    assert sides == {240, 210, 180, 158}  # int(240 * scale)
    snapped = {multiscale_box(255, 340, (0.875,), 224, rng)[2] for _ in range(5)}
    assert snapped == {224}  # int(255 * 0.875) = 223 lies within 3 px of the output: snapped
    assert center_box(h, w) == (0, 40, 240, 240)
    assert eval_boxes(h, w, 3) == [(0, 0, 240, 240), (0, 40, 240, 240), (0, 80, 240, 240)]
    assert eval_boxes(w, h, 3) == [(0, 0, 240, 240), (40, 0, 240, 240), (80, 0, 240, 240)]


def test_crop_resize_layout_flip_and_frame_pick():
    frames = torch.zeros(6, 20, 30, 3, dtype=torch.uint8)
    frames[..., 0] = torch.arange(30, dtype=torch.uint8)[None, None, :] * 8  # red grows to the right
    frames[..., 2] = torch.arange(6, dtype=torch.uint8)[:, None, None] * 40  # blue = frame index
    clip = crop_resize(frames, (0, 5, 20, 20), 10, flip=False, index=torch.tensor([1, 3, 5]))
    assert clip.shape == (3, 3, 10, 10) and clip.dtype == torch.uint8 and clip.is_contiguous()
    assert clip[2, :, 0, 0].tolist() == [40, 120, 200]
    assert clip[0, 0, 0, 0] < clip[0, 0, 0, -1]
    flipped = crop_resize(frames, (0, 5, 20, 20), 10, flip=True, index=torch.tensor([1, 3, 5]))
    assert torch.equal(flipped, clip.flip(-1))
    same = crop_resize(frames, (0, 0, 10, 10), 10)  # no resize needed: exact pixels
    assert torch.equal(same, frames[:, :10, :10].permute(3, 0, 1, 2))


@pytest.mark.parametrize("flip", [False, True])
def test_farneback_flow_direction(flip):
    rng = np.random.default_rng(2)
    texture = (rng.random((40, 80)) * 255).astype(np.uint8)
    texture = np.repeat(np.repeat(texture, 2, 0), 2, 1)  # 80 x 160, blobs of 2 px
    frames = np.stack([np.roll(texture, 3 * t, axis=1)[:, :64] for t in range(4)])  # moves right 3 px
    clip = torch.from_numpy(np.repeat(frames[None], 3, 0))  # (3, T, H, W) grey
    if flip:
        clip = clip.flip(-1)
    flow = farneback_flow(clip)
    assert flow.shape == (2, 3, 80, 64) and flow.dtype == torch.float16
    inner = flow[:, :, 16:-16, 16:-16].float()
    dx, dy = inner[0].median().item(), inner[1].median().item()
    assert abs(dx - (-3.0 if flip else 3.0)) < 0.5 and abs(dy) < 0.5
