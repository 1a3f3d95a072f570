"""Registry of named model constructors (timm style).

``@register_model`` adds a function ``fn(**overrides) -> nn.Module`` under its name;
``create_model(name, **overrides)`` calls it; ``list_models()`` lists names (optionally by
``fnmatch`` pattern).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List

import torch.nn as nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under ``fn.__name__`` (a duplicate name is an error)."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> List[str]:
    """Sorted registered names matching ``pattern`` (``fnmatch``, e.g. ``"videomae_*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is registered."""
    return name in _REGISTRY


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name`` with keyword ``overrides`` (e.g. ``num_frames=8``).

    Raises ``ValueError`` for an unknown name and ``TypeError`` naming the model for an
    override its constructor does not accept.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**overrides)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"create_model({name!r}): {e}") from None
        raise
