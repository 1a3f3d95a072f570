"""The decode wrapper under bad input: typed errors only, both backends agree, crashes stay in children.

Measured (see pretrain/data/decode.py): decord 0.6 segfaults on ~0.07 % of random mutations of an
mp4 (corrupt sample tables) when reading from memory; ``open_video``'s PyAV pre-check rejects all
of those seen, and :mod:`pretrain.data.isolate` contains any that remain.
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections import Counter

import numpy as np
import pytest

from conftest import make_mp4
from pretrain.data.decode import DecodeError, available_backends, open_video, probe_container, video_info
from pretrain.data.isolate import IsolatedPool, check_video, decode_check

BACKENDS = [b for b in ("decord", "pyav") if b in available_backends()]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random corruption: bit flips, truncation, chunk deletion, overwrite or duplication."""
    b = bytearray(data)
    n = len(b)
    kind = ["flip", "truncate", "delete", "overwrite", "duplicate"][int(rng.integers(5))]
    if kind == "flip":
        for _ in range(int(rng.integers(1, 20))):
            b[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        b = b[: int(rng.integers(n))]
    elif kind == "delete":
        i = int(rng.integers(n))
        del b[i: i + int(rng.integers(1, n // 10))]
    elif kind == "overwrite":
        i, k = int(rng.integers(n)), int(rng.integers(1, 64))
        b[i: i + k] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
    else:
        i = int(rng.integers(n))
        b[i:i] = b[i: i + int(rng.integers(1, 200))]
    return kind, bytes(b)


def stsz_corrupted(data: bytes, entry: int = 4, add: int = 1 << 23) -> bytes:
    """``data`` with one sample size in the mp4 ``stsz`` table grown by ``add`` bytes (past the end of
    the file): a single-field corruption that makes decord 0.6 segfault when reading from memory."""
    off, end = 0, len(data)
    for name in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsz"):
        while off + 8 <= end:
            size, typ = struct.unpack(">I4s", data[off: off + 8])
            if typ == name:
                break
            off += size
        else:
            raise ValueError(f"no {name!r} box")
        if name != b"stsz":
            end, off = off + size, off + 8
    e = off + 20 + 4 * entry  # box header 8, version/flags 4, sample_size 4, count 4, then entries
    b = bytearray(data)
    b[e: e + 4] = struct.pack(">I", struct.unpack(">I", data[e: e + 4])[0] + add)
    return bytes(b)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return make_mp4(frames=24, size=(32, 48), gop=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_open_video_returns_frames_or_decode_error(mp4, backend):
    """A few hundred mutations through the loader's in-process path: frames of the right
    shape or a DecodeError, nothing else, and this process survives."""
    rng = np.random.default_rng(1234)
    outcomes = Counter()
    n = 400 if backend == "decord" else 200
    for _ in range(n):
        kind, data = mutate(mp4, rng)
        try:
            vid = open_video(data, backend)
            frames = vid.get(range(vid.num_frames))
        except DecodeError as e:
            assert e.reason  # typed, with a machine-readable reason
            outcomes["error:" + e.reason] += 1
            continue
        assert frames.dtype == np.uint8 and frames.shape == (vid.num_frames, vid.height, vid.width, 3)
        assert vid.fps > 0
        outcomes["ok"] += 1
    print(backend, dict(outcomes))
    assert sum(outcomes.values()) == n
    assert outcomes["ok"] > 0.1 * n and outcomes["ok"] < 0.6 * n  # the mutations bite, but not all


def test_isolated_fuzz_without_precheck_survives_crashes(mp4):
    """decord with the pre-check switched off, through the segfault-safe path (child processes):
    every mutation gets a result, crashed ones included, and the pool keeps going."""
    rng = np.random.default_rng(99)
    inputs = [mutate(mp4, rng)[1] for _ in range(150)] + [stsz_corrupted(mp4)]
    with IsolatedPool(decode_check, workers=2, timeout=30) as pool:
        results = pool.map((i, (d, "decord", False)) for i, d in enumerate(inputs))
    assert sorted(results) == list(range(len(inputs)))
    reasons = Counter(r.reason.split(":")[0] for r in results.values())
    print(dict(reasons), "restarts", pool.restarts)
    assert reasons[""] > 10  # some mutations still decode
    assert all(r.ok == (r.reason == "") for r in results.values())
    assert pool.restarts == sum(1 for r in results.values() if r.reason.startswith(("crashed", "timeout")))


@pytest.mark.skipif("decord" not in available_backends(), reason="decord not installed")
def test_precheck_rejects_a_decord_segfault_in_process(mp4):
    bad = stsz_corrupted(mp4)
    ok, reason, _ = check_video(bad, "decord", timeout=30, precheck=False)
    assert not ok
    print("decord without pre-check:", reason)  # decord 0.6: 'crashed (SIGSEGV)'
    with pytest.raises(DecodeError) as e:  # safe in this very process
        open_video(bad, "decord")
    assert e.value.reason == "bad_container"
    assert check_video(mp4, "decord", timeout=30) == (True, "", {"num_frames": 24, "fps": 8.0, "height": 32, "width": 48})


def _task(kind: str):
    """Test task for the pool: crash, hang, raise, or return."""
    if kind == "segfault":
        ctypes.string_at(0)  # a real SIGSEGV in the child
    if kind == "hang":
        time.sleep(60)
    if kind == "raise":
        raise ValueError("boom")
    if kind == "decode_error":
        raise DecodeError("empty", "nothing")
    return kind.upper()


def test_isolated_pool_contains_segfaults_hangs_and_exceptions():
    tasks = ["a", "segfault", "b", "hang", "raise", "decode_error", "c", "segfault", "d"]
    with IsolatedPool(_task, workers=2, timeout=2) as pool:
        res = pool.map((i, (k,)) for i, k in enumerate(tasks))
        assert pool.restarts == 3
        again = pool.map([("x", ("e",))])  # still usable after the crashes
    assert [res[i].value for i in (0, 2, 6, 8)] == ["A", "B", "C", "D"]
    assert res[1].reason == res[7].reason == "crashed (SIGSEGV)"
    assert res[3].reason == "timeout (> 2 s)"
    assert res[4].reason == "error: ValueError: boom"
    assert res[5].reason == "empty: nothing"
    assert not any(res[i].ok for i in (1, 3, 4, 5, 7))
    assert again["x"].ok and again["x"].value == "E"


@pytest.mark.parametrize("suffix,codec", [("mp4", "libx264"), ("avi", "mpeg4"), ("webm", "libvpx"), ("mkv", "libx264")])
@pytest.mark.parametrize("size", [(32, 32), (16, 16), (24, 48)])  # 16/24/48 wide: decord's padded-row bug
def test_backends_agree(tmp_path, suffix, codec, size):
    data = make_mp4(tmp_path / f"v.{suffix}", frames=12, size=size, codec=codec)
    vids = {b: open_video(data, b) for b in BACKENDS}
    frames = {b: v.get([0, 5, 11, 5]) for b, v in vids.items()}
    for b, v in vids.items():
        assert (v.num_frames, v.height, v.width, v.fps) == (12, *size, 8.0)
        assert frames[b].shape == (4, *size, 3) and frames[b].dtype == np.uint8
    if len(BACKENDS) == 2:
        assert np.array_equal(frames["decord"], frames["pyav"])
    assert probe_container(data) == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_video_contract(mp4, backend):
    vid = open_video(bytearray(mp4), backend)  # bytes-like inputs work
    assert open_video(memoryview(mp4), backend).num_frames == vid.num_frames == 24
    assert vid.get([]).shape == (0, 32, 48, 3)
    with pytest.raises(IndexError):
        vid.get([24])
    with pytest.raises(IndexError):
        vid.get([-1])
    for bad, reason in [(b"", "empty"), (b"\x00" * 1000, "open_failed"), (b"not a video at all" * 50, "open_failed"),
                        (mp4[: len(mp4) // 3], "open_failed")]:
        with pytest.raises(DecodeError) as e:
            open_video(bad, backend)
        assert e.value.reason == reason
    with pytest.raises(TypeError):
        open_video("a string", backend)
    with pytest.raises(ValueError, match="backend"):
        open_video(mp4, "opencv")
    assert video_info(mp4, backend).num_frames == 24
