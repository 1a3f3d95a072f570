"""Shard streams: list shards, read raw samples from tar, and the sample order of each mode.

Reading uses webdataset's primitives (``gopen`` opens paths and ``pipe:``/``http`` URLs,
``tar_file_iterator`` walks the tar stream, ``base_plus_ext`` splits member names into key and
extension); a shard that cannot be opened or ends early is skipped from that point and reported
once through ``on_event(reason)``, never raised.

Consumers: every rank runs ``W = max(1, num_workers)`` roles, so there are ``N = world * W``
consumers and consumer ``c = rank * W + role`` reads:

* **eval** -- shards ``c, c+N, c+2N, ...``; with fewer shards than consumers every consumer reads
  all shards and keeps the samples whose global index ``i % N == c``. Each sample is read by
  exactly one consumer.
* **train** -- an infinite, resampled stream that is a pure function of ``(seed, N, c)``. A global
  shard sequence is built from one seeded permutation of all shards per epoch; consumer ``c``
  takes its elements ``c, c+N, ...`` (so in each epoch the shards are spread over consumers). The
  stream is cut into *rounds* of ``shards_per_round`` shards, interleaved at random and passed
  through a shuffle buffer that is drained at the end of the round. All randomness of round ``k``
  comes from ``default_rng([seed, N, c, k])``, so the position "``taken`` samples into round ``k``"
  is restored by replaying at most one round of tar reading (no decoding).
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import numpy as np
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, tar_file_iterator
from webdataset.utils import glob_with_braces

from pretrain.data.shard_writer import VIDEO_EXTS, read_manifest

Events = Callable[[str], None]
ROUND_SHARDS = 4
"""Shards interleaved per train round (more: better mixing, longer replay on resume)."""
_TAG_ORDER, _TAG_ROUND = 11, 12  # domain tags keep the RNG streams of different uses apart


@dataclass
class RawSample:
    """One undecoded sample as read from a shard."""

    key: str
    video: bytes | None
    """Video bytes (``mp4``/``avi``/``webm``/``mkv``/``mov`` member), None if absent."""
    label: int
    """Class index from ``.cls`` (or ``.json`` ``label``), -1 when unlabeled."""
    shard: int
    """Index of the shard in the shard list."""
    error: str | None = None
    """Why this sample cannot be used (``no_video``, ``bad_label``); the consumer skips it."""


def _is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or urlparse(spec).scheme not in ("", "file")


def list_shards(spec: str) -> list[str]:
    """Expand a shard spec to an ordered list of URLs/paths.

    ``spec``: a directory (its ``manifest.json`` order, else all ``*.tar`` sorted), a glob
    (``data/*.tar``), a brace list (``data/a-{000..009}.tar``), several specs joined by ``::``, or
    ``pipe:``/``http(s)://`` URLs, which are brace-expanded and passed through unchecked.
    Raises ``FileNotFoundError`` naming the spec when nothing local matches.
    """
    if not spec:
        raise FileNotFoundError("no shards given (set data.shards / data.val_shards)")
    if "::" in spec:
        return [u for part in spec.split("::") for u in list_shards(part)]
    if _is_url(spec):
        return expand_urls(spec)
    spec = re.sub(r"^file:(//)?", "", spec)
    p = Path(spec)
    if p.is_dir():
        manifest = read_manifest(p)
        if manifest is not None and manifest.get("shards"):
            urls = [str(p / s["name"]) for s in manifest["shards"]]
            missing = [u for u in urls if not Path(u).is_file()]
            if missing:
                raise FileNotFoundError(f"{p}/manifest.json lists shards that do not exist: {missing[:3]}")
            return urls
        urls = sorted(str(q) for q in p.glob("*.tar"))
        if not urls:
            raise FileNotFoundError(f"no *.tar shards in directory {p}")
        return urls
    if glob.has_magic(spec):
        urls = sorted(glob_with_braces(spec))
        if not urls:
            raise FileNotFoundError(f"no shards match {spec!r}")
        return urls
    urls = expand_urls(spec)
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard file(s) not found: {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
    return urls


def manifest_num_samples(spec: str) -> int | None:
    """Total samples when ``spec`` is a directory with a manifest, else None."""
    if not spec or "::" in spec or _is_url(spec) or not Path(spec).is_dir():
        return None
    m = read_manifest(spec)
    return int(m["num_samples"]) if m and "num_samples" in m else None


class _TailWatch:
    """File wrapper remembering the stream length and its last 1024 bytes.

    ``tarfile`` in stream mode ends silently when a tar is cut inside or just before a header; a
    complete archive ends with two zero blocks, so a shard whose tail is not 1024 zero bytes (at a
    512-byte boundary) was truncated.
    """

    def __init__(self, f):
        self.f, self.total, self.tail = f, 0, b""

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.total += len(b)
        self.tail = b[-1024:] if len(b) >= 1024 else (self.tail + b)[-1024:]
        return b

    def complete(self) -> bool:
        while self.read(1 << 16):  # drain the end-of-archive padding
            pass
        return self.total % 512 == 0 and len(self.tail) == 1024 and self.tail.count(0) == 1024


def _video_member(sample: dict) -> bytes | None:
    for ext, data in sample.items():
        if ext.rsplit(".", 1)[-1] in VIDEO_EXTS:
            return data
    return None


def _to_raw(sample: dict, shard: int) -> RawSample:
    key = sample["__key__"]
    video = _video_member(sample)
    label, error = -1, None
    if "cls" in sample:
        try:
            label = int(sample["cls"].decode("ascii").strip())
        except (ValueError, UnicodeDecodeError):
            error = "bad_label"
    elif "json" in sample:
        try:
            lab = json.loads(sample["json"]).get("label")
            label = -1 if lab is None else int(lab)
        except (ValueError, TypeError, AttributeError):
            label = -1  # unreadable metadata only loses the label of an unlabeled-format sample
    if video is None:
        error = "no_video"
    return RawSample(key, video, label, shard, error)


def read_shard(url: str, shard: int, on_event: Events) -> Iterator[RawSample]:
    """Samples of one tar shard in file order. A shard that cannot be opened reports
    ``shard_open``; one that is cut short reports ``truncated_shard`` and yields only the samples
    before the damage (a sample whose video member was cut is dropped)."""
    try:
        stream = gopen(url, "rb")
    except Exception:
        on_event("shard_open")
        return
    watch = _TailWatch(stream)
    pending: dict | None = None
    ok = False
    try:
        for member in tar_file_iterator(watch):
            key, ext = base_plus_ext(member["fname"])
            if key is None:
                continue
            if pending is not None and key != pending["__key__"]:
                yield _to_raw(pending, shard)
                pending = None
            if pending is None:
                pending = {"__key__": key}
            pending[ext.lower()] = member["data"]
        ok = watch.complete()
    except Exception:
        ok = False
    finally:
        try:
            stream.close()
        except Exception:
            pass
    if not ok:
        on_event("truncated_shard")
        # members are only kept once read in full, so a pending sample with its video is intact
        if pending is None or _video_member(pending) is None:
            return
    if pending is not None:
        yield _to_raw(pending, shard)


def _ignore(_reason: str) -> None:
    pass


def eval_samples(urls: list[str], consumer: int, num_consumers: int, on_event: Events) -> Iterator[RawSample]:
    """Consumer ``consumer``'s share of every sample, each sample going to exactly one consumer."""
    n = num_consumers
    if len(urls) >= n:
        for s in range(consumer, len(urls), n):
            yield from read_shard(urls[s], s, on_event)
        return
    # fewer shards than consumers: split at sample level; shard events belong to one consumer
    i = 0
    for s, url in enumerate(urls):
        for raw in read_shard(url, s, on_event if s % n == consumer else _ignore):
            if i % n == consumer:
                yield raw
            i += 1


class TrainOrder:
    """The deterministic infinite train stream of one consumer, organised in rounds."""

    def __init__(self, urls: list[str], seed: int, consumer: int, num_consumers: int,
                 shuffle_buffer: int, shards_per_round: int = ROUND_SHARDS):
        if not urls:
            raise ValueError("no shards")
        self.urls, self.seed = urls, int(seed)
        self.consumer, self.n = consumer, num_consumers
        self.buffer = shuffle_buffer
        self.per_round = max(1, min(shards_per_round, len(urls)))
        self._perms: dict[int, np.ndarray] = {}

    def shard(self, ordinal: int) -> int:
        """Shard index of this consumer's ``ordinal``-th shard."""
        g = self.consumer + ordinal * self.n
        epoch, pos = divmod(g, len(self.urls))
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([_TAG_ORDER, self.seed, epoch]).permutation(len(self.urls))
        return int(self._perms[epoch][pos])

    def round_shards(self, k: int) -> list[int]:
        return [self.shard(k * self.per_round + j) for j in range(self.per_round)]

    def round(self, k: int, on_event: Events) -> Iterator[RawSample]:
        """Samples of round ``k``: its shards interleaved at random, through a shuffle buffer.

        Tar reading is lazy, so the bytes read (and events reported) after pulling ``m`` samples
        are a function of ``m`` alone -- what makes replay on resume exact.
        """
        rng = np.random.default_rng([_TAG_ROUND, self.seed, self.n, self.consumer, k])
        sources = [read_shard(self.urls[s], s, on_event) for s in self.round_shards(k)]
        buf: list[RawSample] = []
        while sources:
            i = int(rng.integers(len(sources))) if len(sources) > 1 else 0
            raw = next(sources[i], None)
            if raw is None:
                sources.pop(i)
                continue
            if len(buf) < self.buffer:
                buf.append(raw)
                continue
            if self.buffer == 0:
                yield raw
                continue
            j = int(rng.integers(self.buffer))
            buf[j], raw = raw, buf[j]
            yield raw
        while buf:  # drain: the round leaves nothing behind
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
