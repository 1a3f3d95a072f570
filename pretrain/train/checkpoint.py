"""Atomic, complete, resumable checkpoints in ``RUN_DIR/checkpoints/``.

Layout of one checkpoint, ``checkpoints/step_00000120/``::

    model.safetensors, optimizer.pt    plain torch (rank 0)      | ds/...  DeepSpeed engine files
                                                                 | elastic.pt  ZeRO 1-3: world-size-free state
    trainer.json                       step, counters, metrics, base LR, batch layout (rank 0)
    rank00000.pt, rank00001.pt, ...    per rank: python/numpy/torch RNG, data position
    COMPLETE.json                      written last: step, world size, every file with its size

Saving (all ranks): write everything into ``.tmp-step_00000120``, fsync every file, then rank 0
writes ``COMPLETE.json``, fsyncs, renames the directory into place, fsyncs the parent and only
then replaces the ``latest`` pointer (itself via rename). A failure anywhere (disk full, I/O
error) removes the temporary directory and raises :class:`CheckpointError`; the previous
checkpoint is untouched. Old checkpoints beyond ``keep_last`` are renamed to ``.trash-*`` before
deletion, so a half-deleted directory never looks complete.

Loading picks the newest checkpoint whose ``COMPLETE.json`` lists files that all exist with
the recorded sizes; ``latest`` is only compared with that scan (a corrupt or stale pointer is
reported and ignored). Temporary and trash directories are ignored. ``COMPLETE.json`` also records
the model's signature (tensor count, values, a digest of names and shapes): a checkpoint of
another model is refused in one line before anything is loaded.

Elastic resume (another number of processes; ``dist.elastic``, on by default). Same number of
processes: exact (bitwise on CPU). Different number, e.g. saved by 2 and resumed by 1 or 8:

* World-size-free state: plain torch/DDP checkpoints are world-size free already (rank 0 writes
  the whole model and the whole AdamW state). DeepSpeed ZeRO 1-3 shard the optimizer (ZeRO-3 also
  the weights), so every ZeRO checkpoint also holds ``elastic.pt``: the fp32 master weights and
  AdamW's ``exp_avg`` / ``exp_avg_sq`` per parameter name plus the optimizer step, gathered
  from all ranks at save time (collective; rank 0 writes it inside the temporary directory, so
  it is covered by ``COMPLETE.json`` like every other file and a checkpoint that resume picks
  always has it). Resuming with another world size creates the new layout's partitions and
  fills them from it (ZeRO-0 needs nothing: DeepSpeed's model file holds the whole optimizer). A
  ZeRO checkpoint without it (``dist.elastic=false``) resumes only with its own world size, and
  another one is refused naming the reason. Cost: one gather of 3 x 4 bytes per parameter per
  save (ViT-B: ~1 GB on rank 0's host memory and disk).
* Guaranteed the same: the global step, the parameters (fp32 masters), AdamW's moments and step
  count (bitwise), the LR schedule (the checkpoint's base LR is kept even when the new layout's
  batch would scale it differently), the metrics history and counters.
* Data: the loader continues the global, layout-independent shard sequence from the first
  position some old rank had not finished (see ``pretrain.data.loader.Loader._relayout``): no
  sample is skipped; at most about one round (``ROUND_SHARDS`` shards) per old and per new
  consumer is read a second time; the epoch counter continues from the global sample count.
* Not the same: every rank's RNG (masks, drop path, augmentation) starts a fresh stream seeded
  from ``(run.seed, step, rank)``: the run continues statistically, not bitwise.
* The effective batch is ``data.batch_size x dist.grad_accum x processes``; unless the user
  adjusts ``dist.grad_accum`` it changes, and the run prints a WARNING at start (stdout and
  stderr) with the old and new batch and the ``dist.grad_accum`` that would keep it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pretrain.fsutil import fsync_path, write_text_atomic

MARKER = "COMPLETE.json"
POINTER = "latest"
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and why."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


# ---- RNG state ---------------------------------------------------------------------------


def capture_rng() -> dict:
    """This process's python / numpy / torch (and CUDA) RNG states, torch-serialisable."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block without changing any RNG state (data loading, callbacks)."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


# ---- durability helpers ------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# ---- finding ---------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    """``path`` holds a marker whose listed files all exist with the recorded sizes."""
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker["files"]
        return bool(files) and all((path / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint, or None. The ``latest`` pointer is not trusted: a crash
    between the rename and the pointer update, or a damaged pointer, must not hide or fake one
    (see :func:`read_pointer` to compare)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_pointer(run_dir: str | Path) -> Optional[str]:
    """What the ``latest`` pointer names (None when missing or unreadable)."""
    try:
        return (checkpoint_root(run_dir) / POINTER).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# ---- saving ----------------------------------------------------------------------------


def save_checkpoint(runtime, run_dir: str | Path, step: int, trainer_state: dict, rank_state: dict,
                    keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically (all ranks call); returns its path.

    ``trainer_state`` (JSON-serialisable, rank 0's is kept) and ``rank_state`` (per rank: RNG,
    data position; torch-serialisable) go next to the runtime's model/optimizer files.
    Refuses (CheckpointError) when any parameter is non-finite.
    """
    root = checkpoint_root(run_dir)
    final, tmp = root / step_name(step), root / f".tmp-{step_name(step)}"
    signature = runtime.model_signature() if hasattr(runtime, "model_signature") else None
    if not runtime.params_finite():
        previous = find_latest(run_dir) if runtime.is_main else None
        raise CheckpointError(f"refusing to checkpoint step {step}: the model has non-finite parameters "
                              f"(the last good checkpoint, {previous}, is kept)")
    error = None
    if runtime.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = e
    if runtime.any(error is not None):
        raise CheckpointError(f"cannot create {tmp}: {error or 'failed on rank 0'}")

    # phase 1: every rank writes its part, then (after all have written) syncs the tree
    try:
        runtime.save(tmp)
        torch.save(rank_state, tmp / f"rank{runtime.rank:05d}.pt")
        if runtime.is_main:
            (tmp / "trainer.json").write_text(json.dumps(trainer_state))
    except Exception as e:  # noqa: BLE001 - any write failure must leave the old checkpoint
        error = e
    failed = runtime.any(error is not None)  # doubles as the barrier before syncing
    if not failed:
        try:
            _fsync_tree(tmp)
        except OSError as e:
            error = e
        failed = runtime.any(error is not None)
    # phase 2: rank 0 seals and publishes
    if not failed and runtime.is_main:
        try:
            marker = {"step": step, "world_size": runtime.world_size, "files": _file_sizes(tmp)}
            if signature is not None:
                marker["model"] = signature
            with open(tmp / MARKER, "w") as f:
                json.dump(marker, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            fsync_path(tmp)
            if final.exists():  # a leftover from a run started over with run.resume=false
                _trash(final)
            os.rename(tmp, final)
            fsync_path(root)
            write_text_atomic(root / POINTER, final.name + "\n")
        except Exception as e:  # noqa: BLE001
            error = e
    failed = runtime.any(error is not None) if not failed else True
    if failed:
        if runtime.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = find_latest(run_dir) if runtime.is_main else None
        runtime.barrier()
        where = f"rank {runtime.rank}: {type(error).__name__}: {error}" if error else "another rank"
        raise CheckpointError(f"saving checkpoint step {step} failed ({where}); the temporary directory "
                              f"was removed and the previous checkpoint ({previous}) is intact") from error
    if runtime.is_main:
        _prune(run_dir, keep_last)
    runtime.barrier()
    return final


def deepspeed_tag(ckpt_dir: str | Path) -> str:
    """The (last) DeepSpeed tag directory under ``ckpt_dir``: one holding ``*model_states.pt``."""
    ckpt_dir = Path(ckpt_dir)
    tags = [d.name for d in sorted(ckpt_dir.iterdir()) if d.is_dir() and any(d.glob("*model_states.pt"))]
    if not tags:
        raise FileNotFoundError(f"{ckpt_dir}: no DeepSpeed tag directory with *model_states.pt")
    return tags[-1]


def deepspeed_state_dict(ckpt_dir: str | Path, tag: Optional[str] = None, load=None,
                         guard=contextlib.nullcontext) -> dict:
    """Full fp32 state dict of a DeepSpeed checkpoint ``ckpt_dir/<tag>/`` (one home for the merge).

    ZeRO-0 stores the module whole (``*model_states.pt`` under ``"module"``); ZeRO 1-3 shard it and
    DeepSpeed's ``zero_to_fp32`` merges the shards (any world size). ``tag`` defaults to the one tag
    directory there is. ``load(path)`` reads a file (default ``torch.load(weights_only=True)``);
    ``guard()`` is entered around ``zero_to_fp32`` (``tubelet import`` passes its restricted loader
    and a guard that forces every ``torch.load`` inside to be weights-only).
    """
    ckpt_dir = Path(ckpt_dir)
    tag_dir = ckpt_dir / (tag or deepspeed_tag(ckpt_dir))
    if not any(tag_dir.glob("*optim_states.pt")):  # ZeRO-0: the module is stored whole
        load = load or (lambda f: torch.load(f, map_location="cpu", weights_only=True))
        states = load(next(tag_dir.glob("*model_states.pt")))
        sd = states["module"] if isinstance(states, dict) and "module" in states else states
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with guard():
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag_dir.name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _trash(path: Path) -> None:
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)  # atomic: the checkpoint disappears as a whole
    fsync_path(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(run_dir: Path, keep_last: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        _trash(path)
    for leftover in checkpoint_root(run_dir).glob(".trash-*"):
        shutil.rmtree(leftover, ignore_errors=True)


# ---- loading ---------------------------------------------------------------------------


def load_checkpoint(runtime, path: Path, elastic: bool = False) -> tuple[dict, dict]:
    """Restore model/optimizer from ``path``; return ``(trainer_state, this rank's rank_state)``.

    A checkpoint of another model (parameter names/shapes differ) is refused naming both. With
    the same number of processes the resume is exact. With a different number, ``elastic=True``
    restores the world-size-free state (see the module docstring) and returns
    ``{"elastic_from": M, "loaders": [loader state of old rank 0..M-1]}`` instead of a rank state
    (there is no RNG state to restore); ``elastic=False`` refuses.
    """
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a complete checkpoint ({e})") from e
    sig = marker.get("model")
    if sig is not None and hasattr(runtime, "model_signature"):
        mine = runtime.model_signature()
        if sig != mine:
            raise CheckpointError(f"{path} holds another model ({sig['tensors']} tensors, {sig['numel']} values, "
                                  f"digest {sig['digest']}) than this run builds ({mine['tensors']} tensors, "
                                  f"{mine['numel']} values, digest {mine['digest']}); check model.* or use a new "
                                  f"run.dir")
    saved = marker.get("world_size")
    if saved != runtime.world_size and not elastic:
        raise CheckpointError(f"{path} was written by {saved} process(es) but this run has "
                              f"{runtime.world_size}: exact resume needs the same number (or use a new run.dir)")
    trainer_state = json.loads((path / "trainer.json").read_text())
    if saved == runtime.world_size:
        runtime.load(path)
        rank_state = torch.load(path / f"rank{runtime.rank:05d}.pt", map_location="cpu", weights_only=True)
        return trainer_state, rank_state
    try:
        runtime.load_elastic(path)
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume {path} (written by {saved} process(es)) with {runtime.world_size}: "
                              f"{e}") from e
    loaders = [torch.load(path / f"rank{r:05d}.pt", map_location="cpu", weights_only=True)["loader"]
               for r in range(int(saved))]
    return trainer_state, {"elastic_from": int(saved), "loaders": loaders}
