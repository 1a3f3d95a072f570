"""finetune.augment.random_erase_: one box per clip, the same in every frame, noise per frame."""

from __future__ import annotations

import pytest
import torch

from finetune.augment import random_erase_


def _boxes(video: torch.Tensor):
    """Per clip: the (T, H, W) mask of erased pixels (the input was all 5.0)."""
    return (video != 5.0).any(dim=1)


def test_one_box_same_in_every_frame_noise_per_frame():
    gen = torch.Generator().manual_seed(0)
    video = torch.full((16, 3, 4, 24, 32), 5.0)
    random_erase_(video, 1.0, gen=gen)
    masks = _boxes(video)
    for i in range(16):
        m = masks[i]
        assert all(torch.equal(m[0], m[t]) for t in range(1, 4))  # same box in every frame
        ys, xs = m[0].nonzero(as_tuple=True)
        assert len(ys) > 0
        eh, ew = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert len(ys) == eh * ew  # one rectangle
        assert 0.02 * 24 * 32 - 24 <= eh * ew <= 24 * 32 / 3 + 32  # timm's area range (rounding)
        patch = video[i, :, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert not torch.equal(patch[:, 0], patch[:, 1])  # independent noise per frame
        assert abs(float(patch.mean())) < 0.5 and 0.6 < float(patch.std()) < 1.4  # standard normal
    shared = torch.full((4, 3, 4, 24, 32), 5.0)
    random_erase_(shared, 1.0, gen=torch.Generator().manual_seed(1), per_frame=False)
    for i in range(4):
        assert all(torch.equal(shared[i, :, 0], shared[i, :, t]) for t in range(1, 4))


def test_probability_reproducibility_and_modes():
    video = torch.full((400, 3, 2, 16, 16), 5.0)
    random_erase_(video, 0.25, gen=torch.Generator().manual_seed(2))
    rate = float(_boxes(video).flatten(1).any(dim=1).float().mean())
    assert 0.17 < rate < 0.33
    a = torch.full((8, 3, 2, 16, 16), 5.0)
    b = a.clone()
    random_erase_(a, 0.5, gen=torch.Generator().manual_seed(3))
    random_erase_(b, 0.5, gen=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    untouched = torch.full((4, 3, 2, 16, 16), 5.0)
    random_erase_(untouched, 0.0)
    assert (untouched == 5.0).all()
    const = torch.full((4, 3, 2, 16, 16), 5.0)
    random_erase_(const, 1.0, gen=torch.Generator().manual_seed(4), mode="const")
    assert set(const.unique().tolist()) == {0.0, 5.0}
    rand = torch.full((4, 3, 2, 16, 16), 5.0)
    random_erase_(rand, 1.0, gen=torch.Generator().manual_seed(5), mode="rand")
    m = _boxes(rand)[0, 0]
    vals = rand[0, :, 0][:, m]  # (3, pixels): one colour per channel
    assert (vals == vals[:, :1]).all()
    with pytest.raises(ValueError):
        random_erase_(torch.zeros(3, 2, 8, 8), 0.5)
    with pytest.raises(ValueError):
        random_erase_(torch.zeros(1, 3, 2, 8, 8), 0.5, mode="zeros")
