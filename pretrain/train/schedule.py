"""Learning-rate schedule as a pure function of the optimizer step, and the batch-size LR rule.

Nothing here holds state: the LR of step ``s`` is recomputed from ``s`` every step, so a resumed
run gets exactly the LR an uninterrupted run would have used (nanoGPT's ``get_lr``).

    lr = scaled_lr(blr=1.5e-4, lr=None, total_batch=2048)        # 1.2e-3 (VideoMAE ViT-B)
    lr_at(step, base_lr=lr, min_lr=1e-5, warmup_steps=4700, total_steps=93750)
"""

from __future__ import annotations

import math
from typing import Optional


def scaled_lr(blr: float, lr: Optional[float], total_batch: int, clips_per_video: int = 1) -> float:
    """The linear scaling rule: ``blr * videos / 256`` unless an absolute ``lr`` is given.

    ``total_batch`` = micro batch x gradient accumulation x world size (clips per optimizer step);
    with repeated sampling every decoded video gives ``clips_per_video`` clips, and VideoMAE
    (``run_class_finetuning.py``, VideoMAE V2's ``num_sample``) scales by *videos* per step:
    ``videos = total_batch / clips_per_video``.
    """
    if total_batch < 1:
        raise ValueError(f"total_batch must be >= 1, got {total_batch}")
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
    return float(lr) if lr is not None else blr * (total_batch / clips_per_video) / 256.0


def lr_rule(blr: float, lr: Optional[float], total_batch: int, clips_per_video: int = 1) -> str:
    """The LR rule in words, as printed at the start of a run."""
    base = scaled_lr(blr, lr, total_batch, clips_per_video)
    if lr is not None:
        return f"lr {base:.4g} (absolute optim.lr)"
    videos = total_batch / clips_per_video
    vids = f"{videos:g} videos" + (f" ({total_batch} clips / {clips_per_video} repeats)" if clips_per_video > 1 else "")
    return f"lr {base:.4g} = blr {blr:g} x {vids} / 256"


def lr_at(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """LR used by optimizer step ``step`` (0-based): linear warmup, then half-cosine to ``min_lr``.

    Warmup rises linearly to ``base_lr``, reached at step ``warmup_steps - 1`` (the first step
    already gets ``base_lr / warmup_steps``: none is wasted at LR 0). The cosine then runs from
    ``base_lr`` at step ``warmup_steps`` to ``min_lr`` at step ``total_steps``; later steps stay at
    ``min_lr``. A ``min_lr`` above ``base_lr`` is clamped to ``base_lr`` (tiny test runs scale
    ``base_lr`` down with the batch while the floor stays fixed).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    min_lr = min(min_lr, base_lr)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
