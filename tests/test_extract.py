"""`tubelet extract`: every decodable video of real shards exactly once, K-clip averages, keys alongside."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _interop_util import tiny_vit, write_shards
from finetune.interop.native import save_encoder
from finetune.extract import data_config, extract_embeddings, merge
from launch.cli import main as tubelet


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """8 videos in 3 shards, one of them a cut-off mp4; an encoder of 4 frames at 32x32."""
    root = tmp_path_factory.mktemp("extract")
    good = write_shards(root / "shards", 8, per_shard=3, corrupt=("vid005",))
    enc = tiny_vit(seed=4)
    save_encoder(enc, root / "enc", mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), data={"sampling_rate": 2})
    return root, good, enc


def _reference(enc, root, num_clips):
    """Per-video mean of the encoder's pooled features over its K clips, from the loader directly."""
    from pretrain.data.loader import build_loader
    from pretrain.data.transforms import normalize_on_device

    cfg = data_config({"num_frames": 4, "img_size": 32, "sampling_rate": 2, "mean": (0.45,) * 3,
                       "std": (0.225,) * 3}, batch_size=3, num_workers=0, backend="decord")
    clips: dict = {}
    with torch.no_grad():
        for batch in build_loader(cfg, "eval", shards=str(root / "shards"), num_clips=num_clips, num_crops=1):
            feats = enc(normalize_on_device(batch["video"], cfg.mean, cfg.std))
            for key, view, f in zip(batch["key"], batch["view"].tolist(), feats):
                clips.setdefault(key, {})[view] = f
    return {k: torch.stack([v[i] for i in range(num_clips)]).mean(0) for k, v in clips.items()}


def test_extract_cli_npy_every_video_once(setup, capsys):
    root, good, enc = setup
    out = root / "feats.npy"
    args = ["extract", "--encoder", str(root / "enc"), "--shards", str(root / "shards"), "--out", str(out),
            "--num-clips", "3", "--batch-size", "4", "--num-workers", "2", "--no-progress"]
    assert tubelet(args) == 0
    printed = capsys.readouterr().out
    assert f"{len(good)} videos x 64 dims (3 clips each); skipped 1" in printed
    emb = np.load(out)
    side = json.loads((root / "feats.keys.json").read_text())
    assert side["keys"] == sorted(good) and emb.shape == (len(good), 64) and emb.dtype == np.float32
    assert side["labels"] == [int(k[3:]) % 2 for k in sorted(good)]
    assert side["num_clips"] == 3 and side["sampling_rate"] == 2 and side["stats"]["skipped"] == 1
    ref = _reference(enc, root, 3)
    assert set(ref) == set(good)
    for i, key in enumerate(side["keys"]):
        np.testing.assert_allclose(emb[i], ref[key].numpy(), rtol=0, atol=1e-5)
    # the K clips differ: the average is not just one clip repeated
    one = _reference(enc, root, 1)
    assert not all(torch.allclose(one[k], ref[k], atol=1e-4) for k in good)


def test_extract_safetensors_and_rank_split(setup, tmp_path):
    """Two ranks (as under torchrun) cover disjoint halves whose union is everything; same numbers."""
    from safetensors.numpy import load_file
    from safetensors import safe_open

    root, good, enc = setup
    out = tmp_path / "f.safetensors"
    args = ["extract", "--encoder", str(root / "enc"), "--shards", str(root / "shards"), "--out", str(out),
            "--num-clips", "2", "--num-workers", "0", "--no-progress"]
    assert tubelet(args) == 0
    data = load_file(str(out))
    with safe_open(str(out), "np") as f:
        keys = json.loads(f.metadata()["keys"])
    assert keys == sorted(good) and data["embeddings"].shape == (len(good), 64) and data["labels"].shape == (len(good),)

    cfg = data_config({"num_frames": 4, "img_size": 32, "sampling_rate": 2, "mean": (0.45,) * 3,
                       "std": (0.225,) * 3}, batch_size=2, num_workers=1, backend="decord")
    parts = [extract_embeddings(enc, cfg, str(root / "shards"), num_clips=2, rank=r, world_size=2, progress=False)
             for r in range(2)]
    mine = [set(p) - {"_stats"} for p in parts]
    assert mine[0] and mine[1] and not (mine[0] & mine[1]) and mine[0] | mine[1] == set(good)
    keys2, emb2, labels2, stats = merge(parts, 2)
    assert keys2 == keys and stats["skipped"] == 1
    np.testing.assert_allclose(emb2, data["embeddings"], rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="on two ranks"):
        merge([parts[0], parts[0]], 2)
