"""RandAugment per clip (``data.randaug``): timm string parsed, one draw of ops per clip applied to
every frame, different across clips, reproducible, train mode only."""

from __future__ import annotations

import math
from itertools import islice

import numpy as np
import pytest
import torch

from _loader_data import make_shards
from pretrain.config import ConfigError, DataConfig
from pretrain.data.loader import build_loader
from pretrain.data.randaug import ClipRandAugment, RandAugSpec

torch.set_num_threads(1)
VIDEOMAE = "rand-m7-n4-mstd0.5-inc1"


def test_parse_videomae_string():
    s = RandAugSpec.parse(VIDEOMAE)
    assert (s.m, s.n, s.mstd, s.inc, s.p, s.mmax) == (7, 4, 0.5, True, 0.5, None)
    assert RandAugSpec.parse("rand-m9-n3-mstd101").mstd == math.inf
    assert RandAugSpec.parse("rand-m9-mmax12-p0.7-inc0") == RandAugSpec(m=9, n=2, mmax=12, p=0.7, inc=False)
    ra = ClipRandAugment(VIDEOMAE, img_size=32)  # the timm op table it builds agrees
    assert ra.num_layers == 4 and len(ra.ops) == 15
    assert all(op.magnitude == 7 and op.magnitude_std == 0.5 and op.prob == 0.5 for op in ra.ops)
    assert "SolarizeIncreasing" in {op.name for op in ra.ops}  # inc1: the increasing variants
    for bad in ("m7-n4", "rand-m7-x3", "rand-mfoo", "rand-n0", "rand-p0"):
        with pytest.raises(ValueError):
            RandAugSpec.parse(bad)
    with pytest.raises(ConfigError, match="data.randaug"):
        DataConfig(randaug="rand-m7-q4")


def _static_clip(seed: int, t: int = 6, s: int = 32) -> torch.Tensor:
    """(3, t, s, s) uint8: one random structured image repeated in every frame."""
    rng = np.random.default_rng(seed)
    img = np.zeros((3, s, s), np.uint8)
    img[0] = np.linspace(0, 255, s, dtype=np.float32).astype(np.uint8)[None, :]
    img[1] = rng.integers(0, 256, (s, s), dtype=np.uint8)
    img[2, s // 4: s // 2, s // 3: 2 * s // 3] = 200
    return torch.from_numpy(np.ascontiguousarray(np.repeat(img[:, None], t, axis=1)))


def test_same_ops_on_every_frame_different_across_clips():
    ra = ClipRandAugment(VIDEOMAE, img_size=32)
    rng = np.random.default_rng(0)
    draws, changed = [], 0
    for k in range(30):
        clip = _static_clip(k)
        ref = clip.clone()
        ops = ra.draw(rng)
        draws.append(tuple((name, args) for name, _, args, _ in ops))
        ra.apply_(clip, ops)
        assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(1, clip.shape[1]))  # identical frames
        changed += not torch.equal(clip, ref)
    assert changed >= 20  # augmentation really happens (4 ops at p=0.5 each)
    assert len(set(draws)) >= 25  # ops and magnitudes differ from clip to clip
    # reproducible from the generator
    again = [tuple((n, a) for n, _, a, _ in ra.draw(g)) for g in [np.random.default_rng(0)]][0]
    assert again == draws[0]


def test_frames_of_a_real_clip_get_the_same_transform():
    """A moving clip: every frame is transformed exactly like the op list applied to it alone."""
    ra = ClipRandAugment("rand-m9-n2-mstd0", img_size=32)
    rng = np.random.default_rng(1)
    clip = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 4, 32, 32), dtype=np.uint8))
    for _ in range(10):
        ops = ra.draw(rng)
        out = ra.apply_(clip.clone(), ops)
        for t in range(4):
            single = ra.apply_(clip[:, t:t + 1].clone(), ops)
            assert torch.equal(out[:, t:t + 1], single)


def test_loader_train_only(tmp_path):
    d = tmp_path / "s"
    make_shards(d, 4, 2, seed=4)
    kw = dict(num_frames=8, sampling_rate=2, img_size=32, batch_size=4, num_workers=0, shuffle_buffer=4,
              test_num_clips=1, test_num_crops=1, shards=str(d), val_shards=str(d))
    plain = list(islice(build_loader(DataConfig(**kw), "train", seed=3), 2))
    aug = list(islice(build_loader(DataConfig(**kw, randaug=VIDEOMAE), "train", seed=3), 2))
    assert [b["key"] for b in plain] == [b["key"] for b in aug]  # same order: randaug draws come last
    diff = sum(not torch.equal(x, y) for a, b in zip(plain, aug) for x, y in zip(a["video"], b["video"]))
    assert diff >= 4
    ev_plain = list(build_loader(DataConfig(**kw), "eval"))
    ev_aug = list(build_loader(DataConfig(**kw, randaug=VIDEOMAE), "eval"))
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(ev_plain, ev_aug))
