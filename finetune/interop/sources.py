"""Open anything that holds an encoder: the one resolver behind ``load_encoder``, ``tubelet export``,
``tubelet finetune --init``, ``tubelet extract`` and ``tubelet evaluate --probe``.

Accepted (checked in this order):

* an exported encoder directory (``config.json`` with ``"format": "tubelet-encoder"`` +
  ``model.safetensors``; :mod:`finetune.interop.native`);
* a fine-tuning result (``final/`` of ``tubelet finetune``, ``"format": "tubelet-classifier"``):
  the encoder, and the linear head of a full fine-tune;
* a Hugging Face VideoMAE directory (converted on the fly; :mod:`finetune.interop.hf`);
* a model directory with ``config.json`` ``{"model": NAME, "model_kwargs": {...}}`` +
  ``model.safetensors`` — a pretraining run's ``final/`` or an imported pretrainer;
* a run directory: its ``final/`` when present, else its newest complete checkpoint
  (``checkpoints/step_*``), plain (``model.safetensors``) or DeepSpeed ZeRO shards (``ds/``,
  consolidated with DeepSpeed's ``zero_to_fp32`` under forced ``weights_only``);
* one checkpoint directory ``RUN/checkpoints/step_*`` (the model is described by the run's
  ``final/config.json`` or ``config.yaml``);
* an original VideoMAE / V2 ``.pth`` (:mod:`finetune.interop.pth`).

Anything else is refused with ``FileNotFoundError`` / ``ValueError`` naming the path. Nothing is
unpickled: see :mod:`finetune.interop.safe_load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from finetune.interop import native
from finetune.interop.hf import import_hf, is_hf_dir
from finetune.interop.pth import import_original
from finetune.interop.safe_load import (PICKLE_SUFFIXES, UnsafeCheckpointError, forced_weights_only, read_state_dict,
                                        screen, torch_load, unwrap_state_dict)
from finetune.interop.weights import Source
from pretrain.models.state_dict import load_exact

UNREADABLE = (FileNotFoundError, ValueError, UnsafeCheckpointError)
"""What :func:`open_source` raises for a path that holds nothing it can read (missing, not a
tubelet / HF / run directory, a refused pickle, weights that do not fit their description)."""


def load_encoder(path: str | Path, device: str | torch.device = "cpu", **import_kw) -> nn.Module:
    """The encoder held by ``path`` (exported encoder dir, run dir, checkpoint, HF dir, ``.pth``),
    in eval mode on ``device``. No pickle is ever executed."""
    return open_source(path, **import_kw).encoder.eval().to(device)


def open_source_arg(path: str | Path, flag: str, **import_kw) -> Source:
    """:func:`open_source` for a command-line flag: what it cannot read raises
    :class:`~pretrain.config.UsageError` naming ``flag`` (one line on stderr, exit 2)."""
    from pretrain.config import UsageError

    try:
        return open_source(path, **import_kw)
    except UNREADABLE as e:
        raise UsageError(f"{flag}: {e}") from e


def open_source(path: str | Path, **import_kw) -> Source:
    """Resolve ``path`` (see module docstring) to a :class:`Source` with its weights loaded.

    ``import_kw`` go to :func:`finetune.interop.pth.import_original` for ``.pth`` files
    (``num_frames``, ``img_size``, ``num_heads``, ``decoder_num_heads``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: does not exist")
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / native.CONFIG_FILE).is_file():
            return open_source(p.parent, **import_kw)  # e.g. RUN/final/model.safetensors: described next door
        if p.suffix in PICKLE_SUFFIXES or p.suffix == ".safetensors":
            return import_original(p, **import_kw)
        raise ValueError(f"{p}: not a checkpoint file (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    cj = p / native.CONFIG_FILE
    if cj.is_file():
        cfg = native.read_json(cj)
        if cfg.get("format") == native.ENCODER_FORMAT:
            return native.read_encoder_dir(p, cfg)
        if cfg.get("format") == native.CLASSIFIER_FORMAT:
            return _with_data(native.read_classifier_dir(p, cfg), _final_run_data(p))
        if cfg.get("model_type") == "videomae" or is_hf_dir(p):
            return import_hf(p)
        if native.is_model_config(cfg) and (p / native.WEIGHTS_FILE).is_file():
            return _with_data(native.read_model_dir(p, cfg), {**_final_run_data(p), **(cfg.get("data") or {})})
    if (p / "final" / native.CONFIG_FILE).is_file():
        return open_source(p / "final")
    if (p / "checkpoints").is_dir():
        from pretrain.train.checkpoint import find_latest

        latest = find_latest(p)
        if latest is None:
            raise FileNotFoundError(f"{p}: a run directory without final/ or any complete checkpoint")
        return _checkpoint_source(latest)
    if (p / "COMPLETE.json").is_file() or (p / native.WEIGHTS_FILE).is_file() or (p / "ds").is_dir():
        return _checkpoint_source(p)
    raise ValueError(f"{p}: not an encoder directory, run directory, checkpoint, Hugging Face VideoMAE "
                     "directory or VideoMAE .pth")


# ------------------------------------------------------------------------------------------------
# run directories and their checkpoints


def _run_data(run_dir: Path) -> dict:
    """``data`` section of a run's ``config.yaml`` (mean/std, clip geometry), {} when absent."""
    import yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    doc = yaml.safe_load(p.read_text()) or {}
    return doc.get("data", {}) if isinstance(doc, dict) else {}


def _final_run_data(d: Path) -> dict:
    """A run's ``final/`` is described by the run's data section too."""
    return _run_data(d.parent) if d.name == "final" else {}


def _with_data(src: Source, data: dict) -> Source:
    if data.get("mean") and data.get("std"):
        src.mean, src.std = tuple(data["mean"]), tuple(data["std"])
    src.data.update({k: data[k] for k in ("num_frames", "img_size", "sampling_rate") if k in data})
    return src


def _spec_from_yaml(run_dir: Path) -> Optional[tuple]:
    """``(name, kwargs)`` the pretraining loop builds from ``RUN/config.yaml`` (same function)."""
    p = run_dir / "config.yaml"
    if not p.is_file():
        return None
    from pretrain.config import ConfigError, PretrainConfig, load_config
    from pretrain.main import model_kwargs

    try:
        cfg = load_config(PretrainConfig, p)
    except ConfigError:
        return None  # not a pretraining run (e.g. a fine-tuning one)
    return cfg.model.name, model_kwargs(cfg)


def _model_spec(ckpt_dir: Path) -> tuple:
    """Find how the model of a checkpoint was built: ``config.json`` here or the run's ``final/``,
    else the run's ``config.yaml``."""
    for cand in (ckpt_dir, ckpt_dir.parent.parent / "final", ckpt_dir.parent / "final"):
        cj = cand / native.CONFIG_FILE
        if cj.is_file():
            c = native.read_json(cj)
            if "model" in c and "model_kwargs" in c:
                return c["model"], c["model_kwargs"]
    for run in (ckpt_dir.parent.parent, ckpt_dir.parent, ckpt_dir):
        spec = _spec_from_yaml(run)
        if spec:
            return spec
    raise FileNotFoundError(f"{ckpt_dir}: cannot tell which model this checkpoint holds (no config.json with "
                            "'model'/'model_kwargs' and no run config.yaml next to it)")


def _deepspeed_state_dict(ckpt_dir: Path) -> dict:
    """Full fp32 state dict of a DeepSpeed checkpoint ``ckpt_dir/<tag>/``; every shard is screened
    first and read through the restricted unpickler (a shard with a payload is refused before
    anything runs). The merge itself is :func:`pretrain.train.checkpoint.deepspeed_state_dict`."""
    from pretrain.train.checkpoint import deepspeed_state_dict, deepspeed_tag

    tag = deepspeed_tag(ckpt_dir)
    # screen every file first (opcode scan, no tensors loaded) so the error names the offending file
    for f in sorted((ckpt_dir / tag).glob("*.pt")):
        screen(f)
    return deepspeed_state_dict(ckpt_dir, tag, load=lambda f: unwrap_state_dict(torch_load(f), f),
                                guard=forced_weights_only)


def _checkpoint_source(ckpt: Path) -> Source:
    name, kwargs = _model_spec(ckpt)
    model = native.build_registered(name, kwargs)
    if (ckpt / native.WEIGHTS_FILE).is_file():
        sd = read_state_dict(ckpt / native.WEIGHTS_FILE)
    else:
        sd = _deepspeed_state_dict(ckpt)
    report = load_exact(model, sd, str(ckpt))
    run = ckpt.parent.parent
    return _with_data(Source(model, f"checkpoint {ckpt}", name, kwargs, report=report), _run_data(run))
