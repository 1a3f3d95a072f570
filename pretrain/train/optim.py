"""AdamW parameter groups: weight decay only on weight matrices, optional layer-wise LR decay.

Parameters that must not decay (MAE / BEiT practice): norms and biases (every 1-D tensor), and the
tokens the model names in ``no_weight_decay()`` (position embeddings, mask tokens, cls tokens).
Every submodule that defines ``no_weight_decay()`` is asked, so the encoder's names reach the
pretrainer's groups with their ``encoder.`` prefix. Grouping itself is timm's.

    groups = param_groups(mae, weight_decay=0.05)
    opt = build_optimizer(groups, cfg.optim)          # torch.optim.AdamW, LR set per step

Each group may carry ``lr_scale`` (layer decay); the runtime multiplies the scheduled LR by it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names (patterns allowed) from every ``no_weight_decay()`` in ``model``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if not callable(fn):
            continue
        for n in fn():
            names.add(f"{prefix}.{n}" if prefix else n)
    return names


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups for ``model``: ``weight_decay`` on >= 2-D weights outside ``no_weight_decay``.

    With ``layer_decay < 1`` (fine-tuning) timm's layer-decay groups are used; they need the
    model's ``group_matcher`` and carry an ``lr_scale`` per group.
    """
    skip = no_weight_decay_names(model)
    if layer_decay < 1.0:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"optim.layer_decay={layer_decay} needs a model with group_matcher() "
                             f"({type(model).__name__} has none)")
        return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                        layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)


def build_optimizer(groups: list[dict], optim_cfg) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` over ``groups`` with betas/eps from ``optim_cfg``.

    A torch optimizer on purpose, also under DeepSpeed: DeepSpeed's FusedAdam/CPUAdam would JIT-
    compile a C++ op for minutes on a CPU machine. The LR is 0 here; the runtime sets every
    group's LR each step from the schedule.
    """
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay)
