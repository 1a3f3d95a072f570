"""Non-local block (spatio-temporal self-attention, Wang et al. CVPR 2018) and a 3D CNN that uses it.

Embedded-Gaussian form: every position of the ``T×H×W`` grid attends to every (optionally
sub-sampled) position, ``y_i = Σ_j softmax_j(θ(x_i)·φ(x_j)/√d) g(x_j)``, ``z = x + BN(W y)``.
The output BN's scale (or the output conv, without BN) starts at zero, so an inserted block is the
identity at initialisation and can be dropped into a trained 3D CNN without changing it, as Wang et
al. insert non-local blocks into pretrained 3D CNNs (I3D / ResNet-3D).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cnn3d import CNN3d
from .registry import register_baseline


class NonLocalBlock3d(nn.Module):
    """Residual embedded-Gaussian non-local block: ``x: (B, C, T, H, W) -> (B, C, T, H, W)``.

    Args:
        channels: C. inner: bottleneck width d (default C/2, as the paper).
        sub_sample: max-pool φ and g by 1×2×2 (4× fewer keys, the paper's cheap variant).
        bn: BatchNorm after the output projection W (zero-init scale); else W itself is zero-init.
    """

    def __init__(self, channels: int, inner: int | None = None, sub_sample: bool = True, bn: bool = True):
        super().__init__()
        d = inner or max(1, channels // 2)
        self.theta = nn.Conv3d(channels, d, 1)
        self.phi = nn.Conv3d(channels, d, 1)
        self.g = nn.Conv3d(channels, d, 1)
        self.sub_sample = sub_sample
        self.out = nn.Conv3d(d, channels, 1, bias=not bn)
        self.bn = nn.BatchNorm3d(channels) if bn else nn.Identity()
        # Zero-init the last affine map: z = x + 0 at start (identity), gradients still flow to it.
        last = self.bn if bn else self.out
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)                      # (B, THW, d)
        kv_in = x
        if self.sub_sample and h > 1 and w > 1:
            kv_in = F.max_pool3d(x, (1, 2, 2))
        k = self.phi(kv_in).flatten(2).transpose(1, 2)                    # (B, M, d)
        v = self.g(kv_in).flatten(2).transpose(1, 2)                      # (B, M, d)
        # 1/√d scaling (as SlowFast's implementation) keeps the softmax from saturating at init.
        y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        y = y.transpose(1, 2).reshape(b, -1, t, h, w)                     # (B, d, T, H, W)
        return x + self.bn(self.out(y))


def insert_nonlocal(model: CNN3d, after_stages=(2, 3), **block_kw) -> CNN3d:
    """Append a :class:`NonLocalBlock3d` to each stage in ``after_stages`` of ``model`` (in place).

    The default, the last two stages, mirrors Wang et al.'s res3/res4 placement and keeps the
    quadratic cost small: at 16×32×32 input they see 8×8×8 and 4×4×4 grids (512 and 64 positions)
    and add 4% FLOPs to cnn3d (10% at 16×64×64); one block on stage 1 (a 16×16×16 grid at 32 px)
    would add 68% (260% at 64 px).
    """
    n = len(model.stages)
    for i in after_stages:
        if not 0 <= i < n:
            raise ValueError(f"nonlocal_3d: stage index {i} out of range (model has {n} stages)")
        channels = [m for m in model.stages[i].modules() if isinstance(m, nn.Conv3d)][-1].out_channels
        model.stages[i].append(NonLocalBlock3d(channels, **block_kw))
    return model


@register_baseline("nonlocal_3d", family="3d", order_aware=True,
                   reference="Wang et al., Non-local Neural Networks, CVPR 2018",
                   description="cnn3d with embedded-Gaussian non-local blocks (identity at init) after stages 2, 3")
def nonlocal_3d(num_classes=10, num_frames=16, img_size=32, channels=(16, 32, 64, 128), depths=(1, 1, 2, 2),
                width=1.0, drop_rate=0.0, nonlocal_stages=(2, 3), sub_sample=True):
    model = CNN3d(num_classes, channels, depths, width, drop_rate)
    return insert_nonlocal(model, nonlocal_stages, sub_sample=sub_sample)
