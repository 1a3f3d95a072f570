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
            img = zero_padded_yuv420p(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p"))
            for packet in stream.encode(img):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def zero_padded_yuv420p(img):
    """Copy of a yuv420p frame whose row padding (linesize beyond the width) is zeros.

    libx264 reads that padding at widths of 16 mod 32 px, so with FFmpeg's uninitialised padding
    the same pictures encode to different bytes -- and slightly different decoded pixels (max 17
    levels measured at 16x16) -- from run to run. Zeros make encoding a function of the pictures.
    """
    import av

    out = av.VideoFrame(img.width, img.height, "yuv420p")
    for src, dst in zip(img.planes, out.planes):
        rows = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)[: dst.height, : dst.width]
        buf = np.zeros((dst.height, dst.line_size), np.uint8)
        buf[:, : dst.width] = rows
        dst.update(buf)
    return out
