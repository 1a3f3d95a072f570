"""Bad input never stops the loader, and every skip is counted exactly in the main process."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch

from _loader_data import make_shards, make_video, write_tar
from pretrain.data import loader as loader_mod
from pretrain.data.loader import build_loader
from pretrain.data.stream import TrainOrder, list_shards

torch.set_num_threads(1)


def small_cfg(**kw):
    from pretrain.config import DataConfig

    base = dict(num_frames=8, sampling_rate=2, img_size=32, batch_size=4, num_workers=0, shuffle_buffer=4,
                test_num_clips=1, test_num_crops=1)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """18 samples in 4 shards, every 3rd corrupt (garbage / cut-off mp4 / empty), 6 bad in all."""
    d = tmp_path_factory.mktemp("mixed")
    info = make_shards(d, 18, 5, bad_every=3, seed=4)
    assert len(info["bad"]) == 6
    return d, info


def test_eval_skips_exactly_the_injected(mixed):
    d, info = mixed
    cfg = small_cfg(val_shards=str(d), num_workers=2)
    keys, skipped, by_reason = [], 0, Counter()
    for rank in (0, 1):
        loader = build_loader(cfg, "eval", rank=rank, world_size=2)
        keys += [k for b in loader for k in b["key"]]
        st = loader.stats()
        skipped += st["skipped"]
        by_reason.update(st["skipped_by_reason"])
    assert sorted(keys) == sorted(info["good"])
    assert skipped == len(info["bad"]) == 6
    assert all(r.startswith("decode:") for r in by_reason)  # typed decode errors, not crashes
    assert by_reason["decode:empty"] == 2  # the two zero-byte members


def _taken_keys(urls, seed, consumer, n_cons, buffer, pos):
    """Keys a role has taken up to ``pos``, recomputed from the stream alone."""
    order = TrainOrder(urls, seed, consumer, n_cons, buffer)
    keys = []
    for k in range(pos["round"] + 1):
        samples = list(order.round(k, lambda r: None))
        keys += [s.key for s in (samples if k < pos["round"] else samples[: pos["taken"]])]
    return keys


def test_train_skip_counts_exact_with_workers(mixed):
    d, info = mixed
    cfg = small_cfg(shards=str(d), num_workers=2, batch_size=3, num_repeats=1)
    urls = list_shards(str(d))
    for rank in (0, 1):
        loader = build_loader(cfg, "train", rank=rank, world_size=2, seed=9)
        seen = Counter(k for b in islice(loader, 14) for k in b["key"])
        state, stats = loader.state_dict(), loader.stats()
        expected_bad = expected_good = 0
        for role, pos in enumerate(state["roles"]):
            taken = _taken_keys(urls, 9, rank * 2 + role, 4, cfg.shuffle_buffer, pos)
            expected_bad += sum(k in info["bad"] for k in taken)
            expected_good += sum(k not in info["bad"] for k in taken)
        assert stats["skipped"] == expected_bad > 0
        assert stats["decoded"] == expected_good == sum(seen.values()) == 14 * 3
        assert not set(seen) & set(info["bad"])


def _tar_bytes(tmp_path, n=5):
    path = tmp_path / "full.tar"
    write_tar(path, [{"__key__": f"t{i}", "mp4": make_video(50 + i), "cls": b"1"} for i in range(n)])
    return path.read_bytes()


def _member_offsets(data: bytes) -> dict[str, int]:
    """Byte offset of each tar member's header."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m.offset for m in tf.getmembers()}


@pytest.mark.parametrize("cut", ["inside_data", "at_header", "between_samples"])
def test_truncated_tar(tmp_path, cut):
    data = _tar_bytes(tmp_path)
    offs = _member_offsets(data)
    end = {"inside_data": offs["t3.mp4"] + 512 + 1000, "at_header": offs["t3.cls"] + 200,
           "between_samples": offs["t3.cls"]}[cut]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a-0.tar").write_bytes(data[:end])
    write_tar(shards / "a-1.tar", [{"__key__": "u0", "mp4": make_video(60), "cls": b"2"}])
    loader = build_loader(small_cfg(val_shards=str(shards), num_workers=2), "eval")
    keys = sorted(k for b in loader for k in b["key"])
    assert keys == ["t0", "t1", "t2", "u0"]  # everything before the damage, and the next shard
    assert loader.stats()["skipped_by_reason"] == {"truncated_shard": 1}
    train = build_loader(small_cfg(shards=str(shards), batch_size=2), "train")
    batches = list(islice(train, 6))  # keeps going over the damaged shard
    assert len(batches) == 6 and train.stats()["skipped_by_reason"]["truncated_shard"] >= 1


def test_decode_timeout_skips(mixed):
    d, info = mixed
    loader = build_loader(small_cfg(val_shards=str(d), decode_timeout=1e-6), "eval")
    assert list(loader) == []
    st = loader.stats()
    assert st["decoded"] == 0 and st["skipped"] == 18
    assert st["skipped_by_reason"]["timeout"] >= len(info["good"])  # corrupt ones may fail first


def test_missing_members_and_bad_label(tmp_path):
    write_tar(tmp_path / "x-0.tar", [
        {"__key__": "ok", "mp4": make_video(1), "cls": b"1"},
        {"__key__": "novideo", "cls": b"1", "json": b"{}"},
        {"__key__": "badcls", "mp4": make_video(2), "cls": b"one"},
    ])
    loader = build_loader(small_cfg(val_shards=str(tmp_path)), "eval")
    assert [k for b in loader for k in b["key"]] == ["ok"]
    assert loader.stats()["skipped_by_reason"] == {"bad_label": 1, "no_video": 1}


def test_all_bad_train_data_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(loader_mod, "MAX_CONSECUTIVE_FAILURES", 20)
    write_tar(tmp_path / "b-0.tar", [{"__key__": f"g{i}", "mp4": b"not a video" * 50} for i in range(5)])
    with pytest.raises(RuntimeError, match="in a row"):
        next(iter(build_loader(small_cfg(shards=str(tmp_path)), "train")))
