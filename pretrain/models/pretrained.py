"""Encoder directories, Hugging Face style: ``save_pretrained(dir)`` / ``from_pretrained(dir)``.

An encoder directory holds ``model.safetensors`` (the encoder's state dict, nothing else; read
without pickle) and ``config.json`` — its schema is defined here and nowhere else
(``tubelet export --format native``, ``tubelet import`` and :mod:`finetune.interop.native` write
and read it through this module)::

    {"format": "tubelet-encoder", "format_version": 2, "tubelet_version": "0.1.0",
     "model_type": "tubelet_vit", "architectures": ["VideoViT"], "model": "vit_small",
     "model_kwargs": {"img_size": [224, 224], "num_frames": 16, "embed_dim": 384, ...},
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "sampling_rate": 4,
     "head": {"num_classes": 3, "labels": ["a", "b", "c"]}, "source": "model runs/tiny/final"}

* ``model_type`` names the encoder class (:data:`MODEL_TYPES`, one entry per class) and
  ``architectures`` its class name, as in a ``transformers`` config; only the classes of that
  table are ever built from a ``config.json``.
* ``model_kwargs``: the constructor's keyword arguments, all of them and nothing else
  (``model_type``'s class ``(**model_kwargs)`` is the architecture). They are the one place of
  the clip geometry (``num_frames``, ``img_size`` as ``[H, W]``) and the width. Unlike
  ``transformers`` they are nested rather than spread over the top level, so no metadata key can
  collide with an argument; ``null`` there is an argument's value (``fc_norm: null`` = follow
  ``use_mean_pooling``), not a missing field.
* Data-side fields that are no constructor argument, each once: ``mean`` / ``std`` (the
  per-channel normalisation the encoder expects) and ``sampling_rate`` (frame stride of a clip).
* Optional fields are left out when unknown, never ``null``: ``model`` (the registered name
  ``create_model`` builds, e.g. ``vit_small``), ``mean`` / ``std``, ``sampling_rate``,
  ``head`` (an imported classifier; its weights are ``head.safetensors``), ``source``.
* ``source``: what the weights were exported from, for people, never read back. It holds no
  absolute path of the writer's machine: an absolute path is cut to its last part, or to
  ``RUN/final`` / ``RUN/checkpoints/step_N`` inside a run (:func:`portable_source`); a relative
  path (as given to ``--from``) stays as it is.

Version 1 (tubelet 0.1 before this schema) is still read: it named the class by import path
(``"class": "pretrain.models.vit:VideoViT"``, accepted only for the classes of
:data:`MODEL_TYPES`), repeated the geometry (``num_frames``, ``img_size``, ``embed_dim`` and
``data: {num_frames, img_size, sampling_rate}``) and wrote ``null`` for absent fields.

This module is part of ``pretrain`` and imports nothing from ``finetune``.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional, Sequence

import torch.nn as nn

ENCODER_FORMAT = "tubelet-encoder"
FORMAT_VERSION = 2
"""Version of the encoder ``config.json`` written; readers take 1 and 2."""
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

MODEL_TYPES = {
    "tubelet_vit": "pretrain.models.vit:VideoViT",
    "tubelet_mvitv2": "pretrain.models.mvit:MViT",
}
"""``model_type`` -> encoder class (``module:qualname``): the only classes a ``config.json``
builds, and the one definition of each class's ``model_type``."""

_TYPE_OF_CLASS = {path: mt for mt, path in MODEL_TYPES.items()}


def tubelet_version() -> str:
    """The version of tubelet writing a config (``tubelet_version``)."""
    from pretrain import __version__

    return __version__


# ------------------------------------------------------------------------------------------------
# model types


def model_type_of(cls: type) -> str:
    """The ``model_type`` of encoder class ``cls`` (:data:`MODEL_TYPES`); ``TypeError`` otherwise."""
    mt = _TYPE_OF_CLASS.get(f"{cls.__module__}:{cls.__qualname__}")
    if mt is None:
        raise TypeError(f"{cls.__name__} has no model_type (known encoder classes: "
                        f"{', '.join(MODEL_TYPES.values())}); add it to pretrain.models.pretrained.MODEL_TYPES")
    return mt


def encoder_class(model_type: str, where: str = CONFIG_FILE) -> type:
    """The class registered for ``model_type``; ``ValueError`` naming ``where`` for anything else."""
    path = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if path is None:
        raise ValueError(f"{where}: model_type {model_type!r} is not a tubelet encoder "
                         f"(known: {', '.join(MODEL_TYPES)})")
    mod, _, qual = path.partition(":")
    return getattr(importlib.import_module(mod), qual)


def _v1_model_type(path, where: str) -> str:
    """A version-1 ``"class"`` import path -> its model_type (only the table's classes)."""
    mt = _TYPE_OF_CLASS.get(path) if isinstance(path, str) else None
    if mt is None:
        raise ValueError(f"{where}: class {path!r} is not a tubelet model class "
                         f"(allowed: {', '.join(MODEL_TYPES.values())})")
    return mt


class _ModelTypeAttr:
    """``cls.model_type`` / ``obj.model_type``, looked up in :data:`MODEL_TYPES` (``AttributeError``
    for a class outside it, e.g. a subclass, so ``hasattr`` stays safe)."""

    def __get__(self, obj, cls) -> str:
        try:
            return model_type_of(cls)
        except TypeError as e:
            raise AttributeError(str(e)) from None


# ------------------------------------------------------------------------------------------------
# config.json


def portable_source(source: Optional[str]) -> str:
    """``source`` with its absolute path (from the first word starting with ``/``, ``\\\\`` or a
    drive letter to the end) cut to the path's last part, or to ``RUN/final`` /
    ``RUN/checkpoints/step_N`` inside a run. Relative paths and words stay as given."""
    s = str(source or "").strip()
    m = re.search(r"(?:^|\s)(/|\\\\|[A-Za-z]:[\\/])", s)
    if not m:
        return s
    start = m.start(1)
    path = s[start:]
    parts = (PureWindowsPath(path) if m.group(1) != "/" else PurePosixPath(path)).parts[1:]
    if len(parts) >= 2 and parts[-1] == "final":
        keep = parts[-2:]
    elif len(parts) >= 3 and parts[-2] == "checkpoints":
        keep = parts[-3:]
    else:
        keep = parts[-1:]
    return (s[:start] + "/".join(keep)).strip()


def encoder_config(enc: nn.Module, *, name: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None, sampling_rate: Optional[int] = None,
                   head: Optional[dict] = None, source: Optional[str] = None) -> dict:
    """The ``config.json`` of an encoder directory for ``enc`` (schema: module docstring).

    ``head``: ``{"num_classes": K, "labels": [...] or None}`` of an imported classifier's head.
    Arguments left ``None`` (or empty) are left out of the config.
    """
    mc = getattr(enc, "model_config", None)
    if not isinstance(mc, dict):
        raise TypeError(f"{type(enc).__name__} has no model_config dict; cannot describe it for rebuilding")
    json.dumps(mc)  # raises if the constructor kwargs are not JSON-serialisable
    cfg = {"format": ENCODER_FORMAT, "format_version": FORMAT_VERSION, "tubelet_version": tubelet_version(),
           "model_type": model_type_of(type(enc)), "architectures": [type(enc).__name__]}
    if name:
        cfg["model"] = str(name)
    cfg["model_kwargs"] = dict(mc)
    if mean is not None:
        cfg["mean"] = [float(v) for v in mean]
    if std is not None:
        cfg["std"] = [float(v) for v in std]
    if sampling_rate is not None:
        cfg["sampling_rate"] = int(sampling_rate)
    if head is not None:
        cfg["head"] = {"num_classes": int(head["num_classes"]),
                       **({"labels": list(head["labels"])} if head.get("labels") is not None else {})}
    source = portable_source(source)
    if source:
        cfg["source"] = source
    return cfg


def read_config(path: str | Path) -> dict:
    """A ``config.json`` as a dict; ``ValueError`` naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_config(path: str | Path, cfg: dict) -> None:
    Path(path).write_text(json.dumps(cfg, indent=1) + "\n")


def config_model_type(cfg: dict, where: str = CONFIG_FILE) -> Optional[str]:
    """The encoder class's ``model_type`` an encoder config (version 1 or 2) names; ``None`` for a
    version-1 config that gives only a registered ``model`` name. Refuses newer versions."""
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version!r} is newer than this tubelet reads "
                         f"(1..{FORMAT_VERSION}); upgrade tubelet")
    if "model_type" in cfg:
        cls = encoder_class(cfg["model_type"], where)
        arch = cfg.get("architectures", [cls.__name__])
        if arch != [cls.__name__]:
            raise ValueError(f"{where}: architectures {arch!r} do not match model_type "
                             f"{cfg['model_type']!r} ({cls.__name__})")
        return cfg["model_type"]
    if cfg.get("class"):
        return _v1_model_type(cfg["class"], where)
    return None


def build_encoder(cfg: dict, where: str | Path = CONFIG_FILE) -> nn.Module:
    """The encoder (fresh weights) an encoder config describes: ``MODEL_TYPES[model_type](**model_kwargs)``;
    a version-1 config by its ``class``, or ``create_model(model, **model_kwargs)`` without one."""
    where = str(where)
    kwargs = cfg.get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: 'model_kwargs' must be a mapping")
    mt = config_model_type(cfg, where)
    if mt is None:
        if not cfg.get("model"):
            raise ValueError(f"{where}: names no encoder (no model_type, class or model)")
        from pretrain.models.registry import create_model

        import pretrain.models  # noqa: F401  (registers every model)
        return create_model(cfg["model"], **kwargs)
    return encoder_class(mt, where)(**kwargs)


def clip_data(cfg: dict) -> dict:
    """What an encoder config (version 1 or 2) says about its clips: ``num_frames``, ``img_size``
    (the height, an int) from ``model_kwargs``, plus ``sampling_rate`` when recorded."""
    out = dict((cfg.get("data") or {}) if cfg.get("format_version", 1) < 2 else {})
    mc = cfg.get("model_kwargs") or {}
    if "num_frames" in mc:
        out["num_frames"] = mc["num_frames"]
    if "img_size" in mc:
        img = mc["img_size"]
        out["img_size"] = img[0] if isinstance(img, (list, tuple)) else img
    if cfg.get("sampling_rate") is not None:
        out["sampling_rate"] = cfg["sampling_rate"]
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------------------
# weights


def save_weights(module: nn.Module, path: str | Path) -> None:
    """``module``'s state dict to a ``.safetensors`` file (:func:`~pretrain.models.state_dict.unshare`d)."""
    from safetensors.torch import save_file

    from pretrain.models.state_dict import unshare

    save_file(unshare(module.state_dict()), str(path), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load ``path`` (``.safetensors``, no pickle) into ``model`` with exactly its key set and shapes
    (:func:`~pretrain.models.state_dict.load_exact`: ``ValueError`` naming the file and the missing /
    unexpected / mis-shaped keys). Returns ``{"tensors", "parameters", ...}``."""
    from safetensors.torch import load_file

    from pretrain.models.state_dict import load_exact

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (an encoder directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    return load_exact(model, load_file(str(path)), str(path))


# ------------------------------------------------------------------------------------------------
# directories


def save_encoder_dir(enc: nn.Module, out_dir: str | Path, cfg: Optional[dict] = None, **meta) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}``; ``cfg`` (else ``encoder_config(enc, **meta)``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = encoder_config(enc, **meta) if cfg is None else cfg
    save_weights(enc, out / WEIGHTS_FILE)
    write_config(out / CONFIG_FILE, cfg)
    return out


def load_encoder_dir(d: str | Path, cfg: Optional[dict] = None) -> tuple[nn.Module, dict, dict]:
    """``(encoder, config, load report)`` of an encoder directory (format version 1 or 2), weights
    loaded with the exact key set; the encoder is in eval mode."""
    d = Path(d)
    if cfg is None:
        if not (d / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d}: no {CONFIG_FILE}; not an encoder directory")
        cfg = read_config(d / CONFIG_FILE)
    if cfg.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{d / CONFIG_FILE}: format {cfg.get('format')!r}, not {ENCODER_FORMAT!r} "
                         "(tubelet.load_encoder reads runs, classifiers and other formats)")
    model = build_encoder(cfg, d / CONFIG_FILE)
    report = load_weights(model, d / WEIGHTS_FILE)
    return model.eval(), cfg, report


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a tubelet encoder class: a ``model_config``
    dict of its constructor kwargs and an entry in :data:`MODEL_TYPES`.

        enc.save_pretrained("enc", mean=..., std=...)     # config.json + model.safetensors
        enc = VideoViT.from_pretrained("enc")             # eval mode, exact key set, no pickle
    """

    model_type = _ModelTypeAttr()

    def save_pretrained(self, save_directory: str | Path, *, name: Optional[str] = None,
                        mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                        sampling_rate: Optional[int] = None, source: Optional[str] = None) -> Path:
        """Write the encoder directory ``save_directory`` (created when missing); returns it."""
        return save_encoder_dir(self, save_directory, name=name, mean=mean, std=std, sampling_rate=sampling_rate,
                                source=source)

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        """The encoder of an encoder directory (``save_pretrained``, ``tubelet export --format native``,
        version 1 or 2), in eval mode. ``VideoViT.from_pretrained`` refuses a directory of another class."""
        model, cfg, _ = load_encoder_dir(directory)
        if not isinstance(model, cls):
            raise ValueError(f"{Path(directory) / CONFIG_FILE}: holds a {type(model).__name__} "
                             f"({model_type_of(type(model))}), not a {cls.__name__}")
        return model
