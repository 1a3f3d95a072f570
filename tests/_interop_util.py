"""Helpers shared by the export / interop / extract tests: tiny models with random weights, real shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pretrain.data.shard_writer import ShardSink, sample_meta
from pretrain.data.video_io import encode_mp4


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add noise to every parameter (biases, norms, LayerScale too): init values such as zero
    biases or unit norms would hide a dropped or zeroed tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_vit(seed: int = 0, **kw) -> nn.Module:
    """A VideoViT (default 64 wide, 2 deep, 4 frames of 32x32, 8x8 patches) with random weights."""
    from pretrain.models import VideoViT

    cfg = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)
    return randomize(VideoViT(**{**cfg, **kw}), seed)


def video_input(model_or_cfg, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random normalised clips ``(B, 3, T, H, W)`` matching a VideoViT's geometry."""
    mc = model_or_cfg.model_config if hasattr(model_or_cfg, "model_config") else model_or_cfg
    h, w = mc["img_size"] if isinstance(mc["img_size"], (list, tuple)) else (mc["img_size"],) * 2
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, mc.get("in_chans", 3), mc["num_frames"], h, w, generator=g)


def write_shards(out: str | Path, n: int, per_shard: int = 3, frames: int = 12, h: int = 40, w: int = 64,
                 corrupt: tuple = ()) -> list[str]:
    """Real H.264 mp4 videos of random noise in WebDataset shards; returns the good keys.

    Keys listed in ``corrupt`` get a cut-off mp4 (the loader must skip them).
    """
    rng = np.random.default_rng(0)
    good = []
    with ShardSink(out, maxcount=per_shard, classes=["a", "b"]) as sink:
        for i in range(n):
            key = f"vid{i:03d}"
            data = encode_mp4(rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), fps=8.0, crf=23, gop=4)
            if key in corrupt:
                data = data[: len(data) // 4]
            else:
                good.append(key)
            sink.write(key, data, sample_meta(i % 2, "ab"[i % 2], 8.0, frames, h, w, "test"))
    return good
