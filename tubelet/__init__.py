"""tubelet: self-supervised video pretraining (VideoMAE / MaskFeat-MViTv2) on WebDataset shards.

The public face, one import:

    import tubelet
    tubelet.list_models("vit*")                          # registered encoders and pretrainers
    mae = tubelet.create_model("videomae_small", num_frames=16, img_size=224)
    enc = tubelet.load_encoder("runs/x")                 # run dir, export, HF dir or VideoMAE .pth
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

__all__ = ["create_model", "list_models", "load_encoder", "presets", "preset_path", "__version__"]


def create_model(name: str, **kwargs):
    """A registered model (``list_models()``) built with ``kwargs``."""
    from pretrain.models import create_model as _create

    return _create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    from pretrain.models import list_models as _list

    return _list(pattern)


def load_encoder(path, device="cpu", **import_kw):
    """The encoder held by ``path`` (exported dir, run dir, checkpoint, HF VideoMAE dir, ``.pth``)."""
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
