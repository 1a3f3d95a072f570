"""tubelet's own directories: ``config.json`` + ``model.safetensors``, written and read; no pickle.

The format names are defined here (:data:`ENCODER_FORMAT`, :data:`PRETRAINER_FORMAT`,
:data:`CLASSIFIER_FORMAT`); the encoder ``config.json`` schema is
:mod:`pretrain.models.pretrained`'s (the one behind ``VideoViT.save_pretrained`` /
``from_pretrained``), which this module fills from a :class:`Source`.

Encoder directory (``tubelet export --format native``, ``tubelet import`` of a model or a
classifier): ``model.safetensors`` (the encoder's state dict, nothing else) and ``config.json``
(format version 2; version-1 directories still read)::

    {"format": "tubelet-encoder", "format_version": 2, "tubelet_version": "0.1.0",
     "model_type": "tubelet_vit", "architectures": ["VideoViT"], "model": "vit_small",
     "model_kwargs": {...}, "mean": [...], "std": [...], "sampling_rate": 4, "source": "model runs/tiny/final"}

:func:`read_encoder_dir` rebuilds ``MODEL_TYPES[model_type](**model_kwargs)`` (tubelet's encoder
classes only) and loads the tensors with the exact key set asserted; an imported classifier also
holds ``head.safetensors`` (``weight``, ``bias``), read into :attr:`Source.head` and described by
``config.json``'s ``"head": {"num_classes", "labels"}``.

Pretrainer directory (``tubelet import`` of ``VideoMAEForPreTraining`` / an original pretraining
``.pth``): the layout of a pretraining run's ``final/`` — ``model.safetensors`` (the full
pretrainer state dict, tubelet names) + ``config.json`` ``{"format": "tubelet-pretrainer",
"model": NAME, "model_kwargs": {...}, ...}`` (a run's ``final/config.json`` has ``model`` and
``model_kwargs`` without a format) — plus ``pretrain.yaml``, the preset that builds the same
architecture; ``tubelet pretrain model.init=DIR`` warm-starts from it.

Classifier directory (``final/`` of ``tubelet finetune``, written by :mod:`finetune.main`):
``"format": "tubelet-classifier"`` with the architecture ``spec`` (its ``encoder``: an
:func:`encoder_config`); :func:`read_classifier_dir` takes its encoder (and the linear head of a
full fine-tune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.nn as nn

from finetune.interop.safe_load import read_state_dict
from finetune.interop.weights import IMAGENET_MEAN, IMAGENET_STD, Source
from pretrain.models.state_dict import load_exact, unshare
from pretrain.models import pretrained
from pretrain.models.pretrained import CONFIG_FILE, ENCODER_FORMAT, WEIGHTS_FILE  # noqa: F401  (re-exported)

PRETRAINER_FORMAT = "tubelet-pretrainer"
PRETRAINER_FORMAT_VERSION = 1
CLASSIFIER_FORMAT = "tubelet-classifier"
HEAD_FILE = "head.safetensors"
ENCODER_DATA_KEYS = ("num_frames", "img_size", "sampling_rate")
"""What :attr:`Source.data` may hold; the clip geometry is the encoder's own (``model_kwargs``)."""
read_json = pretrained.read_config
_write_json = pretrained.write_config
_version = pretrained.tubelet_version


def _save_safetensors(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(unshare(sd), str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------
# the config.json schema


def encoder_config(enc: nn.Module, *, name: Optional[str] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   data: Optional[dict] = None, source: str = "", head: Optional[dict] = None,
                   labels: Optional[list] = None) -> dict:
    """The ``config.json`` of an encoder directory (:func:`pretrain.models.pretrained.encoder_config`).

    ``data``: a :attr:`Source.data` (its ``sampling_rate`` is recorded; ``num_frames`` / ``img_size``
    are the encoder's own). ``head``: the tensors ``{"weight", "bias"}`` of an imported classifier."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(ENCODER_DATA_KEYS))
    if unknown:
        raise ValueError(f"encoder data: unknown keys {unknown} (known: {', '.join(ENCODER_DATA_KEYS)})")
    desc = None if head is None else {"num_classes": int(head["weight"].shape[0]), "labels": labels}
    return pretrained.encoder_config(enc, name=name, mean=mean, std=std, sampling_rate=data.get("sampling_rate"),
                                     head=desc, source=source)


def pretrainer_config(model: nn.Module, name: Optional[str], model_kwargs: dict, *, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, source: str = "") -> dict:
    """The ``config.json`` of a pretrainer directory (see module docstring)."""
    mc = model.encoder.model_config
    return {"format": PRETRAINER_FORMAT, "format_version": PRETRAINER_FORMAT_VERSION, "tubelet_version": _version(),
            "model": name, "model_kwargs": model_kwargs, "mean": list(mean), "std": list(std),
            "data": {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0]},
            "source": pretrained.portable_source(source)}


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
    """Rebuild the encoder an encoder ``config.json`` (or a classifier spec's ``encoder``) describes,
    format version 1 or 2 (:func:`pretrain.models.pretrained.build_encoder`)."""
    return pretrained.build_encoder(cfg, where)


# ------------------------------------------------------------------------------------------------
# writing


def save_encoder(enc: nn.Module, out_dir: str | Path, *, name: Optional[str] = None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, data: Optional[dict] = None, source: str = "",
                 head: Optional[dict] = None, labels: Optional[list] = None) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}`` (+ ``head.safetensors`` with ``head``)."""
    cfg = encoder_config(enc, name=name, mean=mean, std=std, data=data, source=source, head=head, labels=labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if head is not None:
        _save_safetensors({"weight": head["weight"], "bias": head["bias"]}, out / HEAD_FILE)
    return pretrained.save_encoder_dir(enc, out, cfg)


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
    """An encoder directory (``cfg``: its config.json, format :data:`ENCODER_FORMAT`, version 1 or 2)."""
    model, cfg, report = pretrained.load_encoder_dir(d, cfg)
    head = read_state_dict(d / HEAD_FILE) if (d / HEAD_FILE).is_file() else None
    src = Source(model, f"encoder {d}", cfg.get("model"), cfg.get("model_kwargs", {}), head=head,
                 labels=(cfg.get("head") or {}).get("labels"), report={**report, "initialised_fresh": []})
    src.mean, src.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    src.data = pretrained.clip_data(cfg)
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
