"""VideoMAE masked autoencoder built around a :class:`VideoViT` encoder.

``loss, aux = mae(video)`` runs three steps:

1. :meth:`MaskedAutoencoder.forward_encoder`: the encoder embeds and encodes the visible
   tubelets only (``ids_keep``); hidden ones are never embedded.
2. :meth:`MaskedAutoencoder.forward_decoder`: visible latents plus one mask token per tubelet
   to reconstruct go through a light decoder; only the reconstructed rows leave its last
   block, so the visible rows there, and the whole full-length unshuffle, are skipped.
3. :meth:`MaskedAutoencoder.forward_loss`: MSE against the per-tubelet normalised pixels of
   the reconstructed tubelets, cut straight from the clip (no full patchify).

Decoder masking (VideoMAE V2): with ``decoder_mask_ratio = r`` the decoder gets mask tokens only
where a running-cell pattern decodes (``1 - int(4r)/4`` of all positions), which makes each step
cheaper. ``decoder_mask_mode="v2"`` (default) is V2's objective: mask tokens at every decoded
position, encoder-visible ones included, the loss over the hidden ones only;
``"hidden"`` predicts only hidden tubelets (``N_mask - int(r * N_mask)`` of them), a little cheaper
(:func:`pretrain.masking.decoder_targets`).

Initialisation follows VideoMAE's pretrainer (``modeling_pretrain.py``): every Linear of the
encoder and decoder (the fused qkv too) xavier-uniform with zero bias, ``encoder_to_decoder`` at
PyTorch's default, ``mask_token`` truncated normal std 0.02 cut at +-0.02 (``init="videomae"``);
``init="trunc_normal"`` keeps the fine-tuning ViT's truncated-normal 0.02 everywhere.

Names follow VideoMAE's pretraining checkpoints: ``encoder.*``, ``encoder_to_decoder``,
``mask_token``, ``decoder.blocks.i.*``, ``decoder.norm``, ``decoder.head``. Decoder outputs
and targets are tubelets in ``(C, kt, kh, kw)`` order (the Conv3d weight order; VideoMAE's
head rows are ``(kt, kh, kw, C)``, permuted by :mod:`finetune.interop.hf`).
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from ..masking import DECODER_MASK_MODES, MaskIndices, decoder_targets, make_mask
from .attention import Attention, block_forward_tail
from .pos_embed import build_pos_embed, pos_embed_for_grid
from .registry import register_model
from .tubelets import (denormalize_tubelets, gather_tubelets, normalize_tubelets, patchify, tubelet_grid,
                       unpatchify)
from .vit import VIT_SIZES, VideoViT, init_vit_weights


PRETRAINER_INITS = ("videomae", "trunc_normal")


def _xavier_linears(m: nn.Module) -> None:
    """VideoMAE pretrainer init of a Linear: xavier-uniform weight, zero bias."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MAEDecoder(nn.Module):
    """Transformer decoder whose last block emits only the rows to predict."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, num_outputs: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer,
                                           attn_layer=Attention) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_outputs)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, n_out: int) -> torch.Tensor:
        """``x: (B, N_dec, Dd)`` -> predictions for its last ``n_out`` rows ``(B, n_out, num_outputs)``."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks[:-1]:
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        last = self.blocks[-1]
        x = checkpoint(block_forward_tail, last, x, n_out, use_reentrant=False) if ckpt else \
            block_forward_tail(last, x, n_out)
        return self.head(self.norm(x))


class MaskedAutoencoder(nn.Module):
    """VideoMAE pretrainer: ``loss, aux = mae(video)`` with ``video: (B, C, T, H, W)`` normalised.

    ``aux``: ``mask (B, N)`` bool (True = hidden from the encoder), ``ids_keep (B, N_vis)``,
    ``ids_pred (B, N_pred)`` (tubelets the decoder predicts), ``loss_mask (B, N_pred)`` (which
    count in the loss), ``pred`` and ``target`` ``(B, N_pred, P)``.
    """

    can_reconstruct = True   # reconstruct() draws pixels (MaskFeat with HOG targets cannot)

    def __init__(self, encoder: VideoViT, decoder_embed_dim: Optional[int] = None, decoder_depth: int = 4,
                 decoder_num_heads: Optional[int] = None, decoder_mlp_ratio: float = 4.0, mask_type: str = "tube",
                 mask_ratio: float = 0.9, decoder_mask_ratio: float = 0.0, norm_pix_loss: bool = True,
                 decoder_mask_mode: str = "v2", init: str = "videomae"):
        super().__init__()
        if not isinstance(encoder.norm, nn.LayerNorm) or not isinstance(encoder.fc_norm, nn.Identity):
            raise ValueError("MaskedAutoencoder: build the encoder with fc_norm=False (its `norm` is the "
                             "pre-decoder norm; an fc_norm would get no gradient in pretraining)")
        if encoder.num_classes:
            raise ValueError("MaskedAutoencoder: build the encoder with num_classes=0 (the head would be unused)")
        if mask_type not in ("tube", "random"):
            raise ValueError(f"mask_type must be 'tube' or 'random', got {mask_type!r}")
        if encoder.attn_type == "divided" and mask_type != "tube":
            raise ValueError("attn_type='divided' needs mask_type='tube': random masking leaves no regular "
                             "(T', S) grid of visible tokens for temporal/spatial attention")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= decoder_mask_ratio < 1.0:
            raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {decoder_mask_ratio}")
        if decoder_mask_mode not in DECODER_MASK_MODES:
            raise ValueError(f"decoder_mask_mode must be one of {DECODER_MASK_MODES}, got {decoder_mask_mode!r}")
        if init not in PRETRAINER_INITS:
            raise ValueError(f"init must be one of {PRETRAINER_INITS}, got {init!r}")
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {decoder_depth}")
        dd = decoder_embed_dim or encoder.embed_dim // 2
        heads = decoder_num_heads or max(h for h in range(1, max(1, dd // 32) + 1) if dd % h == 0)
        if dd % heads:
            raise ValueError(f"decoder_embed_dim {dd} is not divisible by decoder_num_heads {heads}")
        self.encoder = encoder
        self.mask_type, self.mask_ratio = mask_type, float(mask_ratio)
        self.decoder_mask_ratio = float(decoder_mask_ratio)
        self.decoder_mask_mode = decoder_mask_mode
        self.norm_pix_loss = norm_pix_loss
        self.tubelet = encoder.tubelet
        self.in_chans = encoder.patch_embed.in_chans
        self.decoder_config = dict(decoder_embed_dim=dd, decoder_depth=decoder_depth, decoder_num_heads=heads,
                                   decoder_mlp_ratio=decoder_mlp_ratio)

        self.encoder_to_decoder = nn.Linear(encoder.embed_dim, dd, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", build_pos_embed(encoder.pos_embed_type, encoder.grid_size, dd),
                             persistent=False)
        out = self.in_chans * self.tubelet[0] * self.tubelet[1] * self.tubelet[2]
        self.decoder = MAEDecoder(dd, decoder_depth, heads, out, decoder_mlp_ratio)
        if init == "videomae":
            for m in (encoder.blocks, self.decoder):
                m.apply(_xavier_linears)
            trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        else:
            self.encoder_to_decoder.apply(init_vit_weights)
            self.decoder.apply(init_vit_weights)
            trunc_normal_(self.mask_token, std=0.02)
        self.set_grad_checkpointing(encoder.grad_checkpointing)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    # -- masks ------------------------------------------------------------------------------
    def sample_masks(self, batch: int, grid: Sequence[int], device=None,
                     generator: Optional[torch.Generator] = None) -> tuple:
        """``(MaskIndices, ids_pred (B, N_pred), loss_mask (B, N_pred))`` for one batch: encoder
        mask, then the decoder's positions and which of them count in the loss."""
        masks = make_mask(self.mask_type, batch, grid, self.mask_ratio, generator=generator, device=device)
        return (masks, *self.decoder_positions(masks, grid, generator))

    def decoder_positions(self, masks: MaskIndices, grid: Sequence[int],
                          generator: Optional[torch.Generator] = None) -> tuple:
        """``(ids_pred, loss_mask)`` for an encoder mask (:func:`pretrain.masking.decoder_targets`)."""
        return decoder_targets(masks, grid, self.decoder_mask_ratio, self.decoder_mask_mode, generator=generator)

    # -- the three steps --------------------------------------------------------------------
    def forward_encoder(self, video: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """``video: (B, C, T, H, W)``, ``ids_keep: (B, N_vis)`` -> latents ``(B, N_vis, D)`` (prefix dropped)."""
        return self.encoder(video, ids_keep=ids_keep, return_tokens=True)[:, self.encoder.num_prefix_tokens:]

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor,
                        grid: Sequence[int]) -> torch.Tensor:
        """``latent: (B, N_vis, D)`` -> predicted tubelets ``(B, N_pred, P)`` for ``ids_pred: (B, N_pred)``.

        Position is carried by the fixed embedding added per token, so the decoder input is just
        ``[visible ; mask tokens to predict]`` in any order and nothing needs unshuffling.
        """
        pos = pos_embed_for_grid(self.decoder_pos_embed, self.encoder.pos_embed_type, self.encoder.grid_size,
                                 grid)[0]
        x = torch.cat([self.encoder_to_decoder(latent) + pos[ids_keep], self.mask_token + pos[ids_pred]], dim=1)
        return self.decoder(x, n_out=ids_pred.shape[1])

    def target(self, video: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets ``(B, n, P)`` for tubelets ``ids: (B, n)`` (normalised when ``norm_pix_loss``)."""
        with torch.no_grad():
            patches = gather_tubelets(self.encoder.prepare_input(video), ids, self.tubelet, layout="cthw")
            return normalize_tubelets(patches, self.in_chans)[0] if self.norm_pix_loss else patches

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, ids_pred: torch.Tensor,
                     loss_mask: Optional[torch.Tensor] = None) -> tuple:
        """MSE of ``pred: (B, N_pred, P)`` against the tubelets ``ids_pred``, averaged over the rows
        where ``loss_mask: (B, N_pred)`` is True (all rows when None); returns ``(loss, target)``."""
        target = self.target(video, ids_pred)
        if loss_mask is None or bool(loss_mask.all()):
            return F.mse_loss(pred.float(), target), target
        per_row = (pred.float() - target).square().mean(-1)
        w = loss_mask.to(per_row.dtype)
        return (per_row * w).sum() / w.sum().clamp(min=1.0), target

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                masks: Optional[MaskIndices] = None) -> tuple:
        """``video: (B, C, T, H, W)`` -> ``(loss, aux)``; ``masks`` overrides the sampled encoder mask."""
        grid = tubelet_grid(video.shape, self.tubelet, "MaskedAutoencoder input")
        if masks is None:
            masks, ids_pred, loss_mask = self.sample_masks(video.shape[0], grid, video.device, generator)
        else:
            ids_pred, loss_mask = self.decoder_positions(masks, grid, generator)
        latent = self.forward_encoder(video, masks.ids_keep)
        pred = self.forward_decoder(latent, masks.ids_keep, ids_pred, grid)
        loss, target = self.forward_loss(video, pred, ids_pred, loss_mask)
        aux = dict(mask=masks.mask, ids_keep=masks.ids_keep, ids_pred=ids_pred, loss_mask=loss_mask,
                   pred=pred.detach(), target=target)
        return loss, aux

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                    masks: Optional[MaskIndices] = None) -> dict:
        """Images for inspection, each ``(B, C, T, H, W)`` in the input (normalised) space.

        ``original``: the input; ``masked``: hidden tubelets set to 0 (the dataset mean, grey);
        ``recon``: every hidden tubelet predicted (per-tubelet normalisation undone with that
        tubelet's true mean/std) pasted over the visible input. Also ``mask (B, N)``. With an
        ``rgb_diff`` encoder all three show the frame differences (what the model reconstructs).
        """
        grid = tubelet_grid(video.shape, self.tubelet, "MaskedAutoencoder.reconstruct input")
        if masks is None:
            masks = make_mask(self.mask_type, video.shape[0], grid, self.mask_ratio, generator, video.device)
        latent = self.forward_encoder(video, masks.ids_keep)
        pred = self.forward_decoder(latent, masks.ids_keep, masks.ids_masked, grid).float()
        video = self.encoder.prepare_input(video)                            # what is reconstructed
        patches = patchify(video.float(), self.tubelet, "cthw")               # (B, N, P)
        idx = masks.ids_masked.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        if self.norm_pix_loss:
            _, mean, std = normalize_tubelets(patches.gather(1, idx), self.in_chans)
            pred = denormalize_tubelets(pred, mean, std)
        recon = patches.scatter(1, idx, pred)
        masked = patches.scatter(1, idx, torch.zeros_like(pred))
        back = lambda p: unpatchify(p, grid, self.tubelet, "cthw", self.in_chans)
        return dict(original=video, masked=back(masked), recon=back(recon), mask=masks.mask)


# VideoMAE decoder sizes: (width, heads); depth 4 for all
DECODER_SIZES = {
    "test": dict(decoder_embed_dim=32, decoder_num_heads=2, decoder_depth=2),
    "tiny": dict(decoder_embed_dim=96, decoder_num_heads=3),
    "small": dict(decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(decoder_embed_dim=384, decoder_num_heads=6),
    "large": dict(decoder_embed_dim=512, decoder_num_heads=8),
    "huge": dict(decoder_embed_dim=640, decoder_num_heads=8),
}
_MAE_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_ratio", "mask_type",
             "mask_ratio", "decoder_mask_ratio", "norm_pix_loss", "decoder_mask_mode", "init")


def _videomae(size: str, **kwargs) -> MaskedAutoencoder:
    mae_kw = {k: kwargs.pop(k) for k in _MAE_KEYS if k in kwargs}
    enc_kw = {**VIT_SIZES[size], "fc_norm": False, **kwargs}
    encoder = VideoViT(**enc_kw)
    defaults = dict(DECODER_SIZES[size])
    if encoder.embed_dim != VIT_SIZES[size]["embed_dim"]:    # width overridden: half width, derived heads
        defaults.pop("decoder_embed_dim")
        defaults.pop("decoder_num_heads")
    return MaskedAutoencoder(encoder, **{**defaults, **mae_kw})


@register_model
def videomae_test(**kwargs) -> MaskedAutoencoder:
    """VideoMAE on ``vit_test`` (decoder 32 wide, 2 deep): for CPU tests."""
    return _videomae("test", **kwargs)


@register_model
def videomae_tiny(**kwargs) -> MaskedAutoencoder:
    """VideoMAE ViT-Ti (decoder 96 wide, 4 deep)."""
    return _videomae("tiny", **kwargs)


@register_model
def videomae_small(**kwargs) -> MaskedAutoencoder:
    """VideoMAE ViT-S (decoder 192 wide, 4 deep, 3 heads)."""
    return _videomae("small", **kwargs)


@register_model
def videomae_base(**kwargs) -> MaskedAutoencoder:
    """VideoMAE ViT-B (decoder 384 wide, 4 deep, 6 heads)."""
    return _videomae("base", **kwargs)


@register_model
def videomae_large(**kwargs) -> MaskedAutoencoder:
    """VideoMAE ViT-L (decoder 512 wide, 4 deep, 8 heads)."""
    return _videomae("large", **kwargs)


@register_model
def videomae_huge(**kwargs) -> MaskedAutoencoder:
    """VideoMAE ViT-H (decoder 640 wide, 4 deep, 8 heads)."""
    return _videomae("huge", **kwargs)
