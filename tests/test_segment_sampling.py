"""TSN / SSv2 segment sampling (``data.sampling=segment``): one frame per segment, the middle at
test, every needed frame decoded once in one batched call."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from _loader_data import make_shards
from pretrain.config import ConfigError, DataConfig
from pretrain.data import clips as clips_mod
from pretrain.data.loader import build_loader
from pretrain.data.sampling import segment_bounds, train_segment_indices, uniform_segment_indices

torch.set_num_threads(1)
FRAMES = 24


def small_cfg(**kw) -> DataConfig:
    base = dict(num_frames=8, img_size=32, batch_size=4, num_workers=0, shuffle_buffer=4,
                test_num_clips=1, test_num_crops=1, sampling="segment", hflip=False, train_crop="center")
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg_shards")
    return d, make_shards(d, 4, 2, seed=3, frames=FRAMES)


@pytest.mark.parametrize("n", [1, 5, 8, 16, 17, 24, 100, 301])
def test_one_random_frame_per_segment(n):
    t = 8
    b = segment_bounds(n, t)
    assert b[0, 0] == 0 and b[-1, 1] == n - 1
    if n >= t:  # the segments partition the video
        assert (b[1:, 0] == b[:-1, 1] + 1).all() and (b[:, 1] >= b[:, 0]).all()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = train_segment_indices(n, t, rng)
        assert idx.shape == (t,) and idx.dtype == np.int64
        assert ((idx >= b[:, 0]) & (idx <= b[:, 1])).all()  # frame i lies in segment i
        assert (np.diff(idx) >= 0).all()
        seen.add(tuple(idx))
    if n >= 2 * t:
        assert len(seen) > 100  # random within the segments


@pytest.mark.parametrize("n", [3, 16, 24, 25, 100])
def test_middle_frame_at_test(n):
    t = 8
    b = segment_bounds(n, t)
    mid = uniform_segment_indices(n, t, 1)
    assert mid.shape == (1, t)
    assert (mid[0] == b[:, 0] + (b[:, 1] - b[:, 0] + 1) // 2).all()
    two = uniform_segment_indices(n, t, 2)  # K views spread inside the segments
    assert ((two >= b[None, :, 0]) & (two <= b[None, :, 1])).all()
    if n >= 4 * t:
        assert (two[0] < mid[0]).all() and (two[1] > mid[0]).all()
    assert uniform_segment_indices(24, 8, 1)[0].tolist() == [1, 4, 7, 10, 13, 16, 19, 22]


@pytest.fixture
def gets(monkeypatch):
    """Records every ``vid.get(indices)`` call of the loader's decode path (num_workers=0)."""
    calls: list[list[int]] = []
    real = clips_mod.open_video

    def opening(data, backend="decord", *a, **kw):
        vid = real(data, backend, *a, **kw)
        get = vid.get

        def recording(indices):
            calls.append([int(i) for i in indices])
            return get(indices)

        vid.get = recording
        return vid

    monkeypatch.setattr(clips_mod, "open_video", opening)
    return calls


def _frame_of(clip: torch.Tensor) -> list[int]:
    """Source frame index of each clip frame from the test videos' rising blue level."""
    blue = clip[2].float().flatten(1).median(dim=1).values.numpy()
    return np.round((blue - 10) * (FRAMES - 1) / 240).astype(int).tolist()


def test_loader_eval_takes_middles_decoded_once(shards, gets):
    d, _ = shards
    batches = list(build_loader(small_cfg(val_shards=str(d)), "eval"))
    assert sum(len(b["key"]) for b in batches) == 4
    mids = [1, 4, 7, 10, 13, 16, 19, 22]
    assert gets == [mids] * 4  # one batched get per video, each needed frame once
    for b in batches:
        for clip in b["video"]:
            assert _frame_of(clip) == mids  # the pixels come from those frames


def test_loader_train_one_frame_per_segment_decoded_once(shards, gets):
    d, _ = shards
    cfg = small_cfg(shards=str(d), num_repeats=2, repeat_temporal=True, batch_size=2)
    b = segment_bounds(FRAMES, 8)
    batches = list(islice(build_loader(cfg, "train", seed=1), 4))  # 4 videos, 2 repeats each
    assert len(gets) == 4
    for call, batch in zip(gets, batches):
        assert call == sorted(set(call))  # unique, in order: each frame decoded once
        for clip in batch["video"]:
            f = np.array(_frame_of(clip))
            assert ((f >= b[:, 0]) & (f <= b[:, 1])).all()
            assert set(f.tolist()) <= set(call)
    # stride sampling is still the default and unchanged
    assert DataConfig().sampling == "stride"


def test_bad_value_rejected():
    with pytest.raises(ConfigError, match="data.sampling"):
        DataConfig(sampling="tsn")
