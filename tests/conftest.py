"""Shared fixtures: a small synthetic shard dataset and a helper that writes real videos.

    def test_x(synth_dir):                       # session-scoped, written once (~2 s)
        train = synth_dir / "train"              # shards + manifest.json + classes.json

    from conftest import make_mp4                # plain helper (tests/ is on sys.path)
    data = make_mp4(frames=16, size=32)          # H.264 mp4 bytes
    make_mp4(tmp_path / "a.avi", codec="mpeg4")  # also written to a file
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

# Layout of ``synth_dir`` (the defaults of ``tubelet synth`` except for the counts):
SYNTH_KW = dict(videos_per_class=4, pretrain_videos=80, val_per_class=2, test_per_class=2, frames=16,
                size=32, fps=8.0, seed=0, difficulty="easy", shard_size=8)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small embedded-benchmark dataset written by ``tubelet synth`` code (``write_synth``).

    Layout (10 motion classes, 16 frames of 32x32 RGB at 8 fps, H.264, keyframe every 4 frames)::

        synth_dir/pretrain/  80 videos, unlabeled (json label null, no .cls)  10 shards x 8
        synth_dir/train/     40 videos, 4 per class, labels 0..9              5 shards x 8
        synth_dir/val/       20 videos, 2 per class                           3 shards (8, 8, 4)
        synth_dir/test/      20 videos, 2 per class                           3 shards (8, 8, 4)

    Each split holds ``shard-00000N.tar`` (members ``<split>_<index:06d>.mp4/.json[/.cls]``),
    ``manifest.json`` and ``classes.json`` (class names, ``pretrain.data.synth.CLASSES``).
    Video ``i`` of a split has class ``i % 10``. Treat it as read-only (session-scoped);
    copy it to ``tmp_path`` before corrupting anything. ``SYNTH_KW`` holds the arguments.
    """
    from pretrain.data.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    write_synth(out, progress=False, **SYNTH_KW)
    return out


def make_mp4(path: str | Path | None = None, frames: int = 16, size: int | tuple[int, int] = 32,
             fps: float = 8.0, seed: int = 0, codec: str = "libx264", gop: int = 4,
             container: str | None = None) -> bytes:
    """Encode a real video of a moving square over noise -> bytes (also written to ``path``).

    ``size``: S or (H, W). ``codec``: ``libx264`` (mp4), ``mpeg4`` (avi), ``libvpx`` (webm),
    ``mjpeg``...; ``container`` defaults from the path suffix, else ``mp4``.
    """
    import sys

    if codec.startswith("libvpx") and "decord" in sys.modules:
        # decord bundles libvpx 6 with global symbols; once it is loaded, PyAV's libvpx encoders fail
        # ("ABI version mismatch"), so encode in a fresh interpreter
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(1) as pool:
            data = pool.apply(make_mp4, (None, frames, size, fps, seed, codec, gop, container or (
                Path(path).suffix.lstrip(".") if path else "webm")))
        if path is not None:
            Path(path).write_bytes(data)
        return data
    import av

    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 60, (frames, h, w, 3), dtype=np.uint8)
    for t in range(frames):  # a bright square moving right: decodable content that changes per frame
        x = (2 * t) % max(1, w - 8)
        video[t, h // 4: h // 4 + 8, x: x + 8] = 230
    fmt = container or (Path(path).suffix.lstrip(".") if path else "mp4")
    fmt = {"mkv": "matroska"}.get(fmt, fmt)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height = w, h
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            s.options = {"g": str(gop), "bf": "0", "preset": "veryfast"}
        else:
            s.gop_size = gop
        for f in video:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
