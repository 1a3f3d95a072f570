"""Masking functions: exact counts, tube structure, index consistency, determinism, running cell."""

import pytest
import torch

from pretrain.masking import (make_mask, random_masking, running_cell_masking, running_cell_pattern,
                              select_decoder_targets, tube_masking)

GRIDS = [(8, 14, 14), (2, 4, 4), (3, 5, 7), (1, 2, 2)]


def _consistent(m, n):
    b = m.mask.shape[0]
    assert m.mask.shape == (b, n) and m.mask.dtype == torch.bool
    # keep / masked partition every token, ascending, and agree with the bool mask
    allids = torch.cat([m.ids_keep, m.ids_masked], 1).sort(1).values
    assert torch.equal(allids, torch.arange(n).expand(b, n))
    assert torch.all(m.ids_keep[:, 1:] > m.ids_keep[:, :-1])
    assert torch.all(m.ids_masked[:, 1:] > m.ids_masked[:, :-1])
    assert not m.mask.gather(1, m.ids_keep).any()
    assert m.mask.gather(1, m.ids_masked).all()
    # ids_restore undoes the shuffle
    shuffled = torch.cat([m.ids_keep, m.ids_masked], 1)
    assert torch.equal(shuffled.gather(1, m.ids_restore), torch.arange(n).expand(b, n))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_tube_counts_and_structure(grid, ratio):
    t, h, w = grid
    s = h * w
    m = tube_masking(5, grid, ratio, generator=torch.Generator().manual_seed(0))
    _consistent(m, t * s)
    per_frame = m.mask.view(5, t, s)
    assert torch.all(per_frame.sum(-1) == int(ratio * s))            # exact count in every frame and sample
    assert torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))  # same spatial mask at every step
    assert m.ids_keep.shape[1] == t * (s - int(ratio * s))
    # visible ids form a (T', S_vis) time-major grid: divided attention relies on it
    g = m.ids_keep.view(5, t, -1)
    assert torch.all(g // s == torch.arange(t).view(1, t, 1))
    assert torch.all(g % s == g[:, :1] % s)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_random_counts(grid, ratio):
    n = grid[0] * grid[1] * grid[2]
    m = random_masking(6, grid, ratio, generator=torch.Generator().manual_seed(1))
    _consistent(m, n)
    assert torch.all(m.mask.sum(1) == int(ratio * n))


def test_random_differs_between_frames_and_samples():
    m = random_masking(4, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    per_frame = m.mask.view(4, 8, 196)
    assert not torch.equal(per_frame[:, 0], per_frame[:, 1])
    assert not torch.equal(m.mask[0], m.mask[1])


@pytest.mark.parametrize("kind", ["tube", "random"])
def test_generator_and_global_rng_determinism(kind):
    a = make_mask(kind, 3, (4, 6, 6), 0.75, generator=torch.Generator().manual_seed(7))
    b = make_mask(kind, 3, (4, 6, 6), 0.75, generator=torch.Generator().manual_seed(7))
    c = make_mask(kind, 3, (4, 6, 6), 0.75, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    torch.manual_seed(3)
    d = make_mask(kind, 3, (4, 6, 6), 0.75)
    torch.manual_seed(3)
    e = make_mask(kind, 3, (4, 6, 6), 0.75)
    assert torch.equal(d.ids_keep, e.ids_keep)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="ratio"):
        tube_masking(2, (2, 4, 4), 1.0)
    with pytest.raises(ValueError, match="grid"):
        random_masking(2, (2, 4), 0.5)
    with pytest.raises(ValueError, match="mask_type"):
        make_mask("block", 2, (2, 4, 4), 0.5)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("hw", [(14, 14), (5, 7)])
def test_running_cell_covers_space_over_a_cycle(ratio, hw):
    for phase in range(4):
        pat = running_cell_pattern((8, *hw), ratio, phase)          # True = not decoded
        assert pat.shape == (8, *hw)
        for start in range(8 - 3):
            decoded = (~pat[start:start + 4]).any(0)
            assert decoded.all(), "every position is decoded within any 4 consecutive steps"
        assert not torch.equal(pat[0], pat[1]), "the cell runs: the pattern shifts over time"
    if hw == (14, 14):  # even grids: exactly round(4 * ratio) of every 2x2 cell hidden per step
        assert torch.all(pat.view(8, -1).float().mean(1) == round(4 * ratio) / 4)


def test_running_cell_matches_videomae_v2_layout():
    # V2 queue for ratio 0.5 is [1, 1, 0, 0] read from pointer phase + t + 1, laid out as a 2x2 cell
    pat = running_cell_pattern((4, 2, 2), 0.5, phase=0)
    queue = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    for t in range(4):
        expect = queue[(torch.arange(4) + t + 1) % 4].view(2, 2)
        assert torch.equal(pat[t], expect)


def test_running_cell_masking_batch_and_determinism():
    a = running_cell_masking(16, (4, 6, 6), 0.5, generator=torch.Generator().manual_seed(0))
    b = running_cell_masking(16, (4, 6, 6), 0.5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (16, 144) and torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) > 1, "phases differ between samples"


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75])
def test_select_decoder_targets(ratio):
    grid = (8, 14, 14)
    gen = torch.Generator().manual_seed(0)
    m = tube_masking(4, grid, 0.9, generator=gen)
    ids = select_decoder_targets(m, grid, ratio, generator=torch.Generator().manual_seed(1))
    n_mask = m.ids_masked.shape[1]
    assert ids.shape == (4, n_mask - int(ratio * n_mask))
    assert m.mask.gather(1, ids).all(), "only hidden tubelets are reconstructed"
    assert torch.all(ids[:, 1:] > ids[:, :-1])
    if ratio == 0:
        assert torch.equal(ids, m.ids_masked)
        return
    # the running cell is followed as far as the exact count allows
    cell_hidden = running_cell_masking(4, grid, ratio, generator=torch.Generator().manual_seed(1))
    decoded_hidden = (~cell_hidden & m.mask).sum(1)
    chosen_off_cell = cell_hidden.gather(1, ids).sum(1)
    assert torch.all(chosen_off_cell == (ids.shape[1] - decoded_hidden).clamp(min=0))
