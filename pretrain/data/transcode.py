"""Per-input work of ``tubelet shard``, run inside an isolated child process.

    data, ext, info = process_item("clip.avi", copy=False, backend="decord", short_side=320, fps=None,
                                   keyint=8, max_duration=None, min_frames=2)

Kept apart from :mod:`pretrain.data.make_shards` so a worker imports only PyAV, numpy and the decoder
(0.2 s), not webdataset/torch (3-7 s on a busy 2-core machine): worker start-up is paid again
after every crash or timeout.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av  # imported with the module: a worker has it loaded before its first (timed) task

from pretrain.data.video_io import zero_padded_yuv420p  # noqa: F401  (re-exported)

from pretrain.data.decode import DecodeError, _av, error_text
from pretrain.data.isolate import decode_check

# container (PyAV format name) -> shard extensions the loader reads; the file suffix picks among them
_CONTAINER_EXTS = {"mov,mp4,m4a,3gp,3g2,mj2": ("mp4", "mov"), "matroska,webm": ("mkv", "webm"), "avi": ("avi",)}


def _out_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    if short_side and min(w, h) > short_side:  # never upscale
        s = short_side / min(w, h)
        w, h = w * s, h * s
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)  # yuv420p needs even sizes


def transcode(data: bytes, short_side: int = 0, fps: float | None = None, keyint: int = 8,
              max_duration: float | None = None, crf: int = 23, preset: str = "veryfast") -> bytes:
    """Re-encode video ``data`` as H.264 mp4 (video only), streaming frame by frame.

    Short side scaled down to ``short_side`` (0: keep), frames dropped/repeated to reach ``fps``
    (None: keep the source rate), keyframe every ``keyint`` frames, stop after ``max_duration`` s.
    Raises :class:`DecodeError` when the source does not decode.
    """
    _av()
    out = io.BytesIO()
    n_out = 0
    log: list = []
    try:
        with av.logging.Capture() as log, av.open(io.BytesIO(data), mode="r") as src:
            if not src.streams.video:
                raise DecodeError("no_video_stream")
            s = src.streams.video[0]
            in_rate = s.average_rate or s.guessed_rate or Fraction(25)
            rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(in_rate).limit_denominator(1001)
            with av.open(out, mode="w", format="mp4") as dst:
                ost, t0, next_slot = None, None, 0.0
                for i, frame in enumerate(src.decode(s)):
                    t = frame.time if frame.time is not None else i / float(in_rate)
                    t0 = t if t0 is None else t0
                    t -= t0
                    if max_duration and t >= max_duration:
                        break
                    if ost is None:
                        w, h = _out_size(frame.width, frame.height, short_side)
                        ost = dst.add_stream("libx264", rate=rate)
                        ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                        ost.options = {"crf": str(crf), "g": str(keyint), "preset": preset, "bf": "0"}
                    reps = 1
                    if fps:  # this frame fills every output slot that starts before it
                        reps = 0
                        while next_slot <= t + 1e-6:
                            reps += 1
                            next_slot += 1.0 / fps
                    if not reps:
                        continue
                    img = zero_padded_yuv420p(frame.reformat(width=w, height=h, format="yuv420p",
                                                             interpolation="AREA"))
                    img.time_base = Fraction(1) / rate  # constant frame rate: output frame n at n / rate
                    for _ in range(reps):
                        img.pts = n_out
                        for pkt in ost.encode(img):
                            dst.mux(pkt)
                        n_out += 1
                if ost is None:
                    raise DecodeError("no_frames")
                for pkt in ost.encode():
                    dst.mux(pkt)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError("decode_failed", error_text(e, log)) from None
    return out.getvalue()


def _copy_ext(data: bytes, suffix: str) -> str:
    """Shard extension for original bytes: from the container, not the (possibly wrong) file name."""
    _av()
    log: list = []
    try:
        with av.logging.Capture() as log, av.open(io.BytesIO(data)) as c:
            name = c.format.name
    except Exception as e:
        raise DecodeError("open_failed", error_text(e, log)) from None
    if name not in _CONTAINER_EXTS:
        raise DecodeError("unsupported_container", f"{name} (the loader reads mp4/mov/mkv/webm/avi; re-encode instead of --copy)")
    exts = _CONTAINER_EXTS[name]
    return suffix if suffix in exts else exts[0]


def process_item(path: str, copy: bool, backend: str, short_side: int, fps: float | None, keyint: int,
                 max_duration: float | None, min_frames: int) -> tuple[bytes, str, dict[str, Any]]:
    """Read, (re-encode,) and fully decode one input -> (video bytes, extension, decode info).

    Runs in an :class:`IsolatedPool` child; every failure raises :class:`DecodeError`.
    """
    if not os.path.exists(path):
        raise DecodeError("missing", "no such file")
    if os.path.isdir(path):
        raise DecodeError("not_a_file", "is a directory")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DecodeError("unreadable", str(e)[:200]) from None
    if not data:
        raise DecodeError("empty", "zero-byte file")
    if copy:
        ext = _copy_ext(data, Path(path).suffix.lower().lstrip("."))
    else:
        data, ext = transcode(data, short_side, fps, keyint, max_duration), "mp4"
    info = decode_check(data, backend)
    if info["num_frames"] < min_frames:
        raise DecodeError("too_short", f"{info['num_frames']} frame(s) < --min-frames {min_frames}")
    return data, ext, info
