"""Video-aware cutmix keeps one spatial box across all frames; mixup targets sum to one."""

import numpy as np
import pytest
import torch

from finetune.mixup import VideoMixup


def _batch(b=4, t=6, s=16):
    x = torch.stack([torch.full((3, t, s, s), float(i + 1)) for i in range(b)])
    return x, torch.arange(b)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_is_the_same_in_every_frame(seed):
    np.random.seed(seed)
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=4, label_smoothing=0.0, prob=1.0)
    x, y = _batch()
    xm, target = mix(x.clone(), y)
    b = x.shape[0]
    for i in range(b):
        pasted = xm[i] != x[i]                      # (3, T, H, W) True inside the box
        assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted)), "box differs across frames/channels"
        # pasted pixels come from the batch-reversed partner, the rest untouched
        assert torch.all(xm[i][pasted] == x[b - 1 - i][pasted])
        area = pasted[0, 0].float().mean().item()
        # label weight of the partner equals the box's area share (correct_lam)
        assert target[i, y[b - 1 - i]].item() == pytest.approx(area, abs=1e-6) or area == 0.0
    torch.testing.assert_close(target.sum(1), torch.ones(b))


def test_mixup_blends_whole_clip():
    np.random.seed(0)
    mix = VideoMixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0, prob=1.0)
    x, y = _batch()
    xm, target = mix(x.clone(), y)
    lam = target[0, 0].item()
    torch.testing.assert_close(xm[0], lam * x[0] + (1 - lam) * x[-1])


def test_rejects_images_and_odd_batches():
    mix = VideoMixup(mixup_alpha=1.0, num_classes=4, prob=1.0)
    with pytest.raises(ValueError, match="even batch"):
        mix(torch.zeros(3, 3, 2, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        mix(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
