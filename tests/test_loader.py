"""The clip loader on real mp4 in real tar shards: shapes, backends, splitting, views, augmentation."""

from __future__ import annotations

import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
import torch

from _loader_data import encode_container, make_frames, make_shards, make_video, write_tar
from pretrain.config import ConfigError, DataConfig
from pretrain.data.loader import build_loader
from pretrain.data.transforms import normalize_on_device

torch.set_num_threads(1)


def small_cfg(**kw) -> DataConfig:
    base = dict(num_frames=8, sampling_rate=2, img_size=32, batch_size=4, num_workers=0, shuffle_buffer=4,
                test_num_clips=2, test_num_crops=1)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def shards6(tmp_path_factory):
    """12 labeled videos in 6 shards of 2."""
    d = tmp_path_factory.mktemp("shards6")
    info = make_shards(d, 12, 2, seed=1)
    return d, info


@pytest.fixture(scope="module")
def shards2(tmp_path_factory):
    """10 labeled videos in 2 shards (fewer shards than 2 ranks x 2 workers)."""
    d = tmp_path_factory.mktemp("shards2")
    info = make_shards(d, 10, 5, seed=2)
    return d, info


def test_batch_shapes_and_backends_agree(shards6):
    d, info = shards6
    out = {}
    for backend in ("decord", "pyav"):
        cfg = small_cfg(backend=backend, val_shards=str(d))
        out[backend] = list(build_loader(cfg, "eval"))
    a, b = out["decord"], out["pyav"]
    assert len(a) == len(b) == 12 * 2 // 4
    for x, y in zip(a, b):
        assert x["video"].dtype == torch.uint8 and x["video"].shape == (4, 3, 8, 32, 32)
        assert x["label"].dtype == torch.int64 and x["view"].dtype == torch.int64
        assert x["key"] == y["key"]
        assert torch.equal(x["video"], y["video"])  # same decoded frames -> same clips
        assert [info["labels"][k] for k in x["key"]] == x["label"].tolist()
    train = next(iter(build_loader(small_cfg(shards=str(d)), "train")))
    assert train["video"].shape == (4, 3, 8, 32, 32) and train["video"].dtype == torch.uint8
    assert train["view"].tolist() == [0] * 4 and "flow" not in train


@pytest.mark.parametrize("fixture", ["shards6", "shards2"])
def test_eval_covers_each_key_once_2_ranks_2_workers(fixture, request):
    d, info = request.getfixturevalue(fixture)
    cfg = small_cfg(val_shards=str(d), num_workers=2, test_num_clips=2, test_num_crops=3, batch_size=5)
    seen = Counter()
    decoded = 0
    for rank in (0, 1):
        loader = build_loader(cfg, "eval", rank=rank, world_size=2)
        for batch in loader:
            assert batch["video"].shape[1:] == (3, 8, 32, 32)
            seen.update(zip(batch["key"], batch["view"].tolist()))
        decoded += loader.stats()["decoded"]
        assert loader.stats()["skipped"] == 0
    assert decoded == 10 if fixture == "shards2" else decoded == 12
    assert set(k for k, _ in seen) == set(info["good"])
    assert seen == Counter({(k, v): 1 for k in info["good"] for v in range(6)})  # 2 clips x 3 crops, once


def test_train_equal_batches_per_rank_2_ranks_2_workers(shards6):
    d, info = shards6
    cfg = small_cfg(shards=str(d), num_workers=2, batch_size=3, num_repeats=2)
    loaders = [build_loader(cfg, "train", rank=r, world_size=2, seed=5) for r in (0, 1)]
    per_epoch = loaders[0].batches_per_epoch
    assert per_epoch == loaders[1].batches_per_epoch == 12 * 2 // (2 * 3)
    keys = []
    for loader in loaders:
        batches = list(islice(loader, 3 * per_epoch))  # three epochs' worth, then stop
        assert len(batches) == 3 * per_epoch
        assert all(b["video"].shape == (3, 3, 8, 32, 32) for b in batches)
        assert loader.state_dict()["batches"] == 3 * per_epoch
        keys.append([k for b in batches for k in b["key"]])
    assert keys[0] != keys[1]  # ranks read different streams
    assert set(keys[0]) | set(keys[1]) == set(info["good"])  # resampling reaches every video


def test_repeated_sampling_decodes_once(shards6):
    d, _ = shards6
    for temporal in (False, True):
        cfg = small_cfg(shards=str(d), num_repeats=4, batch_size=4, repeat_temporal=temporal)
        loader = build_loader(cfg, "train", seed=3)
        batches = list(islice(loader, 5))
        for b in batches:
            assert len(set(b["key"])) == 1  # R clips of one video
            clips = b["video"]
            distinct = {tuple(c.flatten()[::97].tolist()) for c in clips}
            assert len(distinct) == 4  # four different augmentations
        assert loader.stats()["decoded"] == 5  # one decode per video, not per clip


def _flipped(clip: torch.Tensor) -> bool:
    """Red gradient runs dark->bright left->right unless the clip was mirrored."""
    red = clip[0].float()
    return bool(red[..., :4].mean() > red[..., -4:].mean())


def test_hflip_switch(shards6):
    d, _ = shards6
    for hflip in (False, True):
        cfg = small_cfg(shards=str(d), hflip=hflip, batch_size=8, num_repeats=2)
        clips = torch.cat([b["video"] for b in islice(build_loader(cfg, "train", seed=1), 6)])
        flips = [_flipped(c) for c in clips]
        if hflip:
            assert 0 < sum(flips) < len(flips)
        else:
            assert not any(flips)


def test_third_party_shard_members(tmp_path):
    frames = make_frames(7)
    samples = [
        {"__key__": "a", "mp4": make_video(7), "cls": b"3"},
        {"__key__": "b", "avi": encode_container(frames, "avi", "mpeg4"), "cls": b"1"},
        {"__key__": "c", "mkv": encode_container(frames, "matroska", "libx264"), "cls": b"0"},
        {"__key__": "d", "webm": encode_container(frames, "webm", "libvpx"), "cls": b"2"},
        {"__key__": "e", "mp4": make_video(8)},  # no label at all
    ]
    write_tar(tmp_path / "third-000.tar", samples)
    cfg = small_cfg(val_shards=str(tmp_path), test_num_clips=1)
    got = {}
    loader = build_loader(cfg, "eval")
    for b in loader:
        got.update(zip(b["key"], b["label"].tolist()))
    assert got == {"a": 3, "b": 1, "c": 0, "d": 2, "e": -1}
    assert loader.stats() == {"decoded": 5, "skipped": 0, "skipped_by_reason": {}}
    assert loader.num_samples is None  # no manifest: count unknown


def test_shard_spec_forms(shards6, tmp_path):
    d, info = shards6
    tars = sorted(Path(d).glob("*.tar"))
    plain = tmp_path / "plain"
    plain.mkdir()
    for t in tars:
        shutil.copy(t, plain / t.name)  # a directory without manifest.json
    specs = [str(d), str(plain), str(d / "*.tar"), str(d / "shard-{000000..000005}.tar"),
             "::".join(f"pipe:cat {t}" for t in tars)]
    for spec in specs:
        cfg = small_cfg(test_num_clips=1, batch_size=12)
        keys = [k for b in build_loader(cfg, "eval", shards=spec) for k in b["key"]]
        assert sorted(keys) == sorted(info["good"]), spec
    with pytest.raises(ConfigError, match="data.val_shards"):
        build_loader(small_cfg(val_shards=str(tmp_path / "nope")), "eval")
    with pytest.raises(ConfigError, match="data.shards"):
        build_loader(small_cfg(), "train")


def test_eval_views_positions(tmp_path):
    write_tar(tmp_path / "s-0.tar", [{"__key__": "v", "mp4": make_video(3, t=40), "cls": b"0"}])
    cfg = small_cfg(val_shards=str(tmp_path), num_frames=4, sampling_rate=2, batch_size=4)
    batches = list(build_loader(cfg, "eval", num_clips=3, num_crops=3))
    assert [len(b["key"]) for b in batches] == [4, 4, 1]  # the last batch is partial
    assert torch.cat([b["view"] for b in batches]).tolist() == list(range(9))
    views = torch.cat([b["video"] for b in batches])
    assert views.shape == (9, 3, 4, 32, 32)
    red = views[:, 0].float().mean(dim=(1, 2, 3)).view(3, 3)   # (clip, crop)
    blue = views[:, 2].float().mean(dim=(1, 2, 3)).view(3, 3)
    assert (red[:, 0] < red[:, 1]).all() and (red[:, 1] < red[:, 2]).all()  # left < centre < right
    assert (blue[0] < blue[1]).all() and (blue[1] < blue[2]).all()          # clips later in time


def test_flow_follows_motion(shards6):
    d, _ = shards6
    cfg = small_cfg(shards=str(d), flow=True, hflip=False, train_crop="center", img_size=48)
    b = next(iter(build_loader(cfg, "train")))
    assert b["flow"].dtype == torch.float16 and b["flow"].shape == (4, 2, 7, 48, 48)
    # the green square moves right by 2 px per source frame, i.e. 4 px between clip frames
    moving = b["video"][:, 1, 1:].float() > 128  # (B, T-1, H, W) square pixels in frame t+1
    dx = b["flow"][:, 0].float()[moving]
    assert dx.mean() > 1.0


def test_normalize_on_device():
    v = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = normalize_on_device(v, mean, std)
    ref = (v.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(3, 1, 1, 1)
    assert x.dtype == torch.float32 and x.shape == v.shape
    assert torch.allclose(x.double(), ref, atol=1e-5)
    assert normalize_on_device(v[0], mean, std).shape == (3, 4, 8, 8)


def test_preview_command_writes_png(shards6, tmp_path):
    from launch.cli import main

    d, _ = shards6
    out = tmp_path / "grid.png"
    rc = main(["preview", "--shards", str(d), "--out", str(out), "--num", "3", "--frames", "4",
               "data.num_frames=8", "data.img_size=32"])
    assert rc == 0
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > img.shape[0]  # 3 rows x 4 frames
    assert main(["preview", "--shards", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_third_party_members_after_decord_is_loaded():
    """webm fixtures still encode once decord (bundling its own libvpx) is in the process."""
    import decord  # noqa: F401

    frames = make_frames(3)
    data = encode_container(frames, "webm", "libvpx")
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML magic: a real webm
