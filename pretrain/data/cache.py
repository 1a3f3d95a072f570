"""Decoded-clip cache: decode each video once, memory-map its uint8 frames ever after.

For small clips (the embedded benchmark is 16x32x32) H.264 decoding dominates the loader; with
``data.cache`` set every video is decoded once *in full* and stored as ``(N, H, W, 3)`` uint8
``.npy``; later epochs memory-map it and copy out only the frames a clip needs. Temporal sampling,
crops, flips, RandAugment and repeated sampling still run per sample on the cached frames, drawn
from the same generator in the same order, so a cached run gives the same clips as an uncached one.

Layout (one directory per shard list and content)::

    <root>/<spec>-<content>/          spec: sha256 of the shard URLs; content: of their sizes, mtimes
        ab/abcdef....npy              and the manifest.json (sha256s) -- changed shards, new dir
        ab/abcdef....json             {"fps", "num_frames", "key", "shard"}; written before the .npy
        .usage                        bytes reserved so far by all processes (flock-protected)

``<root>`` is ``data.cache`` (a directory, kept and reused across runs) or, for ``ram``,
``/dev/shm/tubelet-cache-<uid>`` (tmpfs: the page cache *is* the cache, shared by every worker and
rank of the host; removed by :func:`cleanup_ram_caches` when the process that built the loader
exits). Entries are written to a temporary name and renamed, so no reader ever sees half a file;
an entry counts as present once its ``.npy`` exists. The size bound (``data.cache_max_gb``, plus
90 % of the file system for ``ram``) is enforced with the shared ``.usage`` counter under an
exclusive ``flock``: a process that finds the cache full stops writing and decodes normally. When a
shard list's content changes, directories of its older content are deleted.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from pretrain.data.stream import _is_url

FORMAT = 1
"""Bumped when the stored layout changes (part of the content key)."""
RAM_FILL = 0.9
"""``ram`` caches stop at this share of the file system's size."""


def ram_root() -> Path:
    """Where ``data.cache=ram`` lives: ``/dev/shm`` when writable, else the temp directory."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        base = Path(tempfile.gettempdir())
    return base / f"tubelet-cache-{os.getuid()}"


def fingerprint(urls: list[str], spec: str, backend: str) -> tuple[str, str]:
    """``(spec_key, content_key)`` of a shard list: the URLs, and what they hold -- size and mtime of
    every local shard, the bytes of a ``manifest.json`` next to them (its per-shard sha256s), the
    decoder and :data:`FORMAT`. Remote (``pipe:``/``http``) shards are keyed on their URLs only."""
    h_spec = hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]
    h = hashlib.sha256(f"format={FORMAT} backend={backend}\n".encode())
    dirs = set()
    for u in urls:
        if _is_url(u):
            h.update(f"{u} remote\n".encode())
            continue
        p = Path(u.removeprefix("file://").removeprefix("file:"))
        try:
            st = p.stat()
            h.update(f"{p.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p} missing\n".encode())
        dirs.add(p.parent)
    for d in sorted(dirs):
        m = d / "manifest.json"
        if m.is_file():
            h.update(hashlib.sha256(m.read_bytes()).digest())
    return h_spec, h.hexdigest()[:16]


_RAM_DIRS: set[str] = set()
_RAM_LOCK = threading.Lock()


def _cleanup() -> None:
    for d in list(_RAM_DIRS):
        shutil.rmtree(d, ignore_errors=True)
        try:
            os.rmdir(Path(d).parent)  # the per-user root, once no other run's cache is left in it
        except OSError:
            pass
    _RAM_DIRS.clear()


def register_ram_cleanup(path: str | Path) -> None:
    """Remove ``path`` when this process exits (``ram`` caches hold RAM). Workers and other ranks
    that still read it keep their memory maps; new misses just decode normally."""
    with _RAM_LOCK:
        if not _RAM_DIRS:
            atexit.register(_cleanup)
        _RAM_DIRS.add(str(path))


def cleanup_ram_caches() -> None:
    """Remove the ``ram`` caches this process registered (also runs at exit)."""
    with _RAM_LOCK:
        _cleanup()


def resolve_cache_dir(setting: str, urls: list[str], spec: str, backend: str, *,
                      prune: bool = True) -> Path:
    """The cache directory for ``data.cache = setting`` (``ram`` or a path) and these shards; created,
    and (``prune``) with the directories of this shard list's *older* contents deleted."""
    root = ram_root() if setting == "ram" else Path(setting).expanduser()
    h_spec, h_content = fingerprint(urls, spec, backend)
    d = root / f"{h_spec}-{h_content}"
    d.mkdir(parents=True, exist_ok=True)
    if prune:
        for old in root.glob(f"{h_spec}-*"):
            if old.name != d.name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)  # stale: the shards changed since
    return d


class ClipCache:
    """One process's handle on a cache directory (cheap to pickle: opens nothing until used).

    ``get(shard, key)`` -> ``(frames (N, H, W, 3) uint8 memmap, fps)`` or None;
    ``room_for(nbytes)`` says whether an entry of that size still fits; ``put(shard, key, frames,
    fps)`` stores an entry unless the bound would be exceeded (returns whether it did).
    ``hits`` / ``writes`` / ``full`` count this process's traffic.
    """

    def __init__(self, directory: str | Path, max_bytes: int, ram: bool = False):
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.ram = ram
        self.hits = 0
        self.writes = 0
        self.full = False
        """Set once this process found the cache full; it then stops trying to write."""

    def _paths(self, shard: int, key: str) -> tuple[Path, Path]:
        h = hashlib.sha1(f"{shard}\0{key}".encode()).hexdigest()
        sub = self.dir / h[:2]
        return sub / f"{h}.npy", sub / f"{h}.json"

    def get(self, shard: int, key: str):
        npy, meta = self._paths(shard, key)
        try:
            frames = np.load(npy, mmap_mode="r")
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[0] != info.get("num_frames"):
            return None
        self.hits += 1
        return frames, float(info["fps"])

    def _limit(self) -> int:
        if not self.ram:
            return self.max_bytes
        try:
            total = shutil.disk_usage(self.dir).total
        except OSError:
            return self.max_bytes
        return min(self.max_bytes, int(total * RAM_FILL))

    def _used(self) -> int:
        try:
            text = (self.dir / ".usage").read_text().strip()
            return int(text) if text else 0
        except (OSError, ValueError):
            return 0

    def room_for(self, nbytes: int) -> bool:
        """Whether an entry of about ``nbytes`` still fits (a lock-free estimate, checked before
        decoding a whole video for the cache; :meth:`put` re-checks under the lock). Sets
        :attr:`full` once less than 1 % of the bound is left."""
        if self.full:
            return False
        limit = self._limit()
        left = limit - self._used()
        if left < 0.01 * limit:
            self.full = True
        return nbytes <= left

    def _reserve(self, nbytes: int) -> bool:
        """Add ``nbytes`` to the shared usage counter if that stays within the bound."""
        limit = self._limit()
        try:
            with open(self.dir / ".usage", "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.seek(0)
                text = f.read().strip()
                used = int(text) if text else 0
                if used + nbytes > limit:
                    return False
                if self.ram and shutil.disk_usage(self.dir).free < nbytes + (1 << 26):
                    return False
                f.seek(0)
                f.truncate()
                f.write(str(used + nbytes))
                f.flush()
        except (OSError, ValueError):
            return False
        return True

    def put(self, shard: int, key: str, frames: np.ndarray, fps: float) -> bool:
        if self.full:
            return False
        npy, meta = self._paths(shard, key)
        if npy.exists():
            return False  # another worker or rank stored it meanwhile
        tmp_npy = tmp_meta = None
        try:
            npy.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_npy = tempfile.mkstemp(dir=npy.parent, prefix=".tmp-", suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(frames), allow_pickle=False)
            fd, tmp_meta = tempfile.mkstemp(dir=npy.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"fps": float(fps), "num_frames": int(frames.shape[0]), "key": key, "shard": shard}, f)
            size = os.path.getsize(tmp_npy) + os.path.getsize(tmp_meta)
            if not self._reserve(size):
                self.room_for(size)  # sets ``full`` when (almost) nothing is left
                return False
            os.replace(tmp_meta, meta)  # the meta first: a visible .npy always has its meta
            tmp_meta = None
            os.replace(tmp_npy, npy)
            tmp_npy = None
        except OSError:
            return False  # disk full, directory removed by a ram cleanup, ...: just not cached
        finally:
            for t in (tmp_npy, tmp_meta):
                if t is not None:
                    try:
                        os.unlink(t)
                    except OSError:
                        pass
        self.writes += 1
        return True

    def __getstate__(self):
        return {"dir": str(self.dir), "max_bytes": self.max_bytes, "ram": self.ram}

    def __setstate__(self, state):
        self.__init__(state["dir"], state["max_bytes"], state["ram"])


def usage_bytes(directory: str | Path) -> int:
    """Bytes of the ``.npy``/``.json`` entries actually in a cache directory."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*")
               if p.is_file() and not p.name.startswith(".") and p.suffix in (".npy", ".json"))
