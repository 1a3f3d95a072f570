"""tubelet's own directories: ``config.json`` + ``model.safetensors``, written and read; no pickle.

The format names and the ``config.json`` schema are defined here and nowhere else
(:data:`ENCODER_FORMAT`, :data:`PRETRAINER_FORMAT`, :data:`CLASSIFIER_FORMAT`,
:func:`encoder_config`, :func:`pretrainer_config`).

Encoder directory (``tubelet export --format native``, ``tubelet import`` of a model or a
classifier): ``model.safetensors`` (the encoder's state dict, nothing else) and ``config.json``::

    {"format": "tubelet-encoder", "format_version": 1, "tubelet_version": "0.1.0",
     "class": "pretrain.models.vit:VideoViT", "model": "vit_small", "model_kwargs": {...},
     "num_frames": 16, "img_size": 224, "embed_dim": 384, "mean": [...], "std": [...],
     "data": {"num_frames": 16, "img_size": 224, "sampling_rate": 4}, "head": null, "source": "..."}

:func:`read_encoder_dir` rebuilds ``class(**model_kwargs)`` (classes of tubelet's packages only)
and loads the tensors with the exact key set asserted; an imported classifier also holds
``head.safetensors`` (``weight``, ``bias``), read into :attr:`Source.head`.

Pretrainer directory (``tubelet import`` of ``VideoMAEForPreTraining`` / an original pretraining
``.pth``): the layout of a pretraining run's ``final/`` — ``model.safetensors`` (the full
pretrainer state dict, tubelet names) + ``config.json`` ``{"format": "tubelet-pretrainer",
"model": NAME, "model_kwargs": {...}, ...}`` (a run's ``final/config.json`` has ``model`` and
``model_kwargs`` without a format) — plus ``pretrain.yaml``, the preset that builds the same
architecture; ``tubelet pretrain model.init=DIR`` warm-starts from it.

Classifier directory (``final/`` of ``tubelet finetune``, written by :mod:`finetune.main`):
``"format": "tubelet-classifier"`` with the architecture ``spec``; :func:`read_classifier_dir`
takes its encoder (and the linear head of a full fine-tune).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch.nn as nn

from finetune.interop.safe_load import read_state_dict
from finetune.interop.weights import IMAGENET_MEAN, IMAGENET_STD, Source, load_exact, unshare

FORMAT_VERSION = 1
ENCODER_FORMAT = "tubelet-encoder"
PRETRAINER_FORMAT = "tubelet-pretrainer"
CLASSIFIER_FORMAT = "tubelet-classifier"
CONFIG_FILE, WEIGHTS_FILE, HEAD_FILE = "config.json", "model.safetensors", "head.safetensors"

# only classes from these packages are ever rebuilt from a config.json "class" entry
_CLASS_PACKAGES = ("pretrain.models.", "finetune.")


def _version() -> str:
    from pretrain import __version__

    return __version__


def read_json(p: Path) -> dict:
    try:
        return json.loads(Path(p).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _save_safetensors(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(unshare(sd), str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------
# the config.json schema


def encoder_config(enc: nn.Module, *, name: Optional[str] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   data: Optional[dict] = None, source: str = "", head: Optional[dict] = None,
                   labels: Optional[list] = None) -> dict:
    """The ``config.json`` of an encoder directory (see module docstring)."""
    mc = getattr(enc, "model_config", None)
    if not isinstance(mc, dict):
        raise TypeError(f"{type(enc).__name__} has no model_config dict; cannot describe it for rebuilding")
    json.dumps(mc)  # raises if the constructor kwargs are not JSON-serialisable
    cls = type(enc)
    img = mc.get("img_size", 224)
    geom = {"num_frames": mc.get("num_frames"), "img_size": img[0] if isinstance(img, (list, tuple)) else img}
    return {"format": ENCODER_FORMAT, "format_version": FORMAT_VERSION, "tubelet_version": _version(),
            "class": f"{cls.__module__}:{cls.__qualname__}", "model": name, "model_kwargs": mc,
            **geom, "embed_dim": getattr(enc, "embed_dim", None), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "data": {**geom, **(data or {})},
            "head": None if head is None else {"num_classes": int(head["weight"].shape[0]), "labels": labels},
            "source": source}


def pretrainer_config(model: nn.Module, name: Optional[str], model_kwargs: dict, *, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, source: str = "") -> dict:
    """The ``config.json`` of a pretrainer directory (see module docstring)."""
    mc = model.encoder.model_config
    return {"format": PRETRAINER_FORMAT, "format_version": FORMAT_VERSION, "tubelet_version": _version(),
            "model": name, "model_kwargs": model_kwargs, "mean": list(mean), "std": list(std),
            "data": {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0]}, "source": source}


def is_model_config(cfg: dict) -> bool:
    """A pretrainer directory's config, or a run's ``final/config.json`` (no format, same keys)."""
    return cfg.get("format") in (PRETRAINER_FORMAT, None) and "model" in cfg and "model_kwargs" in cfg


# ------------------------------------------------------------------------------------------------
# rebuilding models


def size_name(kwargs: dict, prefix: str) -> Optional[str]:
    """``{prefix}_{size}`` of the registered size whose dimensions ``kwargs`` has, else None."""
    from pretrain.models.vit import VIT_SIZES

    for size, dims in VIT_SIZES.items():
        if all(kwargs.get(k) == v for k, v in dims.items()):
            return f"{prefix}_{size}"
    return None


def build_registered(name: str, kwargs: dict) -> nn.Module:
    from pretrain.models import create_model

    return create_model(name, **kwargs)


def build_from_config(cfg: dict, where: Path | str = CONFIG_FILE) -> nn.Module:
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


# ------------------------------------------------------------------------------------------------
# writing


def save_encoder(enc: nn.Module, out_dir: str | Path, *, name: Optional[str] = None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, data: Optional[dict] = None, source: str = "",
                 head: Optional[dict] = None, labels: Optional[list] = None) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}`` (+ ``head.safetensors`` with ``head``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = encoder_config(enc, name=name, mean=mean, std=std, data=data, source=source, head=head, labels=labels)
    _save_safetensors(enc.state_dict(), out / WEIGHTS_FILE)
    if head is not None:
        _save_safetensors({"weight": head["weight"], "bias": head["bias"]}, out / HEAD_FILE)
    _write_json(out / CONFIG_FILE, cfg)
    return out


def _encoder_name(src: Source) -> Optional[str]:
    """The registered encoder size the weights have (``vit_small``...), None for custom sizes."""
    mc = getattr(src.encoder, "model_config", None) or {}
    if src.encoder is src.model and src.name and not src.name.startswith("vit_"):
        return src.name  # another family (e.g. mvitv2_*): keep its registered name
    return size_name(mc, "vit")


def save_source(src: Source, out_dir: str | Path, source: Optional[str] = None) -> Path:
    """Encoder directory for any :class:`Source` (a pretrainer: its encoder); ``source`` is
    recorded in config.json (default: ``src.origin``)."""
    return save_encoder(src.encoder, out_dir, name=_encoder_name(src), mean=src.mean, std=src.std,
                        data=src.data, source=src.origin if source is None else source, head=src.head,
                        labels=src.labels)


def save_pretrainer(src: Source, out_dir: str | Path, source: str = "") -> Path:
    """Pretrainer directory (config.json, model.safetensors, pretrain.yaml) for a pretraining
    :class:`Source` (``src.kind == "pretraining"``)."""
    if src.kind != "pretraining":
        raise ValueError(f"{src.origin}: holds no decoder; a pretrainer directory needs the whole pretrainer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(src.model.state_dict(), out / WEIGHTS_FILE)
    _write_json(out / CONFIG_FILE, pretrainer_config(src.model, src.name, src.model_kwargs, mean=src.mean,
                                                     std=src.std, source=source))
    _write_pretrain_preset(out, src)
    return out


def _write_pretrain_preset(out: Path, src: Source) -> None:
    """``pretrain.yaml``: the ``model`` / ``data`` settings under which ``tubelet pretrain`` builds
    exactly this architecture (use it as a ``base:`` of a run config)."""
    import yaml

    mc = src.model.encoder.model_config
    kwargs = {k: v for k, v in src.model_kwargs.items() if k not in ("num_frames", "img_size")}
    doc = {"model": {"name": src.name, "kwargs": kwargs},
           "data": {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0],
                    "mean": [float(v) for v in src.mean], "std": [float(v) for v in src.std]}}
    for key in ("mask_type", "mask_ratio", "decoder_mask_ratio"):
        if key in kwargs:
            doc["model"][key] = kwargs.pop(key)
    header = (f"# Architecture of {out} (written by `tubelet import`). Use as a base of a pretraining config:\n"
              f"#   base: [{out / 'pretrain.yaml'}]\n")
    (out / "pretrain.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))


# ------------------------------------------------------------------------------------------------
# reading


def read_encoder_dir(d: Path, cfg: dict) -> Source:
    """An encoder directory (``cfg``: its config.json, format :data:`ENCODER_FORMAT`)."""
    model = build_from_config(cfg, d / CONFIG_FILE)
    report = load_exact(model, read_state_dict(d / WEIGHTS_FILE), str(d))
    head = read_state_dict(d / HEAD_FILE) if (d / HEAD_FILE).is_file() else None
    src = Source(model, f"encoder {d}", cfg.get("model"), cfg.get("model_kwargs", {}), head=head,
                 labels=(cfg.get("head") or {}).get("labels"), report=report)
    src.mean, src.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    src.data = dict(cfg.get("data") or {})
    return src


def read_model_dir(d: Path, cfg: dict) -> Source:
    """A pretrainer directory or a run's ``final/`` (``cfg``: ``{"model", "model_kwargs"}``).
    Clip geometry: the config's ``data``; the caller adds the run's."""
    model = build_registered(cfg["model"], cfg["model_kwargs"])
    report = load_exact(model, read_state_dict(d / WEIGHTS_FILE), str(d))
    src = Source(model, f"model {d}", cfg["model"], cfg["model_kwargs"], report=report)
    if cfg.get("mean") and cfg.get("std"):
        src.mean, src.std = tuple(cfg["mean"]), tuple(cfg["std"])
    return src


def read_classifier_dir(d: Path, cfg: dict) -> Source:
    """A ``tubelet finetune`` result (format :data:`CLASSIFIER_FORMAT`): its encoder, plus the
    linear head when it was full fine-tuning (``VideoClassifier``)."""
    spec = cfg.get("spec") or {}
    if spec.get("arch") != "encoder":
        raise ValueError(f"{d}: a fine-tuned {spec.get('arch', '?')} ({spec.get('name', cfg.get('model'))}) has "
                         "no tubelet encoder to export")
    enc = build_from_config(spec["encoder"], d / CONFIG_FILE)
    sd = read_state_dict(d / WEIGHTS_FILE)
    report = load_exact(enc, {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, str(d))
    head = None
    if spec.get("head") == "finetune":
        head = {"weight": sd["head.weight"], "bias": sd["head.bias"]}
    src = Source(enc, f"fine-tuned {spec.get('head')} classifier {d}", spec["encoder"].get("model"),
                 spec["encoder"].get("model_kwargs", {}), head=head, labels=cfg.get("classes"), report=report)
    src.mean = tuple(spec["encoder"].get("mean", IMAGENET_MEAN))
    src.std = tuple(spec["encoder"].get("std", IMAGENET_STD))
    return src
