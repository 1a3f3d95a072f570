"""Name → constructor registry for the baseline zoo (timm style), plus shared input checks.

Every baseline is built as ``create_baseline(name, num_classes, num_frames, img_size, **kw)`` and
called as ``model(video)`` with ``video: (B, 3, T, H, W)`` float normalized, returning logits
``(B, num_classes)``; two-stream models additionally take ``flow=(B, 2, T-1, H, W)``.
``BASELINE_INFO[name]`` describes each model for the comparison report.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
BASELINE_INFO: dict[str, dict] = {}


def register_baseline(name: str, *, description: str, order_aware: bool, family: str,
                      reference: str, needs_flow: bool = False):
    """Decorator registering ``fn(num_classes, num_frames, img_size, **kw) -> nn.Module`` as ``name``.

    ``order_aware``: whether reversing time can change the prediction (False = the model only sees a
    bag of frames). ``family``: ``2d`` | ``3d`` | ``two-stream`` | ``recurrent`` | ``transformer``.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES:
            raise ValueError(f"baseline {name!r} registered twice")
        _FACTORIES[name] = fn
        BASELINE_INFO[name] = dict(description=description, order_aware=order_aware, family=family,
                                   reference=reference, needs_flow=needs_flow)
        return fn

    return deco


def list_baselines() -> list[str]:
    """Registered baseline names, sorted."""
    return sorted(_FACTORIES)


def create_baseline(name: str, num_classes: int = 10, num_frames: int = 16, img_size: int = 32,
                    **kw) -> nn.Module:
    """Build baseline ``name`` for clips of ``num_frames`` frames of ``img_size``² pixels.

    Extra keyword arguments go to the model (e.g. ``width``, ``depth``, ``backbone``, ``drop_rate``).
    The returned module has ``needs_flow`` (bool), ``baseline_name``, ``num_classes``,
    ``num_frames`` and ``img_size`` attributes.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown baseline {name!r}; registered: {', '.join(list_baselines())}")
    for field, value in (("num_classes", num_classes), ("num_frames", num_frames), ("img_size", img_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"create_baseline({name!r}): {field} must be a positive int, got {value!r}")
    try:
        model = _FACTORIES[name](num_classes=num_classes, num_frames=num_frames, img_size=img_size, **kw)
    except TypeError as e:  # unknown kwarg: say which baseline rejected it
        raise TypeError(f"create_baseline({name!r}): {e}") from e
    needs_flow = BASELINE_INFO[name]["needs_flow"]
    if getattr(model, "needs_flow", False) != needs_flow:
        raise AssertionError(f"baseline {name!r}: model.needs_flow disagrees with its registration")
    model.needs_flow = needs_flow
    model.baseline_name = name
    model.num_classes, model.num_frames, model.img_size = num_classes, num_frames, img_size
    return model


def check_video(video: torch.Tensor, who: str, num_frames: int | None = None) -> None:
    """Raise a clear error unless ``video`` is ``(B, 3, T, H, W)`` (with ``T == num_frames`` if given).

    Models whose parameters depend on the clip length (channel stacking, concatenation, temporal
    position embeddings) pass ``num_frames``; the others accept any T.
    """
    if not torch.is_tensor(video) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
        raise ValueError(f"{who}: video must be (B, 3, T, H, W), got {shape}")
    if num_frames is not None and video.shape[2] != num_frames:
        raise ValueError(f"{who}: built for num_frames={num_frames} but video has T={video.shape[2]}; "
                         f"rebuild with num_frames={video.shape[2]} (data.num_frames must match)")
