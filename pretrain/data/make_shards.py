"""Turn videos (CSV, list or class folders) into WebDataset shards; bad inputs go to rejected.csv.

    tubelet shard --input UCF-101/ --out shards/ucf101 --short-side 128 --workers 2
    tubelet shard --input train.csv --out shards/k400_train --short-side 320 --fps 15 --max-duration 10
    tubelet shard --input trainlist01.txt --root UCF-101 --classes classInd.txt --out shards/u1 --copy

Inputs: a CSV ``path,label`` (header optional; space-separated ``.csv`` files as VideoMAE writes
them work too), a list with ``path label`` per line, or a folder with one subfolder per class.
Labels are names or integers (``--classes`` maps integers to names: a JSON list, one name per
line, or ``index name`` lines such as UCF101's 1-based ``classInd.txt``); a list without labels
gives an unlabeled shard set (pretraining). Relative paths resolve against ``--root`` (default:
the list's folder).

Every input is read, decoded and (by default) re-encoded to H.264 (short side ``S``, optional
``fps``, keyframe interval ``K``, at most ``--max-duration`` seconds), then decoded again with the
loader's decoder, all inside an isolated child process (:class:`~pretrain.data.isolate.IsolatedPool`):
a decoder segfault or a hang (``--timeout``) rejects that input only. ``--copy`` keeps the
original bytes after the same check. Rejected inputs are listed in ``DIR/rejected.csv``
(``path,reason``).

Resumable: finished shards are recorded in ``DIR/journal.jsonl`` (with their keys) before
``manifest.json`` is rewritten, atomically, to list them; running the same command again skips
journaled inputs, deletes any half-written shard and appends new shards. ``manifest.json``
therefore only ever lists complete shards, whatever moment a run is interrupted at.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.data.isolate import IsolatedPool
from pretrain.data.shard_writer import VIDEO_EXTS, ShardSink, sample_meta
from pretrain.fsutil import write_text_atomic
from pretrain.data.transcode import process_item

FOLDER_EXTS = VIDEO_EXTS + ("m4v", "mpg", "mpeg", "flv", "3gp", "ts", "wmv")
JOURNAL = "journal.jsonl"


class InputError(ValueError):
    """The input list or folder is malformed; the message names the file and line."""


@dataclass
class Item:
    """One input video: ``path`` to read, ``source`` as written in the input, ``key`` in the shards."""

    path: str
    source: str
    label: int | None
    label_name: str | None
    key: str


# --------------------------------------------------------------------------------------------
# Reading the inputs


def make_key(source: str) -> str:
    """Stable shard key: readable stem + hash of the input path (stems repeat across folders)."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(source).stem)[:60] or "video"
    return f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def _read_class_map(path: str | Path) -> tuple[list[str], dict[int, int] | None]:
    """``--classes`` file -> (names, {label as written: index}) (the map only for ``index name`` files)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        names = json.loads(text)
        return [str(n) for n in names], None
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    if rows and all(len(r) == 2 and re.fullmatch(r"-?\d+", r[0]) for r in rows):
        rows.sort(key=lambda r: int(r[0]))
        return [r[1] for r in rows], {int(r[0]): i for i, r in enumerate(rows)}
    return [" ".join(r) for r in rows], None


def _rows_from_list(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, path, label or None) from a CSV or whitespace list; skips a header row."""
    text = path.read_text()
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    comma = bool(lines) and "," in lines[0][1]
    rows = []
    if comma:
        for (lineno, _), rec in zip(lines, csv.reader([ln for _, ln in lines])):
            rec = [c.strip() for c in rec]
            if len(rec) > 2 or not rec[0]:
                raise InputError(f"{path}:{lineno}: expected 'path,label', got {len(rec)} fields")
            rows.append((lineno, rec[0], rec[1] if len(rec) > 1 and rec[1] != "" else None))
    else:
        for lineno, ln in lines:
            parts = ln.strip().rsplit(None, 1)  # the path may contain spaces, the label may not
            rows.append((lineno, parts[0], parts[1] if len(parts) > 1 else None))
    if rows and rows[0][1].lower() in ("path", "video", "file", "filename") and \
            (rows[0][2] or "label").lower() in ("label", "class", "label_name", "class_name"):
        rows = rows[1:]  # header
    return rows


def read_inputs(input_path: str | Path, root: str | Path | None = None,
                classes_file: str | Path | None = None) -> tuple[list[Item], list[str] | None]:
    """Parse a CSV / list / class folder -> (items, class names or None when unlabeled)."""
    input_path = Path(input_path)
    class_map = None
    names_given = None
    if classes_file:
        names_given, class_map = _read_class_map(classes_file)
    raw: list[tuple[str, str, str | None, str]] = []  # (path, source, label as written, where)
    if input_path.is_dir():
        class_dirs = sorted(d for d in input_path.iterdir() if d.is_dir())
        if not class_dirs:
            raise InputError(f"{input_path}: folder input needs one subfolder per class")
        for d in class_dirs:
            for f in sorted(p for p in d.rglob("*") if p.is_file() or p.is_fifo()):
                if f.suffix.lower().lstrip(".") in FOLDER_EXTS:
                    rel = f.relative_to(input_path).as_posix()
                    raw.append((str(f), rel, d.name, rel))
    elif input_path.is_file():
        base = Path(root) if root else input_path.parent
        for lineno, p, label in _rows_from_list(input_path):
            full = Path(p) if Path(p).is_absolute() else base / p
            raw.append((str(full), p, label, f"{input_path}:{lineno}"))
    else:
        raise InputError(f"--input {input_path}: no such file or folder")
    if not raw:
        raise InputError(f"{input_path}: no inputs found")

    labels = [r[2] for r in raw]
    if all(lb is None for lb in labels):
        classes = None
        resolved: list[tuple[int | None, str | None]] = [(None, None)] * len(raw)
    else:
        missing = [r[3] for r in raw if r[2] is None]
        if missing:
            raise InputError(f"{missing[0]}: no label (other rows have labels)")
        if all(re.fullmatch(r"-?\d+", lb) for lb in labels):
            ints = [int(lb) for lb in labels]
            if class_map is not None:
                bad = [r[3] for r, i in zip(raw, ints) if i not in class_map]
                if bad:
                    raise InputError(f"{bad[0]}: label not in --classes {classes_file}")
                idx = [class_map[i] for i in ints]
                classes = names_given
            else:
                bad = [r[3] for r, i in zip(raw, ints) if i < 0]
                if bad:
                    raise InputError(f"{bad[0]}: negative label")
                idx = ints
                classes = names_given or [str(i) for i in range(max(ints) + 1)]
                if max(ints) >= len(classes):
                    raise InputError(f"label {max(ints)} but --classes lists {len(classes)} names")
        else:
            classes = names_given or sorted(set(labels))
            pos = {n: i for i, n in enumerate(classes)}
            bad = [r[3] for r in raw if r[2] not in pos]
            if bad:
                raise InputError(f"{bad[0]}: label not in --classes {classes_file}")
            idx = [pos[lb] for lb in labels]
        resolved = [(i, classes[i]) for i in idx]

    items, seen = [], set()
    for (path, source, _, _), (label, name) in zip(raw, resolved):
        key = make_key(source)
        if key in seen:
            print(f"shard: skipping duplicate input {source}", file=sys.stderr)
            continue
        seen.add(key)
        items.append(Item(path, source, label, name, key))
    return items, classes


# --------------------------------------------------------------------------------------------
# Journal + shards (main process only)


class Journal:
    """Append-only JSON lines: a ``settings`` header, then ``shard`` (committed, with keys) and
    ``rejected`` records. A torn last line (a write cut by an interruption) is dropped on load."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / JOURNAL
        self.settings: dict | None = None
        self.shards: list[dict] = []
        self.rejected: dict[str, dict] = {}
        if not self.path.exists():
            return
        text = self.path.read_bytes()
        complete = text[: text.rfind(b"\n") + 1]
        if complete != text:  # cut the torn tail so later appends start on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        for i, ln in enumerate(complete.decode().splitlines()):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                raise InputError(f"{self.path}:{i + 1}: corrupt journal line") from None
            if rec["type"] == "settings":
                self.settings = rec["settings"]
            elif rec["type"] == "shard":
                self.shards.append(rec)
            elif rec["type"] == "rejected":
                self.rejected[rec["key"]] = rec
        done = self.done_keys
        self.rejected = {k: v for k, v in self.rejected.items() if k not in done}  # retried and landed

    @property
    def done_keys(self) -> set[str]:
        return {k for s in self.shards for k in s["keys"]}

    def append(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


class _JournaledSink(ShardSink):
    """A :class:`ShardSink` that journals each finished shard and keeps ``manifest.json``
    listing all committed shards (earlier runs' too) after every shard."""

    def __init__(self, out_dir: Path, journal: Journal, **kw):
        prior = [int(re.findall(r"\d+", s["name"])[0]) for s in journal.shards]
        super().__init__(out_dir, start_shard=max(prior) + 1 if prior else 0, **kw)
        self.journal = journal
        self._pending: list[str] = []

    def write(self, key: str, video: bytes, meta: dict[str, Any], ext: str = "mp4") -> None:
        super().write(key, video, meta, ext)  # may finish the previous shard first
        self._pending.append(key)

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        super()._finish_shard()
        rec = {"type": "shard", **self._done[-1], "keys": self._pending}
        self.journal.append(rec)  # commit point: the shard exists in full and is journaled
        self.journal.shards.append(rec)
        self._pending = []
        self.write_manifest()

    def write_manifest(self) -> dict[str, Any]:
        shards = [{k: s[k] for k in ("name", "num_samples", "sha256", "bytes")} for s in self.journal.shards]
        manifest = {"format": "tubelet-shards/1", "num_samples": sum(s["num_samples"] for s in shards),
                    "shards": shards, **self.extra}
        write_text_atomic(self.out_dir / "manifest.json", json.dumps(manifest, indent=1))
        return manifest

    def close(self) -> dict[str, Any]:
        self._finish_shard()
        if self.classes is not None:
            write_text_atomic(self.out_dir / "classes.json", json.dumps(list(self.classes), indent=1))
        return self.write_manifest()


def _clean_uncommitted(out: Path, journal: Journal) -> None:
    committed = {s["name"]: s for s in journal.shards}
    for name, s in committed.items():
        p = out / name
        if not p.is_file() or p.stat().st_size != s["bytes"]:
            raise InputError(f"{p}: journaled as complete but missing or changed; use a new --out")
    for p in sorted(out.glob("shard-*.tar")):
        if p.name not in committed:
            print(f"shard: removing unfinished {p.name} from an interrupted run", file=sys.stderr)
            p.unlink()


def _write_rejected(out: Path, journal: Journal) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    for rec in journal.rejected.values():
        w.writerow([rec["path"], rec["reason"]])
    write_text_atomic(out / "rejected.csv", buf.getvalue())


def shard_videos(input_path: str | Path, out: str | Path, *, root: str | Path | None = None,
                 classes_file: str | Path | None = None, copy: bool = False, short_side: int = 320,
                 fps: float | None = None, keyint: int = 8, max_duration: float | None = None,
                 min_frames: int = 2, backend: str = "decord", workers: int = 1, shard_size: int = 256,
                 timeout: float = 300.0, retry_rejected: bool = False, progress: bool = True) -> dict[str, int]:
    """Shard the inputs into ``out`` (resuming a previous run there) -> counts
    ``{"ok", "rejected", "new_ok", "new_rejected", "shards"}``. Inputs rejected by an earlier run
    are skipped unless ``retry_rejected`` (e.g. after timeouts on a busy machine)."""
    from tqdm import tqdm

    items, classes = read_inputs(input_path, root, classes_file)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"copy": copy, "short_side": short_side, "fps": fps, "keyint": keyint,
                "max_duration": max_duration, "min_frames": min_frames, "backend": backend, "classes": classes}
    journal = Journal(out)
    if journal.settings is None:
        journal.append({"type": "settings", "settings": settings})
        journal.settings = settings
    elif journal.settings != settings:
        diff = sorted(k for k in settings if settings[k] != journal.settings.get(k))
        raise InputError(f"{out} was written with different settings ({', '.join(diff)}); use a new --out")
    _clean_uncommitted(out, journal)
    done = journal.done_keys | (set() if retry_rejected else set(journal.rejected))
    todo = [it for it in items if it.key not in done]
    by_key = {it.key: it for it in todo}
    sink = _JournaledSink(out, journal, maxcount=shard_size, classes=classes)
    new_ok = new_rej = 0
    args = (copy, backend, short_side, fps, keyint, max_duration, min_frames)
    with IsolatedPool(process_item, workers=min(workers, max(1, len(todo))), timeout=timeout) as pool:
        results = pool.imap_unordered((it.key, (it.path, *args)) for it in todo)
        for r in tqdm(results, total=len(todo), disable=not progress, desc="shard", unit="video"):
            it = by_key[r.task_id]
            if r.ok:
                data, ext, info = r.value
                sink.write(it.key, data, sample_meta(it.label, it.label_name, info["fps"], info["num_frames"],
                                                     info["height"], info["width"], it.source), ext)
                journal.rejected.pop(it.key, None)  # a retried input that now landed
                new_ok += 1
            else:
                rec = {"type": "rejected", "key": it.key, "path": it.source, "reason": r.reason}
                journal.append(rec)
                journal.rejected[it.key] = rec
                new_rej += 1
    manifest = sink.close()
    _write_rejected(out, journal)
    return {"ok": manifest["num_samples"], "rejected": len(journal.rejected), "new_ok": new_ok,
            "new_rejected": new_rej, "shards": len(manifest["shards"])}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="CSV (path,label), list (path label) or folder of class folders")
    p.add_argument("--out", required=True, help="output shard directory (re-run the same command to resume)")
    p.add_argument("--root", default=None, help="prefix for relative paths in the list (default: its folder)")
    p.add_argument("--classes", default=None, help="class names: JSON list, one per line, or 'index name' lines")
    p.add_argument("--short-side", type=int, default=320, help="scale the short side down to S pixels (0: keep)")
    p.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: keep)")
    p.add_argument("--keyint", type=int, default=8, help="keyframe interval of the re-encoded H.264")
    p.add_argument("--max-duration", type=float, default=None, help="keep at most this many seconds")
    p.add_argument("--min-frames", type=int, default=2, help="reject videos with fewer frames (images)")
    p.add_argument("--copy", action="store_true", help="keep the original bytes (still fully decoded to check)")
    p.add_argument("--backend", choices=["decord", "pyav"], default="decord", help="decoder used for the check")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="isolated worker processes")
    p.add_argument("--shard-size", type=int, default=256, help="videos per shard")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one input may take before it is rejected")
    p.add_argument("--retry-rejected", action="store_true", help="on resume, try inputs rejected before again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pretrain.config import UsageError

    for name in ("workers", "shard_size", "keyint", "min_frames"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        c = shard_videos(args.input, args.out, root=args.root, classes_file=args.classes, copy=args.copy,
                         short_side=args.short_side, fps=args.fps, keyint=args.keyint,
                         max_duration=args.max_duration, min_frames=args.min_frames, backend=args.backend,
                         workers=args.workers, shard_size=args.shard_size, timeout=args.timeout,
                         retry_rejected=args.retry_rejected, progress=not args.no_progress)
    except (InputError, OSError) as e:
        raise UsageError(f"--input/--out: {e}") from e
    if c["ok"] == 0:
        print(f"tubelet shard: no video written: all {c['rejected']} input(s) rejected; the reasons are in "
              f"{Path(args.out) / 'rejected.csv'}", file=sys.stderr)
        return 1
    print(f"shard: ok {c['ok']} ({c['new_ok']} new), rejected {c['rejected']} ({c['new_rejected']} new), "
          f"{c['shards']} shard(s) in {args.out}" + (f"; see {Path(args.out) / 'rejected.csv'}" if c["rejected"] else ""))
    return 0
