"""Weights in memory, shared by every format: what a reader returns and how tensors go in and out.

* :class:`Source` — a model read from disk (any format) plus what it says about its inputs;
* the state-dict helpers (``load_exact``, ``unshare``) live in :mod:`pretrain.models.state_dict`;
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


def clip_shape(enc: nn.Module, batch: int) -> tuple:
    """``(batch, C, T, H, W)``: the input an encoder with a ``model_config`` was built for."""
    mc = enc.model_config
    img = mc["img_size"]
    h, w = img if isinstance(img, (list, tuple)) else (img, img)
    return batch, mc.get("in_chans", 3), mc["num_frames"], h, w

