"""Decoded-clip cache (``data.cache``) on real mp4 in real tar shards: same clips as decoding, no
decode once warm, invalidated by changed shards, bounded, safe with worker processes."""

from __future__ import annotations

import os
import time
from itertools import islice
from pathlib import Path

import pytest
import torch

from _loader_data import make_shards
from pretrain.config import ConfigError, DataConfig
from pretrain.data import cache as cache_mod
from pretrain.data import clips as clips_mod
from pretrain.data.loader import build_loader

torch.set_num_threads(1)


def small_cfg(**kw) -> DataConfig:
    base = dict(num_frames=8, sampling_rate=2, img_size=32, batch_size=4, num_workers=0, shuffle_buffer=4,
                test_num_clips=2, test_num_crops=1, num_repeats=2)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 labeled 24-frame videos in 4 shards of 2."""
    d = tmp_path_factory.mktemp("cache_shards")
    return d, make_shards(d, 8, 2, seed=5)


@pytest.fixture
def count_opens(monkeypatch):
    """Counts calls of ``open_video`` in the loader's decode path (in this process: num_workers=0)."""
    calls = []
    real = clips_mod.open_video

    def counting(data, backend="decord", *a, **kw):
        calls.append(1)
        return real(data, backend, *a, **kw)

    monkeypatch.setattr(clips_mod, "open_video", counting)
    return calls


def _train(cfg, n, seed=7):
    loader = build_loader(cfg, "train", seed=seed)
    return [b for b in islice(loader, n)], loader


def test_cached_clips_equal_decoded_and_second_epoch_does_not_decode(shards, tmp_path, count_opens):
    d, info = shards
    ra = "rand-m7-n2-mstd0.5-inc1"
    plain, _ = _train(small_cfg(shards=str(d), randaug=ra), 8)  # 8 batches = 16 samples = 2 epochs
    assert len(count_opens) == 16
    cfg = small_cfg(shards=str(d), cache=str(tmp_path / "c"), randaug=ra)
    count_opens.clear()
    first, loader = _train(cfg, 4)  # epoch 1: every video decoded once and stored
    assert len(count_opens) == 8
    assert loader.cache.writes == 8 and loader.cache.hits == 0
    count_opens.clear()
    again, loader2 = _train(cfg, 8)  # epochs 1-2 again from a warm cache: nothing decoded
    assert len(count_opens) == 0
    assert loader2.cache.hits == 16
    assert loader.stats()["cached"] == 0 and loader2.stats()["cached"] == 16 == loader2.stats()["decoded"]
    for a, b in zip(plain, first + again[4:]):
        assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])  # same seed, same clips
    for a, b in zip(first, again):
        assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])
    assert not torch.equal(again[0]["video"][0], again[0]["video"][1])  # repeats augmented apart
    # eval mode: cached views equal decoded views
    ev_plain = list(build_loader(small_cfg(val_shards=str(d)), "eval"))
    ecfg = small_cfg(val_shards=str(d), cache=str(tmp_path / "c"))
    for cached in (8, 8):  # the same shards as the train runs above: their cache entries serve eval too
        ev_loader = build_loader(ecfg, "eval")
        ev = list(ev_loader)
        assert ev_loader.stats()["cached"] == cached and ev_loader.stats()["decoded"] == 8
        assert [b["key"] for b in ev] == [b["key"] for b in ev_plain]
        assert all(torch.equal(a["video"], b["video"]) for a, b in zip(ev, ev_plain))


def test_segment_sampling_through_cache_matches(shards, tmp_path):
    d, _ = shards
    plain, _ = _train(small_cfg(shards=str(d), sampling="segment"), 4)
    cfg = small_cfg(shards=str(d), sampling="segment", cache=str(tmp_path / "c"))
    _train(cfg, 4)
    cached, loader = _train(cfg, 4)
    assert loader.cache.hits > 0
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(plain, cached))


def test_changed_shards_invalidate(tmp_path, count_opens):
    d = tmp_path / "shards"
    make_shards(d, 4, 2, seed=1)
    root = tmp_path / "c"
    cfg = small_cfg(shards=str(d), cache=str(root), num_repeats=1)
    _train(cfg, 1)
    old_dirs = [p.name for p in root.iterdir()]
    assert len(old_dirs) == 1
    count_opens.clear()
    _, loader = _train(cfg, 1)
    assert len(count_opens) == 0 and loader.cache.hits == 4
    time.sleep(0.01)
    make_shards(d, 4, 2, seed=2)  # same names, new content (new manifest sha256s, sizes, mtimes)
    count_opens.clear()
    fresh, loader = _train(cfg, 1)
    assert len(count_opens) == 4 and loader.cache.hits == 0  # decoded again
    new_dirs = [p.name for p in root.iterdir()]
    assert len(new_dirs) == 1 and new_dirs != old_dirs  # the stale directory was removed
    ref, _ = _train(small_cfg(shards=str(d), num_repeats=1), 1)
    assert torch.equal(fresh[0]["video"], ref[0]["video"])  # the new content, not the old one
    # touching a shard (mtime) is a change too
    shard = sorted(d.glob("*.tar"))[0]
    os.utime(shard, ns=(time.time_ns(), time.time_ns() + 10**9))
    count_opens.clear()
    _train(cfg, 1)
    assert len(count_opens) == 4


def test_bound_respected(shards, tmp_path, count_opens):
    d, _ = shards
    one = 24 * 48 * 64 * 3  # bytes of one decoded video's frames
    cfg = small_cfg(shards=str(d), cache=str(tmp_path / "c"), cache_max_gb=3.5 * one / 1e9, num_repeats=1)
    plain, _ = _train(small_cfg(shards=str(d), num_repeats=1), 2)
    got, loader = _train(cfg, 2)
    assert loader.cache.writes == 3  # the 4th does not fit: checked before decoding it whole
    used = cache_mod.usage_bytes(loader.cache.dir)
    assert 3 * one < used <= 3.5 * one
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(plain, got))  # the rest decoded normally
    count_opens.clear()
    _, loader = _train(cfg, 2)
    assert len(count_opens) == 5 and loader.cache.hits == 3  # one epoch: 8 videos, 3 of them cached
    assert cache_mod.usage_bytes(loader.cache.dir) == used  # still within the bound
    assert not list(Path(loader.cache.dir).rglob(".tmp-*"))  # no temporary files left behind


def test_workers_share_cache_and_ram_mode(shards, tmp_path, monkeypatch):
    d, _ = shards
    monkeypatch.setattr(cache_mod, "ram_root", lambda: tmp_path / "shm")
    plain, _ = _train(small_cfg(shards=str(d), num_workers=2), 8)
    cfg = small_cfg(shards=str(d), num_workers=2, cache="ram")
    first, loader = _train(cfg, 8)
    entries = list((tmp_path / "shm").rglob("*.npy"))
    assert len(entries) == 8  # written by two worker processes, each video once
    second, loader2 = _train(cfg, 8)
    # counted in the workers. First run: every video decoded at least once, and twice at most when
    # both workers met it at the same moment (both miss; the atomic rename keeps one complete file)
    misses = loader.stats()["decoded"] - loader.stats()["cached"]
    assert 8 <= misses <= 16 and loader2.stats()["cached"] == 16
    assert not list((tmp_path / "shm").rglob(".tmp-*"))
    for a, b, c in zip(plain, first, second):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video"], c["video"])
    cache_mod.cleanup_ram_caches()  # what happens at exit
    assert not loader.cache.dir.exists()


def test_config_checks():
    with pytest.raises(ConfigError, match="data.cache_max_gb"):
        DataConfig(cache="ram", cache_max_gb=0)
