"""RandAugment for clips: one draw of ops and magnitudes per clip, applied to every frame.

Image RandAugment applied frame by frame would rotate, shear or recolour each frame differently,
which destroys motion; VideoMAE's fine-tuning (``--aa rand-m7-n4-mstd0.5-inc1``) draws the ops once
per clip and applies them to all frames. This module does the same with timm's op table
(``timm.data.auto_augment``: the same ops, level functions and magnitude noise as timm's
``rand_augment_transform``), but every random choice comes from the caller's
``numpy.random.Generator`` so that augmentation stays reproducible (worker, main process, resume).

    spec = RandAugSpec.parse("rand-m7-n4-mstd0.5-inc1")   # n=4, m=7, mstd=0.5, increasing ops
    ra = ClipRandAugment(spec, img_size=224)
    ops = ra.draw(rng)                  # the clip's ops: [(name, fn, args, kwargs), ...]
    ra.apply_(clip, ops)                # clip: (3, T, H, W) uint8 tensor, modified in place

Differences from VideoMAE: ops run on the cropped and resized clip (``img_size`` px), not on the
full frames before the crop; ``translate_const`` is ``0.45 * img_size`` as in VideoMAE and the
interpolation is fixed (bicubic) so that every frame is resampled the same way.
"""

from __future__ import annotations

import math
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RandAugSpec:
    """A parsed timm RandAugment string ``rand-m{M}-n{N}[-mstd{S}][-mmax{X}][-inc{0|1}][-p{P}]``."""

    m: int = 10
    """Magnitude (0..10 on timm's scale)."""
    n: int = 2
    """Ops drawn per clip (with replacement, as in timm)."""
    mstd: float = 0.0
    """Std of Gaussian noise on the magnitude (drawn once per op per clip); inf: uniform in [0, m]."""
    mmax: int | None = None
    """Upper bound of the noisy magnitude (timm default 10)."""
    inc: bool = False
    """Use the ops whose severity increases with the magnitude (timm ``_RAND_INCREASING_TRANSFORMS``)."""
    p: float = 0.5
    """Probability that each drawn op is applied."""

    @classmethod
    def parse(cls, text: str) -> "RandAugSpec":
        """Parse ``text``; raises ``ValueError`` naming the bad section. Same rules as timm (missing
        sections keep timm's defaults: m=10, n=2, p=0.5, mstd > 100 means uniform)."""
        parts = text.strip().split("-")
        if parts[0] != "rand":
            raise ValueError(f"must start with 'rand-' (e.g. rand-m7-n4-mstd0.5-inc1), got {text!r}")
        kw: dict = {}
        for c in parts[1:]:
            mt = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", c)
            if not mt:
                raise ValueError(f"unknown section {c!r} in {text!r} (known: m, n, mstd, mmax, inc, p)")
            key, val = mt.groups()
            try:
                if key == "mstd":
                    kw["mstd"] = math.inf if float(val) > 100 else float(val)
                elif key == "p":
                    kw["p"] = float(val)
                elif key == "inc":
                    kw["inc"] = bool(int(val))
                else:
                    kw[key] = int(val)
            except ValueError:
                raise ValueError(f"section {c!r} of {text!r}: {val!r} is not a valid {key}") from None
        spec = cls(**kw)
        if spec.n < 1:
            raise ValueError(f"n must be >= 1 in {text!r}")
        if not 0 < spec.p <= 1:
            raise ValueError(f"p must lie in (0, 1] in {text!r}")
        return spec


@contextmanager
def _timm_random(r: random.Random):
    """Route timm's auto_augment draws (``random.random`` etc. in its level functions) to ``r``."""
    import timm.data.auto_augment as aa

    saved = aa.random
    aa.random = r
    try:
        yield
    finally:
        aa.random = saved


class ClipRandAugment:
    """RandAugment with one draw per clip (see the module docstring)."""

    def __init__(self, spec: RandAugSpec | str, img_size: int):
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        self.spec = RandAugSpec.parse(spec) if isinstance(spec, str) else spec
        s = self.spec
        hparams = {"translate_const": int(img_size * 0.45), "interpolation": Image.BICUBIC}
        if s.mstd:
            hparams["magnitude_std"] = s.mstd
        if s.mmax is not None:
            hparams["magnitude_max"] = s.mmax
        text = f"rand-m{s.m}-n{s.n}-p{s.p}-inc{int(s.inc)}"
        ra = rand_augment_transform(text, hparams)
        self.ops = ra.ops
        """timm ``AugmentOp`` list (op table, probability, magnitude, magnitude noise)."""
        self.num_layers = ra.num_layers
        self.choice_weights = ra.choice_weights

    def draw(self, rng: np.random.Generator) -> list[tuple]:
        """The ops of one clip: ``[(name, aug_fn, level_args, kwargs), ...]`` (ops that lost their
        ``p`` coin flip are left out). Consumes a fixed number of draws from ``rng``."""
        k = len(self.ops)
        pick = rng.choice(k, self.num_layers, replace=self.choice_weights is None, p=self.choice_weights)
        r = random.Random(int(rng.integers(0, 2**63 - 1)))
        out = []
        with _timm_random(r):  # timm's AugmentOp.__call__ logic, stopped before the image is touched
            for i in pick:
                op = self.ops[int(i)]
                if op.prob < 1.0 and r.random() > op.prob:
                    continue
                mag = op.magnitude
                if op.magnitude_std > 0:
                    mag = r.uniform(0, mag) if op.magnitude_std == math.inf else r.gauss(mag, op.magnitude_std)
                mag = max(0.0, min(mag, op.magnitude_max or 10))
                args = op.level_fn(mag, op.hparams) if op.level_fn is not None else ()
                out.append((op.name, op.aug_fn, tuple(args), dict(op.kwargs)))
        return out

    @staticmethod
    def apply_(clip: torch.Tensor, ops: list[tuple]) -> torch.Tensor:
        """Apply ``ops`` to every frame of ``clip: (3, T, H, W)`` uint8 in place; returns ``clip``."""
        if not ops:
            return clip
        from PIL import Image

        arr = clip.numpy()
        for t in range(arr.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(arr[:, t].transpose(1, 2, 0)))
            for _name, fn, args, kw in ops:
                img = fn(img, *args, **kw)
            arr[:, t] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        return clip
