"""Open anything that holds an encoder: one resolver behind ``load_encoder`` and ``tubelet export``.

Accepted (checked in this order):

* an exported encoder directory (``config.json`` with ``"format": "tubelet-encoder"`` +
  ``model.safetensors``);
* a model directory with ``config.json`` ``{"model": NAME, "model_kwargs": {...}}`` +
  ``model.safetensors`` — a pretraining run's ``final/`` or an imported pretrainer;
* a pretraining run directory: its ``final/`` when present, else its newest complete
  checkpoint (``checkpoints/step_*``), plain (``model.safetensors``) or DeepSpeed ZeRO shards
  (``ds/``, consolidated with DeepSpeed's ``zero_to_fp32`` under forced ``weights_only``);
* one checkpoint directory ``RUN/checkpoints/step_*`` (the model is described by the run's
  ``final/config.json`` or ``config.yaml``);
* a fine-tuning run (``final/`` of ``tubelet finetune``): the encoder, and the linear head of a
  full fine-tune;
* a Hugging Face VideoMAE directory, or an original VideoMAE / V2 ``.pth`` (converted on the fly).

Nothing is unpickled: see :mod:`finetune.safe_load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch.nn as nn

from finetune.importers import IMAGENET_MEAN, IMAGENET_STD, import_hf, import_original, is_hf_dir, load_exact
from finetune.safe_load import (PICKLE_SUFFIXES, forced_weights_only, read_state_dict, screen, torch_load,
                                unwrap_state_dict)

ENCODER_FORMAT = "tubelet-encoder"


@dataclass
class Source:
    """A model read from disk plus what it says about its inputs."""

    model: nn.Module
    """An encoder (VideoViT / MViT) or a pretrainer with ``.encoder``."""
    origin: str
    name: Optional[str] = None
    model_kwargs: dict = field(default_factory=dict)
    head: Optional[dict] = None
    labels: Optional[list] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    data: dict = field(default_factory=dict)
    """Clip geometry when known: ``num_frames``, ``img_size``, ``sampling_rate``."""
    report: dict = field(default_factory=dict)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder if hasattr(self.model, "encoder") and isinstance(self.model.encoder, nn.Module) \
            else self.model


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def _run_data(run_dir: Path) -> dict:
    """``data`` section of a run's ``config.yaml`` (mean/std, clip geometry), {} when absent."""
    import yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    doc = yaml.safe_load(p.read_text()) or {}
    return doc.get("data", {}) if isinstance(doc, dict) else {}


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
    from pretrain.engine import model_kwargs

    try:
        cfg = load_config(PretrainConfig, p)
    except ConfigError:
        return None  # not a pretraining run (e.g. a fine-tuning one)
    return cfg.model.name, model_kwargs(cfg)


def build_registered(name: str, kwargs: dict) -> nn.Module:
    from pretrain.models import create_model

    return create_model(name, **kwargs)


def _model_spec(ckpt_dir: Path) -> tuple:
    """Find how the model of a checkpoint was built: ``config.json`` here or the run's ``final/``,
    else the run's ``config.yaml``."""
    for cand in (ckpt_dir, ckpt_dir.parent.parent / "final", ckpt_dir.parent / "final"):
        cj = cand / "config.json"
        if cj.is_file():
            c = _read_json(cj)
            if "model" in c and "model_kwargs" in c:
                return c["model"], c["model_kwargs"]
    for run in (ckpt_dir.parent.parent, ckpt_dir.parent, ckpt_dir):
        spec = _spec_from_yaml(run)
        if spec:
            return spec
    raise FileNotFoundError(f"{ckpt_dir}: cannot tell which model this checkpoint holds (no config.json with "
                            "'model'/'model_kwargs' and no run config.yaml next to it)")


def _deepspeed_state_dict(ckpt_dir: Path) -> dict:
    """Full fp32 state dict of a DeepSpeed checkpoint ``ckpt_dir/<tag>/``; every shard is read
    through the restricted unpickler (a shard with a payload is refused before anything runs)."""
    tags = [d for d in sorted(ckpt_dir.iterdir()) if d.is_dir() and any(d.glob("*model_states.pt"))]
    if not tags:
        raise FileNotFoundError(f"{ckpt_dir}: no DeepSpeed tag directory with *model_states.pt")
    tag = tags[-1]
    # screen every file first (opcode scan, no tensors loaded) so the error names the offending file
    for f in sorted(tag.glob("*.pt")):
        screen(f)
    if not any(tag.glob("*optim_states.pt")):  # ZeRO-0: the module is stored whole
        return unwrap_state_dict(torch_load(next(tag.glob("*model_states.pt"))), tag)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with forced_weights_only():
        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag.name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _checkpoint_source(ckpt: Path) -> Source:
    name, kwargs = _model_spec(ckpt)
    model = build_registered(name, kwargs)
    if (ckpt / "model.safetensors").is_file():
        sd = read_state_dict(ckpt / "model.safetensors")
    else:
        sd = _deepspeed_state_dict(ckpt)
    report = load_exact(model, sd, str(ckpt))
    run = ckpt.parent.parent
    return _with_data(Source(model, f"checkpoint {ckpt}", name, kwargs, report=report), _run_data(run))


# only classes from these packages are ever rebuilt from a config.json "class" entry
_CLASS_PACKAGES = ("pretrain.models.", "finetune.")


def build_from_config(cfg: dict, where: Path | str = "config.json") -> nn.Module:
    """Rebuild the module a native ``config.json`` describes: ``class(**model_kwargs)``, or
    ``create_model(model, **model_kwargs)`` when no class is given."""
    import importlib

    kwargs = cfg.get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: 'model_kwargs' must be a mapping")
    path = cfg.get("class")
    if not path:
        return build_registered(cfg["model"], kwargs)
    mod, _, qual = path.partition(":")
    if not mod.startswith(_CLASS_PACKAGES) or not qual.isidentifier():
        raise ValueError(f"{where}: class {path!r} is not a tubelet model class "
                         f"(allowed modules: {', '.join(p + '*' for p in _CLASS_PACKAGES)})")
    import pretrain.models  # noqa: F401  (registers every model)

    cls = getattr(importlib.import_module(mod), qual, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(f"{where}: {path!r} is not an nn.Module class")
    return cls(**kwargs)


def _native_encoder(d: Path, cfg: dict) -> Source:
    model = build_from_config(cfg, d / "config.json")
    report = load_exact(model, read_state_dict(d / "model.safetensors"), str(d))
    head = read_state_dict(d / "head.safetensors") if (d / "head.safetensors").is_file() else None
    src = Source(model, f"encoder {d}", cfg.get("model"), cfg.get("model_kwargs", {}), head=head,
                 labels=(cfg.get("head") or {}).get("labels"), report=report)
    src.mean, src.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    src.data = dict(cfg.get("data") or {})
    return src


def _classifier_source(d: Path, cfg: dict) -> Source:
    """A ``tubelet finetune`` result (``final/`` with ``"format": "tubelet-classifier"``): its
    encoder, plus the linear head when it was full fine-tuning (``VideoClassifier``)."""
    spec = cfg.get("spec") or {}
    if spec.get("arch") != "encoder":
        raise ValueError(f"{d}: a fine-tuned {spec.get('arch', '?')} ({spec.get('name', cfg.get('model'))}) has "
                         "no tubelet encoder to export")
    enc = build_from_config(spec["encoder"], d / "config.json")
    sd = read_state_dict(d / "model.safetensors")
    report = load_exact(enc, {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, str(d))
    head = None
    if spec.get("head") == "finetune":
        head = {"weight": sd["head.weight"], "bias": sd["head.bias"]}
    src = Source(enc, f"fine-tuned {spec.get('head')} classifier {d}", spec["encoder"].get("model"),
                 spec["encoder"].get("model_kwargs", {}), head=head, labels=cfg.get("classes"), report=report)
    src.mean = tuple(spec["encoder"].get("mean", IMAGENET_MEAN))
    src.std = tuple(spec["encoder"].get("std", IMAGENET_STD))
    return _with_data(src, _run_data(d.parent) if d.name == "final" else {})


def open_source(path: str | Path, **import_kw) -> Source:
    """Resolve ``path`` (see module docstring) to a :class:`Source` with its weights loaded.

    ``import_kw`` go to :func:`finetune.importers.import_original` for ``.pth`` files
    (``num_frames``, ``img_size``, ``num_heads``, ``decoder_num_heads``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: does not exist")
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / "config.json").is_file():
            return open_source(p.parent, **import_kw)  # e.g. RUN/final/model.safetensors: described next door
        if p.suffix in PICKLE_SUFFIXES or p.suffix == ".safetensors":
            imp = import_original(p, **import_kw)
            return Source(imp.model, f"VideoMAE checkpoint {p}", imp.name, imp.model_kwargs, head=imp.head,
                          mean=imp.mean, std=imp.std, data=_geometry(imp.model_kwargs), report=imp.report)
        raise ValueError(f"{p}: not a checkpoint file (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    cj = p / "config.json"
    if cj.is_file():
        cfg = _read_json(cj)
        if cfg.get("format") == ENCODER_FORMAT:
            return _native_encoder(p, cfg)
        if cfg.get("format") == "tubelet-classifier":
            return _classifier_source(p, cfg)
        if cfg.get("model_type") == "videomae" or is_hf_dir(p):
            imp = import_hf(p)
            return Source(imp.model, f"Hugging Face {p}", imp.name, imp.model_kwargs, head=imp.head,
                          labels=imp.labels, mean=imp.mean, std=imp.std, data=_geometry(imp.model_kwargs),
                          report=imp.report)
        if "model" in cfg and "model_kwargs" in cfg and (p / "model.safetensors").is_file():
            model = build_registered(cfg["model"], cfg["model_kwargs"])
            report = load_exact(model, read_state_dict(p / "model.safetensors"), str(p))
            src = Source(model, f"model {p}", cfg["model"], cfg["model_kwargs"], report=report)
            if cfg.get("mean") and cfg.get("std"):
                src.mean, src.std = tuple(cfg["mean"]), tuple(cfg["std"])
            run_data = _run_data(p.parent) if p.name == "final" else {}  # a run's final/: the run's data
            return _with_data(src, {**run_data, **(cfg.get("data") or {})})
    if (p / "final" / "config.json").is_file():
        return open_source(p / "final")
    if (p / "checkpoints").is_dir():
        from pretrain.checkpoint import find_latest

        latest = find_latest(p)
        if latest is None:
            raise FileNotFoundError(f"{p}: a run directory without final/ or any complete checkpoint")
        return _checkpoint_source(latest)
    if (p / "COMPLETE.json").is_file() or (p / "model.safetensors").is_file() or (p / "ds").is_dir():
        return _checkpoint_source(p)
    raise ValueError(f"{p}: not an encoder directory, run directory, checkpoint, Hugging Face VideoMAE "
                     "directory or VideoMAE .pth")


def _geometry(kw: dict) -> dict:
    img = kw.get("img_size", 224)
    return {"num_frames": kw.get("num_frames", 16), "img_size": img[0] if isinstance(img, (list, tuple)) else img}
