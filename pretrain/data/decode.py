"""Decode videos from bytes with decord (default) or PyAV (fallback); one interface.

    vid = open_video(data, backend="decord")   # raises DecodeError on bad input
    vid.num_frames, vid.fps, vid.height, vid.width
    frames = vid.get([0, 4, 8])                # (N, H, W, 3) uint8 RGB
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


class DecodeError(Exception):
    """A video could not be decoded; ``reason`` is a short machine-readable cause."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def available_backends() -> list[str]:
    out = []
    try:
        import decord  # noqa: F401

        out.append("decord")
    except Exception:
        pass
    try:
        import av  # noqa: F401

        out.append("pyav")
    except Exception:
        pass
    return out


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


class _DecordVideo:
    def __init__(self, data: bytes):
        import decord

        try:
            self._vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
            n = len(self._vr)
        except Exception as e:  # decord raises DECORDError / RuntimeError
            raise DecodeError("open_failed", str(e)[:200]) from None
        if n <= 0:
            raise DecodeError("no_frames")
        self.num_frames = n
        self.fps = float(self._vr.get_avg_fps() or 0.0) or 25.0
        shape = self._vr[0].shape if n else (0, 0, 3)
        self.height, self.width = int(shape[0]), int(shape[1])

    def get(self, indices) -> np.ndarray:
        idx = [int(i) for i in indices]
        try:
            out = self._vr.get_batch(idx).asnumpy()
        except Exception as e:
            raise DecodeError("read_failed", str(e)[:200]) from None
        return np.ascontiguousarray(out)


class _PyAVVideo:
    def __init__(self, data: bytes):
        import av

        try:
            with av.open(io.BytesIO(data), mode="r") as c:
                if not c.streams.video:
                    raise DecodeError("no_video_stream")
                s = c.streams.video[0]
                s.thread_type = "NONE"
                rate = s.average_rate or s.guessed_rate
                self.fps = float(rate) if rate else 25.0
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError("open_failed", str(e)[:200]) from None
        if not frames:
            raise DecodeError("no_frames")
        self._frames = frames
        self.num_frames = len(frames)
        self.height, self.width = frames[0].shape[:2]

    def get(self, indices) -> np.ndarray:
        try:
            return np.stack([self._frames[int(i)] for i in indices])
        except IndexError as e:
            raise DecodeError("read_failed", str(e)) from None


def open_video(data: bytes, backend: str = "decord"):
    """Open video ``data`` (mp4/avi/webm/mkv bytes). Raises :class:`DecodeError` on bad input."""
    if not data:
        raise DecodeError("empty")
    if backend == "decord":
        try:
            import decord  # noqa: F401
        except ImportError:
            backend = "pyav"  # no decord wheel here (e.g. aarch64): same output from PyAV
    if backend == "decord":
        return _DecordVideo(data)
    if backend == "pyav":
        return _PyAVVideo(data)
    raise ValueError(f"unknown backend {backend!r}")


def video_info(data: bytes, backend: str = "decord") -> VideoInfo:
    v = open_video(data, backend)
    return VideoInfo(v.num_frames, v.fps, v.height, v.width)
