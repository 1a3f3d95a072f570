"""MaskFeat pretraining of an MViTv2 encoder.

Pooling attention needs the full token grid, so nothing is dropped: the patch tokens of hidden
units are replaced by a learned mask token right after the patch embedding, the whole grid goes
through the encoder, and a linear head predicts a target for every hidden unit from the
encoder's output tokens.

A *unit* is the input region behind one output token: ``patch_stride * pooling strides``
(2x32x32 pixels for MViTv2 S/B), so predictions sit at the output resolution with no
upsampling, and the mask is drawn on the output grid (tube or random,
:mod:`pretrain.masking`) and repeated onto the finer patch grid.

Targets (``target=``): ``"hog"`` (default, MaskFeat; :mod:`pretrain.models.hog`) or
``"pixel"`` (per-unit normalised pixels, like VideoMAE). Loss: MSE on hidden units only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..masking import MaskIndices, make_mask
from .hog import hog_targets
from .mvit import MVIT_SIZES, MViT
from .registry import register_model
from .tubelets import (denormalize_tubelets, gather_tubelets, normalize_tubelets, patchify, tubelet_grid,
                       unpatchify)

TARGETS = ("hog", "pixel")


class MaskFeat(nn.Module):
    """``loss, aux = model(video)``, ``video: (B, C, T, H, W)`` normalised.

    ``aux``: ``mask (B, N_units)`` bool (True = hidden), ``ids_pred (B, N_mask)``, ``pred`` and
    ``target`` ``(B, N_mask, K)``.
    """

    def __init__(self, encoder: MViT, target: str = "hog", mask_type: str = "tube", mask_ratio: float = 0.4,
                 norm_pix_loss: bool = True, hog_bins: int = 9, hog_cell: int = 8):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if mask_type not in ("tube", "random"):
            raise ValueError(f"mask_type must be 'tube' or 'random', got {mask_type!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if encoder.num_classes:
            raise ValueError("MaskFeat: build the encoder with num_classes=0 (the head would be unused)")
        self.encoder = encoder
        self.target_type, self.mask_type, self.mask_ratio = target, mask_type, float(mask_ratio)
        self.norm_pix_loss, self.hog_bins, self.hog_cell = norm_pix_loss, hog_bins, hog_cell
        self.in_chans = encoder.model_config["in_chans"]
        pool = [math.prod(s[d] for s in encoder.q_strides) for d in range(3)]
        self.unit = tuple(p * q for p, q in zip(encoder.patch_stride, pool))       # (2, 32, 32) for S/B
        ut, uh, uw = self.unit
        if target == "hog":
            if uh % hog_cell or uw % hog_cell:
                raise ValueError(f"MaskFeat: unit {uh}x{uw} is not a multiple of hog_cell {hog_cell}")
            dim = ut * self.in_chans * (uh // hog_cell) * (uw // hog_cell) * hog_bins
        else:
            dim = self.in_chans * ut * uh * uw
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.head = nn.Linear(encoder.num_features, dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def can_reconstruct(self) -> bool:
        """Whether :meth:`reconstruct` can draw pixels (pixel targets only)."""
        return self.target_type == "pixel"

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def unit_grid(self, video: torch.Tensor) -> tuple:
        """Mask / prediction grid ``(T'', H'', W'')`` for ``video: (B, C, T, H, W)``."""
        return tubelet_grid(video.shape, self.unit, "MaskFeat input")

    def forward_encoder(self, video: torch.Tensor, mask: torch.Tensor, grid: tuple) -> torch.Tensor:
        """Encode with hidden units replaced by the mask token -> output tokens ``(B, N_units, D)``.

        ``mask: (B, N_units)`` bool on ``grid``; it is repeated onto the patch grid.
        """
        tokens, thw = self.encoder.embed(video)                                   # (B, N_patch, C0)
        rep = [p // g for p, g in zip(thw, grid)]
        if any(p != g * r for p, g, r in zip(thw, grid, rep)):
            raise ValueError(f"MaskFeat: patch grid {thw} is not a multiple of the unit grid {grid}")
        m = mask.view(-1, *grid)
        for d, r in enumerate(rep):
            m = m.repeat_interleave(r, dim=d + 1)
        tokens = torch.where(m.flatten(1).unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        out = self.encoder.forward_tokens(tokens, thw)[:, 1:]
        if out.shape[1] != math.prod(grid):
            raise ValueError(f"MaskFeat: encoder returned {out.shape[1]} tokens for a unit grid {grid}")
        return out

    def forward_head(self, feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, n, K)`` for units ``ids: (B, n)`` from ``feats: (B, N_units, D)``."""
        return self.head(feats.gather(1, ids.unsqueeze(-1).expand(-1, -1, feats.shape[-1])))

    def target(self, video: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, n, K)`` for units ``ids: (B, n)``."""
        with torch.no_grad():
            if self.target_type == "hog":
                return hog_targets(video, ids, self.unit, self.hog_bins, self.hog_cell)
            patches = gather_tubelets(video.float(), ids, self.unit, layout="cthw")
            return normalize_tubelets(patches, self.in_chans)[0] if self.norm_pix_loss else patches

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, ids: torch.Tensor) -> tuple:
        target = self.target(video, ids)
        return F.mse_loss(pred.float(), target), target

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                masks: Optional[MaskIndices] = None) -> tuple:
        """``video: (B, C, T, H, W)`` -> ``(loss, aux)``."""
        grid = self.unit_grid(video)
        if masks is None:
            masks = make_mask(self.mask_type, video.shape[0], grid, self.mask_ratio, generator, video.device)
        feats = self.forward_encoder(video, masks.mask, grid)
        pred = self.forward_head(feats, masks.ids_masked)
        loss, target = self.forward_loss(video, pred, masks.ids_masked)
        return loss, dict(mask=masks.mask, ids_keep=masks.ids_keep, ids_pred=masks.ids_masked,
                          pred=pred.detach(), target=target)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                    masks: Optional[MaskIndices] = None) -> dict:
        """As :meth:`MaskedAutoencoder.reconstruct` (``target="pixel"`` only)."""
        if not self.can_reconstruct:
            raise ValueError("MaskFeat.reconstruct needs target='pixel' (HOG targets cannot be drawn as pixels)")
        grid = self.unit_grid(video)
        if masks is None:
            masks = make_mask(self.mask_type, video.shape[0], grid, self.mask_ratio, generator, video.device)
        pred = self.forward_head(self.forward_encoder(video, masks.mask, grid), masks.ids_masked).float()
        patches = patchify(video.float(), self.unit, "cthw")
        idx = masks.ids_masked.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        if self.norm_pix_loss:
            _, mean, std = normalize_tubelets(patches.gather(1, idx), self.in_chans)
            pred = denormalize_tubelets(pred, mean, std)
        back = lambda p: unpatchify(p, grid, self.unit, "cthw", self.in_chans)
        return dict(original=video, masked=back(patches.scatter(1, idx, torch.zeros_like(pred))),
                    recon=back(patches.scatter(1, idx, pred)), mask=masks.mask)


_MASKFEAT_KEYS = ("target", "mask_type", "mask_ratio", "norm_pix_loss", "hog_bins", "hog_cell")


def _maskfeat(size: str, decoder_mask_ratio: float = 0.0, **kwargs) -> MaskFeat:
    if decoder_mask_ratio:
        raise ValueError("decoder_mask_ratio: MaskFeat has no decoder; use 0.0")
    mf_kw = {k: kwargs.pop(k) for k in _MASKFEAT_KEYS if k in kwargs}
    return MaskFeat(MViT(**{**MVIT_SIZES[size], **kwargs}), **mf_kw)


@register_model
def maskfeat_mvitv2_test(**kwargs) -> MaskFeat:
    """MaskFeat on ``mvitv2_test``: for CPU tests."""
    return _maskfeat("test", **kwargs)


@register_model
def maskfeat_mvitv2_s(**kwargs) -> MaskFeat:
    """MaskFeat on MViTv2-S (HOG targets, 40% tube masking by default)."""
    return _maskfeat("s", **kwargs)


@register_model
def maskfeat_mvitv2_b(**kwargs) -> MaskFeat:
    """MaskFeat on MViTv2-B (HOG targets, 40% tube masking by default)."""
    return _maskfeat("b", **kwargs)
