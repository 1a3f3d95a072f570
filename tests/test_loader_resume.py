"""Exact resume: a loader rebuilt from ``state_dict()`` continues bit-identically."""

from __future__ import annotations

import json
from itertools import islice

import pytest
import torch

from _loader_data import make_shards
from pretrain.config import DataConfig
from pretrain.data.loader import build_loader

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """17 samples (2 corrupt) in 4 shards, one of them cut short: resumes cross rounds, skips,
    shard events and repeat boundaries."""
    d = tmp_path_factory.mktemp("resume")
    make_shards(d, 17, 5, bad_every=6, seed=6)
    last = sorted(d.glob("*.tar"))[1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size * 2 // 3])
    return d


def cfg_for(d, workers: int) -> DataConfig:
    # batch 4 with 3 repeats: batches end in the middle of a video's repeats
    return DataConfig(shards=str(d), num_frames=4, sampling_rate=3, img_size=24, batch_size=4, num_repeats=3,
                      num_workers=workers, shuffle_buffer=3, train_crop="random_resized")


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        assert torch.equal(x["label"], y["label"])
        assert torch.equal(x["video"], y["video"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise_identical(data, workers):
    cfg = cfg_for(data, workers)
    total = 24  # > one pass over the data (14 good videos x 3 repeats = 42 clips ~ 11 batches)
    ref_loader = build_loader(cfg, "train", rank=1, world_size=2, seed=7)
    ref = list(islice(ref_loader, total))
    ref_stats = ref_loader.stats()
    assert ref_stats["skipped_by_reason"]["truncated_shard"] > 0  # the cut shard was met ...
    assert ref_stats["skipped"] > ref_stats["skipped_by_reason"]["truncated_shard"]  # ... and corrupt videos
    for n in (5, 13):
        first = build_loader(cfg, "train", rank=1, world_size=2, seed=7)
        _same(list(islice(first, n)), ref[:n])
        state = json.loads(json.dumps(first.state_dict()))  # plain data: survives JSON / torch.save
        resumed = build_loader(cfg, "train", rank=1, world_size=2, seed=7, state=state)
        assert resumed.stats() == first.stats()
        _same(list(islice(resumed, total - n)), ref[n:])
        assert resumed.stats() == ref_stats  # skip counts stay exact across the resume
        assert resumed.state_dict() == ref_loader.state_dict()


def test_iterating_again_continues(data):
    cfg = cfg_for(data, 2)
    ref = list(islice(build_loader(cfg, "train", seed=3), 8))
    loader = build_loader(cfg, "train", seed=3)
    got = list(islice(loader, 3)) + list(islice(loader, 5))  # prefetched batches are not lost
    _same(got, ref)


def test_state_mismatch_is_refused(data):
    state = build_loader(cfg_for(data, 2), "train", seed=1).state_dict()
    with pytest.raises(ValueError, match="num_workers"):
        build_loader(cfg_for(data, 0), "train", seed=1, state=state)
    with pytest.raises(ValueError, match="seed"):
        build_loader(cfg_for(data, 2), "train", seed=2, state=state)
