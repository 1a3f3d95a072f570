"""Encode frames to H.264 mp4 bytes with PyAV (test fixtures, synth, re-encoding)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np


def encode_mp4(frames: np.ndarray, fps: float = 8.0, crf: int = 18, gop: int = 8,
               preset: str = "veryfast") -> bytes:
    """Encode ``frames: (T, H, W, 3) uint8 RGB`` as an H.264 mp4 in memory.

    H and W are padded up to even numbers (yuv420p needs them). ``gop`` is the keyframe interval:
    small values give fast random access when sampling clips.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to encode")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "preset": preset, "bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
