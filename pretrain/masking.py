"""Token masks for masked video modelling, as pure vectorised functions.

Every function takes ``(batch, grid, ratio, generator)`` where ``grid = (T', H', W')`` is the
tubelet grid and returns index tensors; nothing is stored on a model. Tokens are numbered
time-major: ``n = t * H' * W' + h * W' + w``.

A :class:`MaskIndices` holds

- ``ids_keep``:    ``(B, N_keep)``  visible tokens, ascending (time-major) order;
- ``ids_masked``:  ``(B, N_mask)``  hidden tokens, ascending order;
- ``ids_restore``: ``(B, N)``       position of each token in ``cat([ids_keep, ids_masked], 1)``,
  so ``torch.gather(cat(...), 1, ids_restore)`` undoes the shuffle (MAE convention);
- ``mask``:        ``(B, N)`` bool, ``True`` = hidden from the encoder.

Every sample hides exactly the same number of tokens, so visible tokens batch without padding.
Randomness comes from ``generator`` when given, else from torch's global CPU RNG (saved and
restored by the runtime for exact resume); noise is drawn on the generator's device (CPU by
default) so CPU and GPU runs see the same masks, then moved to ``device``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

__all__ = [
    "MaskIndices",
    "tube_masking",
    "random_masking",
    "make_mask",
    "running_cell_pattern",
    "running_cell_masking",
    "select_decoder_targets",
    "decoder_targets",
    "DECODER_MASK_MODES",
    "num_masked",
]


class MaskIndices(NamedTuple):
    """Index view of one batch of masks (see module docstring for shapes)."""

    ids_keep: torch.Tensor
    ids_masked: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def _check(grid: Sequence[int], ratio: float, name: str) -> tuple:
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"{name}: grid must be (T', H', W') with positive sizes, got {grid}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name}: ratio must be in [0, 1), got {ratio}")
    return grid


@torch.compiler.disable
def _noise(shape, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Every mask's randomness. Kept out of ``torch.compile`` graphs: inductor would draw from its own
    Philox stream, so a compiled run (``run.compile``) would mask differently from the eager one and
    lose exact resume; eagerly the draws come from torch's RNG as everywhere else."""
    dev = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=dev)


def num_masked(num_tokens: int, ratio: float) -> int:
    """Tokens hidden out of ``num_tokens`` at ``ratio`` (VideoMAE rounds down)."""
    return int(ratio * num_tokens)


def _from_keep_sorted(keep: torch.Tensor, masked: torch.Tensor, n: int) -> MaskIndices:
    """Build all views from sorted keep/masked id tensors ``(B, k)``, ``(B, n - k)``."""
    ids_shuffle = torch.cat([keep, masked], dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(keep.shape[0], n, dtype=torch.bool, device=keep.device)
    mask.scatter_(1, keep, False)
    return MaskIndices(keep, masked, ids_restore, mask)


def random_masking(batch: int, grid: Sequence[int], ratio: float = 0.9,
                   generator: Optional[torch.Generator] = None, device=None) -> MaskIndices:
    """Hide ``int(ratio * N)`` tokens chosen uniformly at random per sample (``N = T'H'W'``)."""
    t, h, w = _check(grid, ratio, "random_masking")
    n = t * h * w
    n_keep = n - num_masked(n, ratio)     # >= 1 since ratio < 1
    order = torch.argsort(_noise((batch, n), generator), dim=1)
    keep, _ = order[:, :n_keep].sort(dim=1)
    masked, _ = order[:, n_keep:].sort(dim=1)
    return _from_keep_sorted(keep.to(device), masked.to(device), n)


def tube_masking(batch: int, grid: Sequence[int], ratio: float = 0.9,
                 generator: Optional[torch.Generator] = None, device=None) -> MaskIndices:
    """Hide the same ``int(ratio * H'W')`` spatial positions at every time step (VideoMAE tube).

    ``ids_keep`` is ordered ``(t, visible position)`` so it reshapes to ``(B, T', S_vis)``, the
    regular grid that divided space-time attention needs.
    """
    t, h, w = _check(grid, ratio, "tube_masking")
    s = h * w
    s_keep = s - num_masked(s, ratio)     # >= 1 since ratio < 1
    order = torch.argsort(_noise((batch, s), generator), dim=1)
    keep_s, _ = order[:, :s_keep].sort(dim=1)       # (B, S_keep)
    mask_s, _ = order[:, s_keep:].sort(dim=1)       # (B, S - S_keep)
    offsets = (torch.arange(t, device=keep_s.device) * s).view(1, t, 1)
    keep = (keep_s.unsqueeze(1) + offsets).flatten(1)   # (B, T' * S_keep), time-major
    masked = (mask_s.unsqueeze(1) + offsets).flatten(1)
    return _from_keep_sorted(keep.to(device), masked.to(device), t * s)


_MASKERS = {"tube": tube_masking, "random": random_masking}


def make_mask(mask_type: str, batch: int, grid: Sequence[int], ratio: float,
              generator: Optional[torch.Generator] = None, device=None) -> MaskIndices:
    """Dispatch on ``mask_type`` (``"tube"`` or ``"random"``)."""
    if mask_type not in _MASKERS:
        raise ValueError(f"mask_type must be one of {sorted(_MASKERS)}, got {mask_type!r}")
    return _MASKERS[mask_type](batch, grid, ratio, generator=generator, device=device)


def running_cell_pattern(grid: Sequence[int], ratio: float = 0.5, phase: int = 0) -> torch.Tensor:
    """VideoMAE V2 running-cell pattern ``(T', H', W')`` bool, ``True`` = not decoded.

    Each 2x2 cell holds a queue of ``int(4 * ratio)`` hidden and the rest decoded slots (V2's
    ``RunningCellMaskingGenerator`` rounding: 0.4 hides 1 of 4, not 2); the queue advances one
    slot per time step, so over any 4 consecutive steps every spatial position is decoded at least
    once. ``phase`` (0..3) picks the starting offset. Odd grids crop the tiling.
    """
    t, h, w = _check(grid, ratio, "running_cell_pattern")
    n_hide = int(4 * ratio)
    if not 1 <= n_hide <= 3:
        raise ValueError(f"running cell: decoder mask ratio {ratio} hides int(4 x {ratio}) = {n_hide} of the 4 slots "
                         "of a 2x2 cell; use a ratio in [0.25, 1)")
    queue = torch.zeros(4, dtype=torch.bool)
    queue[:n_hide] = True
    steps = torch.arange(t).view(t, 1) + 1 + phase           # V2 advances before the first frame
    cell = queue[(torch.arange(4).view(1, 4) + steps) % 4]    # (T', 4)
    cell = cell.view(t, 2, 2).repeat(1, (h + 1) // 2, (w + 1) // 2)
    return cell[:, :h, :w].contiguous()


def running_cell_masking(batch: int, grid: Sequence[int], ratio: float = 0.5,
                         generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Per-sample running-cell patterns with a random phase: ``(B, N)`` bool, ``True`` = not decoded."""
    t, h, w = _check(grid, ratio, "running_cell_masking")
    phases = (_noise((batch,), generator) * 4).long().clamp_(max=3)
    pats = torch.stack([running_cell_pattern((t, h, w), ratio, p) for p in range(4)])  # (4, T', H', W')
    return pats.to(phases.device)[phases].flatten(1).to(device)


def select_decoder_targets(masks: MaskIndices, grid: Sequence[int], ratio: float,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Hidden tokens the decoder reconstructs under decoder masking: ``(B, N_dec)`` ascending ids.

    ``N_dec = N_mask - int(ratio * N_mask)`` is the same for every sample. Hidden tokens that
    the running cell decodes are preferred (random order among equals), so the chosen set
    follows the cell pattern as closely as an exact per-sample count allows. ``ratio == 0``
    returns ``masks.ids_masked``.
    """
    if ratio <= 0.0:
        return masks.ids_masked
    if ratio >= 1.0:
        raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {ratio}")
    b, n_mask = masks.ids_masked.shape
    n_dec = n_mask - int(ratio * n_mask)
    if n_dec < 1:
        raise ValueError(f"decoder_mask_ratio {ratio} leaves no token to reconstruct of {n_mask}")
    device = masks.ids_masked.device
    cell_hidden = running_cell_masking(b, grid, ratio, generator).to(device)   # (B, N)
    decoded = (~cell_hidden).gather(1, masks.ids_masked)                       # (B, N_mask)
    score = decoded.float() + _noise((b, n_mask), generator).to(device) * 0.5   # cell first, random ties
    pick = score.topk(n_dec, dim=1, sorted=False).indices
    ids, _ = masks.ids_masked.gather(1, pick).sort(dim=1)
    return ids


DECODER_MASK_MODES = ("v2", "hidden")


def decoder_targets(masks: MaskIndices, grid: Sequence[int], ratio: float, mode: str = "v2",
                    generator: Optional[torch.Generator] = None) -> tuple:
    """Positions the decoder predicts and which of them count in the loss: ``(ids_pred, loss_mask)``.

    ``ids_pred: (B, N_dec)`` ascending token ids, ``loss_mask: (B, N_dec)`` bool (True = in the loss).

    - ``ratio == 0``: every hidden token, all in the loss (VideoMAE).
    - ``mode="v2"`` (VideoMAE V2, ``engine_for_pretraining.py``): mask tokens at *every* position
      the running cell decodes, encoder-visible ones included; only the hidden ones count in the
      loss (``cal_loss_mask``). 8x14x14 grid, tube 0.9, cell 0.5: 784 decoder mask tokens.
      Odd grids make the decoded count depend on the cell phase; there each sample keeps the
      batch's smallest count (a random subset of its decoded positions).
    - ``mode="hidden"``: only hidden tokens, ``N_mask - int(ratio * N_mask)`` of them, following
      the cell as far as that exact count allows (:func:`select_decoder_targets`): 704 tokens in
      the example above, all in the loss; cheaper, not V2's objective.
    """
    if mode not in DECODER_MASK_MODES:
        raise ValueError(f"decoder mask mode must be one of {DECODER_MASK_MODES}, got {mode!r}")
    if ratio <= 0.0 or mode == "hidden":
        ids = select_decoder_targets(masks, grid, ratio, generator=generator)
        return ids, torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if ratio >= 1.0:
        raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {ratio}")
    device = masks.mask.device
    decoded = ~running_cell_masking(masks.mask.shape[0], grid, ratio, generator).to(device)   # (B, N)
    counts = decoded.sum(1)
    n_dec = int(counts.min())
    if n_dec < 1:
        raise ValueError(f"decoder_mask_ratio {ratio} leaves no token to decode on grid {tuple(grid)}")
    if bool((counts == n_dec).all()):                  # even grids: every decoded position, ascending
        ids = decoded.nonzero()[:, 1].view(decoded.shape[0], n_dec)
    else:                                              # a random n_dec of each sample's decoded positions
        score = decoded.float() + _noise(decoded.shape, generator).to(device) * 0.5
        ids, _ = score.topk(n_dec, dim=1, sorted=False).indices.sort(dim=1)
    return ids, masks.mask.gather(1, ids)
