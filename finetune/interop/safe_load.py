"""Reading weights without ever running a pickle.

Every ``.pth`` / ``.pt`` / ``.bin`` file tubelet reads goes through :func:`torch_load`, which is
``torch.load(weights_only=True)``: PyTorch's restricted unpickler only rebuilds tensors, containers
and primitive values, plus the few benign classes in :data:`ALLOWED_GLOBALS` (VideoMAE's
checkpoints carry their ``argparse.Namespace``; DeepSpeed's optimizer shards carry a loss-scaler
record and an enum). Anything else — a ``__reduce__`` that calls ``os.system``, an unknown class —
is refused with :class:`UnsafeCheckpointError` naming the file, *before* any of it executes.

Third-party code that calls ``torch.load(weights_only=False)`` itself (DeepSpeed's
``zero_to_fp32``) runs inside :func:`forced_weights_only`, which sets PyTorch's
``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch so those calls get the same restricted unpickler.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import torch

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Benign classes real checkpoints contain; each only gets its attributes set, nothing is called.
ALLOWED_GLOBALS: list = [argparse.Namespace]


def _deepspeed_globals() -> list:
    """DeepSpeed's optimizer-state records (plain data holders), when DeepSpeed is installed."""
    out: list = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        out += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    except ImportError:  # pragma: no cover - deepspeed is a dependency, but stay importable without it
        pass
    return out


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs more than tensors and plain values to load; it was not unpickled."""


def _refusal(path: Path, err: Exception) -> UnsafeCheckpointError:
    detail = str(err).strip().splitlines()
    # PyTorch's message is long; keep the line naming the offending global.
    why = next((ln.strip() for ln in detail if "GLOBAL" in ln or "Unsupported" in ln), detail[0] if detail else "")
    return UnsafeCheckpointError(
        f"{path}: refused to load — it needs more than weights (torch.load(weights_only=True) failed: {why}). "
        "tubelet never unpickles arbitrary objects; re-save the state dict with safetensors or "
        "torch.save(model.state_dict()) from a trusted environment.")


def torch_load(path: str | Path, extra_globals: list | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; an unsafe file raises :class:`UnsafeCheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    allowed = ALLOWED_GLOBALS + _deepspeed_globals() + list(extra_globals or [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except (RuntimeError, AttributeError, EOFError, ValueError) as e:
        if "weights_only" in str(e) or "Unsupported" in str(e) or "GLOBAL" in str(e):
            raise _refusal(path, e) from None
        raise RuntimeError(f"{path}: not a readable PyTorch checkpoint ({e})") from e


def screen(path: str | Path) -> None:
    """Refuse a checkpoint whose pickle names any callable outside the allowed set, without
    loading its tensors (scans the pickle opcodes; legacy non-zip files get a full safe load)."""
    path = Path(path)
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS + _deepspeed_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: the restricted load decides
        torch_load(path)
        return
    bad = sorted(set(found) - allowed)
    if bad:
        raise UnsafeCheckpointError(f"{path}: refused to load — its pickle calls {', '.join(bad[:5])}, which "
                                    "tubelet never runs; re-save the weights with safetensors or a plain state dict")


@contextlib.contextmanager
def forced_weights_only() -> Iterator[None]:
    """Make every ``torch.load`` inside the block restricted, even ``weights_only=False`` ones.

    Used around DeepSpeed's ``zero_to_fp32``; its ``UnpicklingError`` on a bad shard propagates.
    """
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    no_old = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # the two switches are exclusive
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS + _deepspeed_globals()):
            yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old
        if no_old is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = no_old


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the state dict in a checkpoint: itself, or nested under ``model`` / ``module`` /
    ``state_dict`` / ``model_state`` (VideoMAE saves ``{"model": ..., "args": ...}``, DeepSpeed
    ``{"module": ...}``). ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes are removed."""
    cur = obj
    for _ in range(4):
        if _is_state_dict(cur):
            break
        if not isinstance(cur, dict):
            break
        for key in ("model", "module", "state_dict", "model_state", "model_state_dict"):
            if key in cur and isinstance(cur[key], dict):
                cur = cur[key]
                break
        else:
            break
    if not _is_state_dict(cur):
        keys = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: no state dict found (top-level keys: {keys}); expected tensors, "
                         "possibly under 'model', 'module' or 'state_dict'")
    out = {}
    for k, v in cur.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or (safely) of a pickle checkpoint, unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in PICKLE_SUFFIXES:
        return unwrap_state_dict(torch_load(path), path)
    raise ValueError(f"{path}: unknown weight file type {path.suffix!r} "
                     f"(expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)})")
