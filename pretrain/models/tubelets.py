"""Tubelet geometry: grids, tubelet embedding, and cutting videos into tubelets and back.

A tubelet is a ``kt x kh x kw`` block of a ``(B, C, T, H, W)`` video; token ``n`` is the
tubelet at ``(t, h, w) = (n // (H'W'), (n // W') % H', n % W')`` on the grid
``(T', H', W') = (T // kt, H // kh, W // kw)``.

Flattened tubelets use one of two layouts:

- ``"cthw"``: ``(C, kt, kh, kw)``, the order of a Conv3d weight, so the tubelet embedding can
  run as one matmul on gathered tubelets;
- ``"thwc"``: ``(kt, kh, kw, C)``, VideoMAE's target order (Hugging Face checkpoints' decoder
  head rows; :mod:`finetune.interop.hf` permutes between the two).

Our pretrainers predict ``"cthw"`` tubelets: gathering them copies runs of ``kw`` contiguous
pixels and the per-channel statistics reduce over contiguous memory, where ``"thwc"`` would
stride by a whole clip between neighbouring values.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_PERMS = {"cthw": (0, 2, 4, 6, 1, 3, 5, 7), "thwc": (0, 2, 4, 6, 3, 5, 7, 1)}


def tubelet_grid(video_shape: Sequence[int], tubelet: Sequence[int], where: str = "video") -> tuple:
    """``(T', H', W')`` for ``video_shape = (B, C, T, H, W)``; raises naming the bad size."""
    if len(video_shape) != 5:
        raise ValueError(f"{where}: expected a (B, C, T, H, W) video, got shape {tuple(video_shape)}")
    _, _, t, h, w = video_shape
    kt, kh, kw = tubelet
    for name, size, k in (("frames", t, kt), ("height", h, kh), ("width", w, kw)):
        if size % k or size < k:
            raise ValueError(f"{where}: {name} {size} is not a positive multiple of the tubelet size {k}")
    return t // kt, h // kh, w // kw


def _blocks(video: torch.Tensor, tubelet: Sequence[int], layout: str) -> torch.Tensor:
    """Strided view ``(B, T', H', W', *tubelet dims in layout)`` of ``video`` (no copy)."""
    b, c, t, h, w = video.shape
    kt, kh, kw = tubelet
    v = video.view(b, c, t // kt, kt, h // kh, kh, w // kw, kw)
    return v.permute(*_PERMS[layout])


def gather_tubelets(video: torch.Tensor, ids: torch.Tensor, tubelet: Sequence[int],
                    layout: str = "cthw") -> torch.Tensor:
    """Copy the tubelets ``ids: (B, n)`` out of ``video: (B, C, T, H, W)`` -> ``(B, n, P)``.

    ``P = C * kt * kh * kw``. A small share (the visible 10% under MAE masking) is indexed
    straight out of a strided view, so unselected tubelets are never copied; a large share
    (the hidden 90%) is faster as one contiguous patchify followed by a row ``index_select``.
    """
    blocks = _blocks(video, tubelet, layout)
    b, gt, gh, gw = blocks.shape[:4]
    n_all = gt * gh * gw
    if ids.shape[1] * 4 > n_all:
        rows = blocks.reshape(b * n_all, -1)
        flat = (ids + torch.arange(b, device=ids.device).unsqueeze(1) * n_all).flatten()
        return rows.index_select(0, flat).view(b, ids.shape[1], -1)
    bi = torch.arange(b, device=ids.device).unsqueeze(1)
    out = blocks[bi, ids // (gh * gw), (ids // gw) % gh, ids % gw]
    return out.reshape(b, ids.shape[1], -1)


def patchify(video: torch.Tensor, tubelet: Sequence[int], layout: str = "cthw") -> torch.Tensor:
    """All tubelets: ``(B, C, T, H, W)`` -> ``(B, N, P)``."""
    blocks = _blocks(video, tubelet, layout)
    b, gt, gh, gw = blocks.shape[:4]
    return blocks.reshape(b, gt * gh * gw, -1)


def unpatchify(patches: torch.Tensor, grid: Sequence[int], tubelet: Sequence[int],
               layout: str = "cthw", channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, P)`` -> ``(B, C, T, H, W)``."""
    b = patches.shape[0]
    gt, gh, gw = grid
    kt, kh, kw = tubelet
    if layout == "thwc":
        x = patches.view(b, gt, gh, gw, kt, kh, kw, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    else:
        x = patches.view(b, gt, gh, gw, channels, kt, kh, kw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, gt * kt, gh * kh, gw * kw)


def normalize_tubelets(patches: torch.Tensor, channels: int = 3, eps: float = 1e-6):
    """Per-tubelet, per-channel normalisation of ``"cthw"`` tubelets ``(B, n, P)`` (VideoMAE norm_pix).

    Returns ``(normalised (B, n, P), mean (B, n, C, 1), std (B, n, C, 1))``; the variance is
    unbiased as in VideoMAE and ``std`` includes ``eps``, so ``x = y * std + mean`` inverts it.
    Two passes over contiguous channel rows (mean, then squared deviations) and a multiply by
    the reciprocal: several times faster on CPU than ``var_mean`` and a broadcast division,
    and without the cancellation of the one-pass ``E[x^2] - E[x]^2`` on flat tubelets.
    """
    b, n, p = patches.shape
    x = patches.view(b, n, channels, p // channels)
    mean = x.mean(dim=-1, keepdim=True)
    dev = x - mean
    std = (dev.square().sum(dim=-1, keepdim=True) / max(1, p // channels - 1)).sqrt_().add_(eps)
    return (dev * std.reciprocal()).view(b, n, p), mean, std


def denormalize_tubelets(pred: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_tubelets` for ``"cthw"`` tubelets ``pred: (B, n, P)``."""
    b, n, p = pred.shape
    c = mean.shape[2]
    return (pred.view(b, n, c, p // c) * std + mean).view(b, n, p)


class TubeletConv(nn.Conv3d):
    """Conv3d with kernel = stride = tubelet that can also embed a chosen subset of tubelets.

    ``forward(x, ids)`` runs as one matmul on the gathered tubelets. Taking ``ids`` in its own
    ``forward`` (instead of a parent reading ``self.weight``) keeps every use of the weight
    inside this module's call, which hook-based sharding (FSDP, ZeRO-3) relies on.
    """

    def forward(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> ``(B, D, T', H', W')``; with ``ids: (B, n)`` -> ``(B, n, D)``."""
        if ids is None:
            return super().forward(x)
        patches = gather_tubelets(x, ids, self.kernel_size, layout="cthw")
        return F.linear(patches, self.weight.flatten(1), self.bias)


class PatchEmbed3d(nn.Module):
    """Tubelet embedding ``(B, C, T, H, W) -> (B, N, D)`` (all tubelets) or ``(B, n, D)`` (``ids``)."""

    def __init__(self, tubelet: Sequence[int] = (2, 16, 16), in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.tubelet = tuple(int(k) for k in tubelet)
        self.in_chans = in_chans
        self.proj = TubeletConv(in_chans, embed_dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> tokens ``(B, T'H'W', D)`` time-major, or ``(B, n, D)`` for ``ids: (B, n)``.

        Visible-only embedding: with 90% masking this cuts the stem's work (and its weight
        gradient) tenfold compared with convolving the whole clip and discarding most of it;
        ``forward(x, ids)`` equals ``forward(x)[b, ids]``.
        """
        if ids is None:
            return self.proj(x).flatten(2).transpose(1, 2)
        return self.proj(x, ids)


class ConvPoolEmbed3d(nn.Module):
    """A small convolutional tubelet embedding: ``stem="conv_maxpool"`` of :class:`VideoViT`.

    Per tubelet (``kt x kh x kw`` pixels, zero-padded on its own so no token sees a neighbour's
    pixels: masked tubelets cannot leak into visible ones): ``Conv3d(C, width, 3, padding=1)`` ->
    ``BatchNorm`` -> ``ReLU`` -> max over the tubelet's positions -> ``Linear(width, D)``.

    Why: a linear tubelet embedding sums its window linearly, and from a random start the small
    ViT of the embedded benchmark never learns the motion classes through it; a max over the same
    window of small space-time filters learns them (``benchmarks/vit_cnn_ablation.py``:
    ``vit_poolstem`` 45.6 % vs ``vit`` 11.4 %). Same token grid and ``forward(x, ids)`` contract
    as :class:`PatchEmbed3d`: ``forward(x, ids) == forward(x)[b, ids]`` (eval-mode BatchNorm; in
    training the batch statistics come from the tubelets embedded).
    """

    def __init__(self, tubelet: Sequence[int] = (2, 16, 16), in_chans: int = 3, embed_dim: int = 768,
                 width: int = 16):
        super().__init__()
        self.tubelet = tuple(int(k) for k in tubelet)
        self.in_chans = in_chans
        self.width = int(width)
        self.conv = nn.Conv3d(in_chans, self.width, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(self.width)
        self.proj = nn.Linear(self.width, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """cnn3d's conv init (Kaiming normal, fan-out, ReLU) and PyTorch's default for the linear
        (what a 1x1x1 Conv3d gets: the ablation's ``vit_poolstem``); the ViT's truncated-normal
        0.02 would start the tokens ~7x smaller than the position table."""
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.bn.reset_parameters()
        self.proj.reset_parameters()

    def forward(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x: (B, C, T, H, W)`` -> ``(B, N, D)`` time-major, or ``(B, n, D)`` for ``ids: (B, n)``."""
        b, c = x.shape[:2]
        kt, kh, kw = self.tubelet
        tubes = patchify(x, self.tubelet) if ids is None else gather_tubelets(x, ids, self.tubelet)
        n = tubes.shape[1]
        y = self.conv(tubes.reshape(b * n, c, kt, kh, kw))
        y = F.relu(self.bn(y)).amax(dim=(2, 3, 4))
        return self.proj(y).view(b, n, -1)
