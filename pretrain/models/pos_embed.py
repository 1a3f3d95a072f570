"""Fixed sine-cosine position embeddings for tubelet grids, and their resizing.

Two flavours:

- ``sincos_1d``: VideoMAE's table over the flattened (time-major) token index, with sines on
  even and cosines on odd channels. It is what VideoMAE and Hugging Face ``VideoMAEModel``
  compute, so weights exported in that format reproduce our outputs exactly.
- ``sincos_3d``: separable embedding; channels split into (time, height, width) parts,
  each a 1-D sine-cosine of its coordinate.

For a grid other than the one a model was built for, :func:`pos_embed_for_grid` resamples the
native table: trilinear interpolation of the 1-D table laid out as ``(T', H', W')``, or for the
3-D flavour the coordinates are rescaled onto the native range (the same interpolation, exact).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

POS_EMBED_TYPES = ("sincos_1d", "sincos_3d")


def sincos_1d_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE table ``(num_positions, dim)``: angle ``p / 10000^(2*(j//2)/dim)``, sin on even j, cos on odd."""
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def _sincos_coords(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """``coords: (N,)`` float -> ``(N, dim)``: [sin(c w_k)..., cos(c w_k)...] (MAE 2-D convention)."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    out = coords.double().unsqueeze(1) * omega.unsqueeze(0)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_3d_table(grid: Sequence[int], dim: int, base_grid: Sequence[int] | None = None) -> torch.Tensor:
    """Separable table ``(T'H'W', dim)``; coordinates scaled onto ``base_grid`` when given.

    Channels: ``2 * (dim // 6)`` each for height and width, the rest (even) for time.
    """
    if dim % 2:
        raise ValueError(f"sincos_3d needs an even embed_dim, got {dim}")
    t, h, w = grid
    bt, bh, bw = base_grid if base_grid is not None else grid
    d_hw = 2 * (dim // 6)
    d_t = dim - 2 * d_hw

    def axis(n: int, base: int) -> torch.Tensor:
        # sample at the centres of n cells spread over the base range (align_corners=False)
        return (torch.arange(n, dtype=torch.float64) + 0.5) * (base / n) - 0.5

    et = _sincos_coords(axis(t, bt), d_t)
    eh = _sincos_coords(axis(h, bh), d_hw)
    ew = _sincos_coords(axis(w, bw), d_hw)
    table = torch.cat([
        et[:, None, None, :].expand(t, h, w, d_t),
        eh[None, :, None, :].expand(t, h, w, d_hw),
        ew[None, None, :, :].expand(t, h, w, d_hw),
    ], dim=-1)
    return table.reshape(t * h * w, dim).float()


def build_pos_embed(kind: str, grid: Sequence[int], dim: int) -> torch.Tensor:
    """Native table ``(1, N, dim)`` for ``grid = (T', H', W')``."""
    if kind == "sincos_1d":
        return sincos_1d_table(math.prod(grid), dim).unsqueeze(0)
    if kind == "sincos_3d":
        return sincos_3d_table(grid, dim).unsqueeze(0)
    raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {kind!r}")


def pos_embed_for_grid(table: torch.Tensor, kind: str, native_grid: Sequence[int],
                       grid: Sequence[int]) -> torch.Tensor:
    """Table ``(1, N', D)`` for ``grid``, resampled from the native ``table: (1, N, D)``."""
    native_grid, grid = tuple(native_grid), tuple(grid)
    if grid == native_grid:
        return table
    dim = table.shape[-1]
    if kind == "sincos_3d":
        return sincos_3d_table(grid, dim, base_grid=native_grid).unsqueeze(0).to(table)
    t, h, w = native_grid
    vol = table.reshape(1, t, h, w, dim).permute(0, 4, 1, 2, 3)
    vol = F.interpolate(vol.float(), size=grid, mode="trilinear", align_corners=False)
    return vol.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(table)
