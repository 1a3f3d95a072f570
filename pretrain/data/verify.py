"""Decode every sample of a shard directory in isolated child processes; exit 0 only if all decode.

    tubelet verify data/synth/train
    tubelet verify shards/k400_train --workers 2 --timeout 60

Checks, per directory: every ``*.tar`` reads to the end; with a ``manifest.json``, every listed
shard exists with the recorded sha256 and sample count, and no unlisted shard is present; per
sample: a video member exists and decodes completely through the loader's decoder (in a child
process with a timeout, so a decoder crash or hang marks that sample bad instead of killing
the check), ``.json`` parses, ``.cls`` is an integer that agrees with the json label and with
``classes.json``. Prints counts and every bad key; exit code 0 (all good), 1 (anything bad),
2 (no shards / bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pretrain.data.isolate import IsolatedPool, decode_check
from pretrain.data.shard_writer import VIDEO_EXTS, read_manifest, sha256_file

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset: key = path up to the first dot of the name


@dataclass
class Report:
    """What a verification found; ``ok`` when nothing is bad."""

    shards: int = 0
    samples: int = 0
    good: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)       # (shard/key, reason)
    problems: list[str] = field(default_factory=list)              # shard- and manifest-level
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.shards > 0 and not self.bad and not self.problems


def _samples(tar_path: Path, report: Report) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive tar members into samples ``(key, {ext: bytes})``; a read error is a problem."""
    key, parts = None, {}
    n = 0
    try:
        with tarfile.open(tar_path, mode="r|*") as tf:  # streaming: reads each member once, in order
            for m in tf:
                if not m.isfile():
                    continue
                match = _KEY_EXT.match(m.name)
                if not match:
                    report.warnings.append(f"{tar_path.name}: member {m.name!r} has no extension, ignored")
                    continue
                k, ext = match.group(1), match.group(2).lower()
                if k != key and key is not None:
                    yield key, parts
                    n += 1
                    parts = {}
                key = k
                parts[ext] = tf.extractfile(m).read()
            end = tf.offset
        # tarfile ends quietly at a header cut short: require the end-of-archive blocks (2 x 512 zeros)
        with open(tar_path, "rb") as f:
            f.seek(end)
            if f.read(1024) != bytes(1024):
                raise tarfile.ReadError(f"no end-of-archive marker at byte {end} (file cut short?)")
    except (tarfile.TarError, OSError, EOFError) as e:
        report.problems.append(f"{tar_path.name}: unreadable after {n} samples ({type(e).__name__}: {e})")
    if key is not None:
        yield key, parts


def _sample_checks(parts: dict[str, bytes], classes: list[str] | None) -> tuple[bytes | None, str]:
    """Metadata checks of one sample -> (video bytes or None, reason when bad)."""
    video = next((parts[e] for e in VIDEO_EXTS if e in parts), None)
    if video is None:
        return None, f"no video member (has {', '.join(sorted(parts)) or 'nothing'})"
    label = None
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
            label = meta.get("label") if isinstance(meta, dict) else None
        except (ValueError, UnicodeDecodeError) as e:
            return None, f"bad json: {e}"
    if "cls" in parts:
        try:
            cls = int(parts["cls"].decode().strip())
        except (ValueError, UnicodeDecodeError):
            return None, f"bad cls {parts['cls'][:20]!r}"
        if label is not None and label != cls:
            return None, f"cls {cls} disagrees with json label {label}"
        label = cls
    if label is not None and classes is not None and not 0 <= int(label) < len(classes):
        return None, f"label {label} outside classes.json ({len(classes)} classes)"
    return video, ""


def _check_manifest(d: Path, tars: list[Path], counts: dict[str, int], report: Report, check_sha: bool) -> None:
    try:
        manifest = read_manifest(d)
    except (ValueError, OSError) as e:
        report.problems.append(f"{d}/manifest.json: unreadable ({e})")
        return
    if manifest is None:
        report.warnings.append(f"{d}: no manifest.json (sha256 and counts not checked)")
        return
    listed = {s["name"]: s for s in manifest.get("shards", [])}
    for name, s in listed.items():
        p = d / name
        if not p.is_file():
            report.problems.append(f"{name}: listed in manifest.json but missing")
            continue
        if check_sha and sha256_file(p) != s.get("sha256"):
            report.problems.append(f"{name}: sha256 differs from manifest.json")
        if name in counts and counts[name] != s.get("num_samples"):
            report.problems.append(f"{name}: {counts[name]} samples, manifest.json says {s.get('num_samples')}")
    for p in tars:
        if p.name not in listed:
            report.problems.append(f"{p.name}: not listed in manifest.json")


def verify_dir(d: str | Path, backend: str = "decord", workers: int = 1, timeout: float = 60.0,
               check_sha: bool = True, progress: bool = True) -> Report:
    """Verify one shard directory (or one ``.tar``); see the module docstring."""
    from tqdm import tqdm

    d = Path(d)
    report = Report()
    tars = [d] if d.is_file() else sorted(d.glob("*.tar"))
    report.shards = len(tars)
    if not tars:
        report.problems.append(f"{d}: no .tar shards")
        return report
    classes = None
    if d.is_dir() and (d / "classes.json").is_file():
        try:
            classes = json.loads((d / "classes.json").read_text())
        except ValueError as e:
            report.problems.append(f"{d}/classes.json: unreadable ({e})")
    counts: dict[str, int] = {}

    def tasks():
        for t in tars:
            counts[t.name] = 0
            for key, parts in _samples(t, report):
                counts[t.name] += 1
                report.samples += 1
                name = f"{t.name}/{key}"
                video, reason = _sample_checks(parts, classes)
                if video is None:
                    report.bad.append((name, reason))
                else:
                    yield name, (video, backend)

    total = None
    if d.is_dir() and (d / "manifest.json").is_file():
        try:
            total = json.loads((d / "manifest.json").read_text()).get("num_samples")
        except ValueError:
            pass
    with IsolatedPool(decode_check, workers=workers, timeout=timeout) as pool:
        for r in tqdm(pool.imap_unordered(tasks()), total=total, disable=not progress, desc=f"verify {d.name}",
                      unit="sample"):
            if r.ok:
                report.good += 1
            else:
                report.bad.append((r.task_id, r.reason))
    if d.is_dir():
        _check_manifest(d, tars, counts, report, check_sha)
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard directories (or single .tar files)")
    p.add_argument("--backend", choices=["decord", "pyav"], default="decord", help="decoder (the loader's)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="isolated decode processes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one sample may take to decode")
    p.add_argument("--no-sha", action="store_true", help="skip the sha256 comparison with manifest.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.timeout <= 0:
        from pretrain.config import UsageError

        raise UsageError(f"--workers must be >= 1 and --timeout > 0 (got {args.workers}, {args.timeout})")
    rc = 0
    for d in args.dirs:
        if not Path(d).exists():
            print(f"tubelet verify: {d}: no such file or directory", file=sys.stderr)
            rc = max(rc, 2)
            continue
        r = verify_dir(d, args.backend, args.workers, args.timeout, not args.no_sha, not args.no_progress)
        for w in r.warnings:
            print(f"warning: {w}")
        for p in r.problems:
            print(f"problem: {p}")
        for name, reason in r.bad:
            print(f"bad: {name}: {reason}")
        print(f"verify {d}: {r.shards} shard(s), {r.samples} sample(s): {r.good} ok, {len(r.bad)} bad, "
              f"{len(r.problems)} problem(s) -> {'OK' if r.ok else 'FAILED'}")
        rc = max(rc, 0 if r.ok else (2 if r.shards == 0 else 1))
    return rc
