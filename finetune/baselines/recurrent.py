"""Recurrent convolutional network (GRU-RCN, Ballas et al., ICLR 2016): ConvGRUs over time.

Ballas et al.'s picture: the whole network works on 2D feature maps ``C×H×W``; each map depends on
(1) the same layer at the previous time step and (2) the previous layer at the same time step;
different weights per layer, weights shared across time. So: a per-frame conv stem, then a stack
of ConvGRU levels (level ``l``'s input at time ``t`` is level ``l-1``'s hidden map at ``t``,
2×2 max-pooled), and a classifier on the top level's final hidden state. Every gate is a
convolution (not a fully connected GRU on pooled vectors), so the state keeps its spatial layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import check_video, register_baseline


class ConvGRUCell(nn.Module):
    """One ConvGRU step with convolutional gates (weights reused at every time step).

    ``z = σ(W_z*x + U_z*h)``, ``r = σ(W_r*x + U_r*h)``, ``h̃ = tanh(W*x + U*(r⊙h))``,
    ``h' = (1-z)⊙h + z⊙h̃``. The input convolutions ``W_{z,r,·}`` do not depend on ``h``, so
    :meth:`input_gates` computes them for all frames in one batched call.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        p = kernel_size // 2
        self.hidden = hidden
        self.x2h = nn.Conv2d(in_channels, 3 * hidden, kernel_size, padding=p)
        self.h2zr = nn.Conv2d(hidden, 2 * hidden, kernel_size, padding=p, bias=False)
        self.h2c = nn.Conv2d(hidden, hidden, kernel_size, padding=p, bias=False)

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, C_in, H, W) -> (N, 3·hidden, H, W)`` input contributions to z, r, h̃."""
        return self.x2h(x)

    def forward(self, xg: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``xg: (B, 3·hidden, H, W)`` from :meth:`input_gates`, ``h: (B, hidden, H, W)`` -> new h."""
        xz, xr, xc = xg.chunk(3, dim=1)
        hz, hr = self.h2zr(h).chunk(2, dim=1)
        z = torch.sigmoid(xz + hz)
        r = torch.sigmoid(xr + hr)
        cand = torch.tanh(xc + self.h2c(r * h))
        return torch.lerp(h, cand, z)                                       # (1-z)·h + z·h̃


class ConvGRU(nn.Module):
    """A ConvGRU layer unrolled over time: ``x: (B, T, C_in, H, W) -> (B, T, hidden, H, W)``."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.cell = ConvGRUCell(in_channels, hidden, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, hh, ww = x.shape
        xg = self.cell.input_gates(x.flatten(0, 1)).view(b, t, -1, hh, ww)
        h = x.new_zeros(b, self.cell.hidden, hh, ww)
        out = []
        for i in range(t):                    # the same cell (same weights) at every step
            h = self.cell(xg[:, i], h)
            out.append(h)
        return torch.stack(out, 1)


class RecurrentConvNet(nn.Module):
    """Per-frame conv stem → stacked ConvGRU levels → final hidden state → linear.

    Args:
        channels: hidden channels per ConvGRU level (times ``width``); one 2×2 pool between levels.
        stem_stride: stride of the per-frame 3×3 stem (default 2 from 32 px up, else 1).
        readout: ``"last"`` (final hidden state, default) or ``"mean"`` (hidden states averaged over
            time; still order-aware since each state depends on the past).
    """

    def __init__(self, num_classes: int, img_size: int, channels=(32, 64, 96), width: float = 1.0,
                 kernel_size: int = 3, stem_stride: int | None = None, readout: str = "last",
                 drop_rate: float = 0.0):
        super().__init__()
        if readout not in ("last", "mean"):
            raise ValueError(f"recurrent_conv: readout must be 'last' or 'mean', got {readout!r}")
        chans = [max(4, round(c * width)) for c in channels]
        stride = stem_stride or (2 if img_size >= 32 else 1)
        self.stem = nn.Sequential(nn.Conv2d(3, chans[0], 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True))
        self.levels = nn.ModuleList()
        cin = chans[0]
        for c in chans:
            self.levels.append(ConvGRU(cin, c, kernel_size))
            cin = c
        self.readout = readout
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, "recurrent_conv")
        b, _, t = video.shape[:3]
        x = self.stem(video.transpose(1, 2).flatten(0, 1))                   # (B*T, C0, H', W')
        x = x.view(b, t, *x.shape[1:])
        for i, level in enumerate(self.levels):
            if i > 0 and min(x.shape[-2:]) >= 2:                             # pool between levels
                x = F.max_pool2d(x.flatten(0, 1), 2)
                x = x.view(b, t, *x.shape[1:])
            x = level(x)                                                     # (B, T, C_l, H_l, W_l)
        state = x[:, -1] if self.readout == "last" else x.mean(1)            # (B, C, H, W)
        return self.head(self.drop(state.mean((2, 3))))


@register_baseline("recurrent_conv", family="recurrent", order_aware=True,
                   reference="Ballas et al., Delving Deeper into Convolutional Networks for Learning "
                             "Video Representations, ICLR 2016",
                   description="per-frame conv stem + 3 stacked ConvGRU levels (conv gates, shared over time)")
def recurrent_conv(num_classes=10, num_frames=16, img_size=32, channels=(32, 64, 96), width=1.0, kernel_size=3,
                   stem_stride=None, readout="last", drop_rate=0.0):
    return RecurrentConvNet(num_classes, img_size, channels, width, kernel_size, stem_stride, readout, drop_rate)
