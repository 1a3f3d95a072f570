"""Weights in memory, shared by every format: what a reader returns and how tensors go in and out.

* :class:`Source` — a model read from disk (any format) plus what it says about its inputs;
* :func:`load_exact` — ``load_state_dict`` after asserting the exact key set and shapes;
* :func:`unshare` — detached, contiguous, storage-unshared CPU copies, as safetensors wants them;
* :func:`clip_shape` — the ``(B, C, T, H, W)`` input shape an encoder was built for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINDS = ("model", "pretraining", "classification")
"""What a checkpoint holds (:attr:`Source.kind`): an encoder; encoder + decoder (pretraining can
go on); encoder + ``fc_norm`` + linear head."""


@dataclass
class Source:
    """A model read from disk (native, run, checkpoint, Hugging Face, ``.pth``) plus what it says
    about its inputs."""

    model: nn.Module
    """An encoder (VideoViT / MViT) or a pretrainer with ``.encoder``."""
    origin: str
    name: Optional[str] = None
    """Registered model name that ``create_model(name, **model_kwargs)`` rebuilds, when known."""
    model_kwargs: dict = field(default_factory=dict)
    head: Optional[dict] = None
    """Classifier head ``{"weight": (K, D), "bias": (K,)}``, when the source has one."""
    labels: Optional[list] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    data: dict = field(default_factory=dict)
    """Clip geometry when known: ``num_frames``, ``img_size``, ``sampling_rate``."""
    report: dict = field(default_factory=dict)
    """What :func:`load_exact` loaded."""

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder if hasattr(self.model, "encoder") and isinstance(self.model.encoder, nn.Module) \
            else self.model

    @property
    def kind(self) -> str:
        """``pretraining`` (encoder + decoder), ``classification`` (encoder + head) or ``model``."""
        if self.model is not self.encoder:
            return "pretraining"
        return "classification" if self.head is not None else "model"


def load_exact(model: nn.Module, sd: dict, what: str, fresh: tuple = ()) -> dict:
    """``model.load_state_dict(sd)`` after asserting the key sets and shapes match exactly.

    ``fresh``: keys the checkpoint cannot have and that keep the model's initial values (e.g. the
    ``fc_norm`` of an encoder whose source had none); they must be missing, all of them.
    Raises ``ValueError`` listing missing / unexpected / mis-shaped keys. Returns a report.
    """
    own = model.state_dict()
    if set(fresh) & set(sd) or not set(fresh) <= set(own):
        raise ValueError(f"{what}: keys {sorted(fresh)} were to be initialised fresh but are present")
    sd = {**sd, **{k: own[k] for k in fresh}}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): {items[:10]}{' ...' if len(items) > 10 else ''}")
        raise ValueError(f"{what}: state dict does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return {"tensors": len(sd) - len(fresh), "parameters": int(sum(v.numel() for v in sd.values())),
            "initialised_fresh": sorted(fresh)}


def unshare(sd: dict) -> dict:
    """CPU copies ready for ``safetensors.save_file``: contiguous, no two sharing storage
    (the checkpoint writer's :func:`pretrain.train.runtime._unshare`, after moving to the CPU)."""
    from pretrain.train.runtime import _unshare

    return _unshare({k: v.detach().cpu() for k, v in sd.items()})


def clip_shape(enc: nn.Module, batch: int) -> tuple:
    """``(batch, C, T, H, W)``: the input an encoder with a ``model_config`` was built for."""
    mc = enc.model_config
    img = mc["img_size"]
    h, w = img if isinstance(img, (list, tuple)) else (img, img)
    return batch, mc.get("in_chans", 3), mc["num_frames"], h, w

