"""Writing WebDataset shards (``key.mp4``, ``key.json``, ``key.cls``) plus ``manifest.json``.

Shard directory layout::

    DIR/shard-000000.tar ...   # tar members: <key>.mp4, <key>.json, <key>.cls (labeled only)
    DIR/manifest.json          # {"shards": [{"name", "num_samples", "sha256", "bytes"}], "num_samples", ...}
    DIR/classes.json           # ["class0", "class1", ...] when labeled
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import webdataset as wds

from pretrain.fsutil import write_text_atomic

SHARD_PATTERN = "shard-%06d.tar"
VIDEO_EXTS = ("mp4", "avi", "webm", "mkv", "mov")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sample_meta(label: int | None, label_name: str | None, fps: float, num_frames: int,
                height: int, width: int, source: str) -> dict[str, Any]:
    """The ``key.json`` record of the shard contract."""
    return {"label": label, "label_name": label_name, "fps": float(fps), "num_frames": int(num_frames),
            "height": int(height), "width": int(width), "source": str(source)}


class ShardSink:
    """Write samples into size/count-limited tar shards and a manifest on close.

    >>> with ShardSink("out", classes=["a", "b"]) as sink:
    ...     sink.write("vid0", mp4_bytes, sample_meta(0, "a", 8, 16, 64, 64, "synth"))
    """

    def __init__(self, out_dir: str | Path, maxcount: int = 256, maxsize: float = 256e6,
                 classes: list[str] | None = None, start_shard: int = 0, extra: dict | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.classes = classes
        self.extra = extra or {}
        self.maxcount, self.maxsize = maxcount, maxsize
        self._shard = start_shard
        self._writer: wds.TarWriter | None = None
        self._count = 0
        self._bytes = 0
        self._done: list[dict[str, Any]] = []
        self.keys: set[str] = set()

    def _path(self, i: int) -> Path:
        return self.out_dir / (SHARD_PATTERN % i)

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        p = self._path(self._shard)
        self._done.append({"name": p.name, "num_samples": self._count, "sha256": sha256_file(p),
                           "bytes": p.stat().st_size})
        self._writer = None
        self._shard += 1
        self._count = 0
        self._bytes = 0

    def write(self, key: str, video: bytes, meta: dict[str, Any], ext: str = "mp4") -> None:
        """Add one sample; ``meta`` follows :func:`sample_meta`; ``.cls`` is written when labeled."""
        if key in self.keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if "." in key:
            raise ValueError(f"sample key {key!r} may not contain '.' (webdataset splits on it)")
        if self._writer is not None and (self._count >= self.maxcount or self._bytes + len(video) > self.maxsize):
            self._finish_shard()
        if self._writer is None:
            self._writer = wds.TarWriter(str(self._path(self._shard)), mtime=0)  # same samples, same bytes
        sample = {"__key__": key, ext: video, "json": json.dumps(meta).encode()}
        if meta.get("label") is not None:
            sample["cls"] = str(int(meta["label"])).encode()
        self._writer.write(sample)
        self.keys.add(key)
        self._count += 1
        self._bytes += len(video)

    def close(self) -> dict[str, Any]:
        """Finish the open shard and write ``manifest.json`` (and ``classes.json``)."""
        self._finish_shard()
        manifest = {"format": "tubelet-shards/1", "num_samples": sum(s["num_samples"] for s in self._done),
                    "shards": self._done, **self.extra}
        write_text_atomic(self.out_dir / "manifest.json", json.dumps(manifest, indent=1))
        if self.classes is not None:
            write_text_atomic(self.out_dir / "classes.json", json.dumps(list(self.classes), indent=1))
        return manifest

    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def read_manifest(shard_dir: str | Path) -> dict[str, Any] | None:
    p = Path(shard_dir) / "manifest.json"
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)


def read_classes(shard_dir: str | Path) -> list[str] | None:
    p = Path(shard_dir) / "classes.json"
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)
