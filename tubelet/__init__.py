"""tubelet: self-supervised video pretraining (VideoMAE / MaskFeat-MViTv2) on WebDataset shards.

The public face, one import:

    import tubelet
    tubelet.list_models("vit*")                          # registered encoders and pretrainers
    mae = tubelet.create_model("videomae_small", num_frames=16, img_size=224)
    enc = tubelet.load_encoder("runs/x")                 # run dir, export, HF dir or VideoMAE .pth
    enc.save_pretrained("enc")                           # config.json + model.safetensors (HF style)
    enc = tubelet.VideoViT.from_pretrained("enc")        # the same directory, exact key set, no pickle
    tubelet.presets("pretrain")                          # names for `tubelet pretrain --config NAME`

Installed alongside: the packages ``pretrain`` (data, models, the training loop), ``finetune``
(heads, baselines, evaluation, interop) and ``launch`` (the ``tubelet`` command line and launcher
configs), which are the implementation; code outside tubelet should import from here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tubelet")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = ["create_model", "list_models", "load_encoder", "presets", "preset_path", "VideoViT", "MViT",
           "__version__"]

_ENCODER_CLASSES = {"VideoViT": "pretrain.models.vit", "MViT": "pretrain.models.mvit"}


def __getattr__(name: str):
    """``tubelet.VideoViT`` / ``tubelet.MViT``: the encoder classes (imported on first use), with
    ``from_pretrained(dir)`` / ``save_pretrained(dir)``."""
    if name in _ENCODER_CLASSES:
        import importlib

        return getattr(importlib.import_module(_ENCODER_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_model(name: str, **kwargs):
    """A registered model (``list_models()``) built with ``kwargs``."""
    from pretrain.models import create_model as _create

    return _create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    from pretrain.models import list_models as _list

    return _list(pattern)


def load_encoder(path, device="cpu", **import_kw):
    """The encoder held by ``path`` (exported dir, run dir, checkpoint, HF VideoMAE dir, ``.pth``),
    in eval mode on ``device``; nothing is unpickled.

    For an encoder directory (``tubelet export --format native``, ``enc.save_pretrained(dir)``,
    format version 1 or 2) this is ``VideoViT.from_pretrained(dir)`` / ``MViT.from_pretrained(dir)``
    (the class named by its ``config.json``'s ``model_type``); ``load_encoder`` reads every other
    source too."""
    from finetune.interop.sources import load_encoder as _load

    return _load(path, device=device, **import_kw)


def presets(section: str = "pretrain") -> list[str]:
    """Preset names of ``section`` (``pretrain``, ``finetune``) usable as ``--config NAME``."""
    from pretrain.config import preset_names

    return preset_names(section)


def preset_path(name: str, section: str = "pretrain"):
    """The YAML file of preset ``name`` (installed package data or the checkout's ``configs/``)."""
    from pretrain.config import resolve_preset

    return resolve_preset(name, section)
