"""Real test videos and shards for the loader tests (H.264 mp4 via PyAV, tar via ShardSink).

Every video has a horizontal red gradient (dark left, bright right: shows flips), a green square
moving right by 2 px per frame (shows motion direction) and a blue level rising with time (shows
which frames a clip took).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds

from pretrain.data.shard_writer import ShardSink, sample_meta
from pretrain.data.video_io import encode_mp4


def make_frames(seed: int, t: int = 24, h: int = 48, w: int = 64) -> np.ndarray:
    """(t, h, w, 3) uint8 frames, see the module docstring."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = np.linspace(20, 235, w, dtype=np.float32).astype(np.uint8)[None, None, :]
    y0 = int(rng.integers(4, h - 16))
    for i in range(t):
        frames[i, ..., 2] = min(255, 10 + i * 240 // max(t - 1, 1))
        x0 = (int(rng.integers(0, 8)) + 2 * i) % (w - 12)
        frames[i, y0:y0 + 12, x0:x0 + 12, 1] = 230
    return frames


def make_video(seed: int, t: int = 24, h: int = 48, w: int = 64, fps: float = 8.0) -> bytes:
    return encode_mp4(make_frames(seed, t, h, w), fps=fps, gop=4)


def encode_container(frames: np.ndarray, fmt: str, codec: str, fps: int = 8) -> bytes:
    """Encode ``frames`` into another container (avi/matroska/webm) for third-party shards."""
    import sys

    if codec.startswith("libvpx") and "decord" in sys.modules:
        # once decord (which bundles its own libvpx) is loaded, PyAV's libvpx encoder fails with
        # "ABI version mismatch": encode in a fresh interpreter
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(encode_container, (frames, fmt, codec, fps))
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def bad_videos(good: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Broken payloads that must be skipped: garbage, a cut-off mp4, an empty member."""
    return {"garbage": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
            "cut": good[: len(good) // 3],
            "empty": b""}


def make_shards(out: str | Path, n: int, per_shard: int, *, bad_every: int = 0, frames: int = 24,
                seed: int = 0, labeled: bool = True) -> dict:
    """Write ``n`` samples into shards of ``per_shard``; every ``bad_every``-th is corrupt.

    Returns ``{"good": [keys], "bad": {key: kind}, "labels": {key: label}}``.
    """
    rng = np.random.default_rng(seed)
    good, bad, labels = [], {}, {}
    kinds = ["garbage", "cut", "empty"]
    classes = ["c0", "c1", "c2"] if labeled else None
    with ShardSink(out, maxcount=per_shard, classes=classes) as sink:
        for i in range(n):
            data = make_video(seed * 1000 + i, t=frames)
            label = i % 3 if labeled else None
            if bad_every and i % bad_every == bad_every - 1:
                kind = kinds[len(bad) % len(kinds)]
                key = f"bad{i:04d}"
                data = bad_videos(data, rng)[kind]
                bad[key] = kind
            else:
                key = f"vid{i:04d}"
                good.append(key)
            labels[key] = -1 if label is None else label
            sink.write(key, data, sample_meta(label, None if label is None else classes[label], 8.0, frames,
                                              48, 64, "test"))
    return {"good": good, "bad": bad, "labels": labels}


def write_tar(path: str | Path, samples: list[dict]) -> None:
    """A raw tar of webdataset samples (``{"__key__": k, "mp4": b, ...}``), no manifest."""
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
