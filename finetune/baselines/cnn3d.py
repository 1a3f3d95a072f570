"""3D-CNN baselines: a small VGG-style 3×3×3 net, C3D (Tran et al., ICCV 2015, their layer table), torchvision R3D / R(2+1)D.

Convolution and pooling in 3D fuse time gradually (Tran et al.: 3D convolution and
pooling), unlike early fusion which spends all of time in the first layer. Pools never shrink a
dimension below 1 (:class:`SafeMaxPool3d`), so 16×32×32 clips, 8-frame clips and the full
16×112×112 all run through the same layer tables.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import video as tv_video

from .registry import check_video, register_baseline


class SafeMaxPool3d(nn.Module):
    """Max-pool whose kernel/stride are clamped to the input size per dimension.

    ``(B, C, T, H, W) -> (B, C, T', H', W')`` with ``T' = floor(T / min(kt, T))`` etc.; identical to
    ``nn.MaxPool3d(kernel)`` whenever the input is at least the kernel, and a no-op on a size-1 axis
    instead of an error (small clips reach 1 frame before C3D's pool5).
    """

    def __init__(self, kernel: tuple[int, int, int]):
        super().__init__()
        self.kernel = tuple(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = tuple(min(k, s) for k, s in zip(self.kernel, x.shape[2:]))
        return F.max_pool3d(x, k, k)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def conv_block(cin: int, cout: int, bn: bool = True) -> nn.Sequential:
    """3×3×3 conv (padding 1, size-preserving) → [BN] → ReLU."""
    layers = [nn.Conv3d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm3d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _init_conv3d(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CNN3d(nn.Module):
    """Small VGG-style 3D CNN: stages of 3×3×3 conv-BN-ReLU, max-pool between stages, global pool.

    ``channels`` (default 16-32-64-128, times ``width``) and ``depths`` (convs per stage, default
    1-1-2-2). The first pool is 1×2×2 (keep early temporal resolution, as C3D), the others 2×2×2.
    ``stages[i]`` is an ``nn.Sequential`` so blocks (e.g. non-local) can be appended to a stage.
    """

    def __init__(self, num_classes: int, channels=(16, 32, 64, 128), depths=(1, 1, 2, 2), width: float = 1.0,
                 drop_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if len(channels) != len(depths) or not channels:
            raise ValueError(f"cnn3d: channels {channels} and depths {depths} must be equally long, non-empty")
        chans = [max(4, round(c * width)) for c in channels]
        self.stages, self.pools = nn.ModuleList(), nn.ModuleList()
        cin = in_chans
        for i, (c, d) in enumerate(zip(chans, depths)):
            self.stages.append(nn.Sequential(*[conv_block(cin if j == 0 else c, c) for j in range(d)]))
            cin = c
            last = i == len(chans) - 1
            self.pools.append(nn.Identity() if last else SafeMaxPool3d((1, 2, 2) if i == 0 else (2, 2, 2)))
        self.num_features = cin
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes)
        _init_conv3d(self)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, C, T', H', W')`` last-stage feature map."""
        x = video
        for stage, pool in zip(self.stages, self.pools):
            x = pool(stage(x))
        return x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, type(self).__name__)
        return self.head(self.drop(self.forward_features(video).mean((2, 3, 4))))


# C3D's layer table (Tran et al., ICCV 2015, Fig. 3): (name, out channels at width 1) and pools.
C3D_LAYERS = [("conv1", 64), ("pool1", (1, 2, 2)), ("conv2", 128), ("pool2", (2, 2, 2)),
              ("conv3a", 256), ("conv3b", 256), ("pool3", (2, 2, 2)),
              ("conv4a", 512), ("conv4b", 512), ("pool4", (2, 2, 2)),
              ("conv5a", 512), ("conv5b", 512), ("pool5", (2, 2, 2))]
C3D_FC = 4096


def c3d_grid(num_frames: int, img_size: int) -> tuple[int, int, int]:
    """The ``(T, H, W)`` grid after C3D's pool5 for a ``num_frames × img_size²`` clip (floor pooling).

    16×112×112 → (1, 3, 3), C3D's pool5 output 512 × 1 × 3 × 3; 16×32×32 → (1, 1, 1).
    """
    grid = [num_frames, img_size, img_size]
    for _, spec in C3D_LAYERS:
        if isinstance(spec, tuple):
            grid = [s // min(k, s) for s, k in zip(grid, spec)]
    return tuple(grid)


class C3D(nn.Module):
    """C3D with Tran et al.'s layer table, scaled by ``width`` (channels and fc sizes).

    ``features`` holds conv1 … pool5 under the table's names; then an adaptive average pool to
    ``grid`` (default: what pool5 gives at the construction size, so at 16×112×112 it is the
    identity and fc6 sees the table's 512×1×3×3 = 4608 inputs), which lets any clip size run;
    fc6 → fc7 (``4096·width``, ReLU, dropout) → fc8 (classes).

    ``bn=True`` (default) adds BatchNorm after every conv. The 2015 C3D had none; it is added because
    from-scratch training on small data is far slower and less stable without it. ``bn=False`` gives
    the original layers (the table's sizes are the same either way).
    """

    def __init__(self, num_classes: int, num_frames: int = 16, img_size: int = 112, width: float = 1.0,
                 bn: bool = True, drop_rate: float = 0.5, grid: tuple[int, int, int] | None = None):
        super().__init__()
        if width <= 0:
            raise ValueError(f"c3d: width must be > 0, got {width}")
        layers, cin = OrderedDict(), 3
        for name, spec in C3D_LAYERS:
            if isinstance(spec, tuple):
                layers[name] = SafeMaxPool3d(spec)
            else:
                cout = max(4, round(spec * width))
                layers[name] = conv_block(cin, cout, bn)
                cin = cout
        self.features = nn.Sequential(layers)
        self.grid = tuple(grid) if grid is not None else c3d_grid(num_frames, img_size)
        self.pool = nn.AdaptiveAvgPool3d(self.grid)
        fc = max(16, round(C3D_FC * width))
        self.fc6 = nn.Linear(cin * self.grid[0] * self.grid[1] * self.grid[2], fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self.drop = nn.Dropout(drop_rate)
        _init_conv3d(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, "c3d")
        x = self.pool(self.features(video)).flatten(1)                   # (B, C5·t·h·w)
        x = self.drop(F.relu(self.fc6(x), inplace=True))
        x = self.drop(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)


class TorchvisionVideo(nn.Module):
    """A torchvision ``VideoResNet`` (random init) behind the zoo's input check. ``net`` is the model."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net, self._name = net, name

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, 3, T, H, W) -> (B, num_classes)``."""
        check_video(video, self._name)
        return self.net(video)


@register_baseline("cnn3d", family="3d", order_aware=True,
                   reference="Ji et al., 3D CNNs for Human Action Recognition, TPAMI 2013",
                   description="small VGG-style 3D CNN (3x3x3 conv + BN, 1x2x2 then 2x2x2 pools, global pool)")
def cnn3d(num_classes=10, num_frames=16, img_size=32, channels=(16, 32, 64, 128), depths=(1, 1, 2, 2),
          width=1.0, drop_rate=0.0):
    return CNN3d(num_classes, channels, depths, width, drop_rate)


@register_baseline("c3d", family="3d", order_aware=True,
                   reference="Tran et al., Learning Spatiotemporal Features with 3D CNNs (C3D), ICCV 2015",
                   description="C3D (Tran et al. 2015) layer table (conv1-5b, pool1 1x2x2, fc6/fc7) x width")
def c3d(num_classes=10, num_frames=16, img_size=32, width=0.25, bn=True, drop_rate=0.5, grid=None):
    return C3D(num_classes, num_frames, img_size, width, bn, drop_rate, grid)


def _video_resnet(kind: str, num_classes: int, layers) -> nn.Module:
    # weights=None: random init, never a download. torchvision's widths are fixed (64…512).
    if tuple(layers) == (2, 2, 2, 2):
        builder = tv_video.r3d_18 if kind == "r3d" else tv_video.r2plus1d_18
        return builder(weights=None, num_classes=num_classes)
    conv = tv_video.resnet.Conv3DSimple if kind == "r3d" else tv_video.resnet.Conv2Plus1D
    stem = tv_video.resnet.BasicStem if kind == "r3d" else tv_video.resnet.R2Plus1dStem
    return tv_video.VideoResNet(tv_video.resnet.BasicBlock, [conv] * 4, list(layers), stem, num_classes)


@register_baseline("r3d_18", family="3d", order_aware=True,
                   reference="Hara et al. / Tran et al., A Closer Look at Spatiotemporal Convolutions, CVPR 2018",
                   description="torchvision R3D-18 (3D ResNet, random init); layers= changes depth")
def r3d_18(num_classes=10, num_frames=16, img_size=32, layers=(2, 2, 2, 2)):
    return TorchvisionVideo(_video_resnet("r3d", num_classes, layers), "r3d_18")


@register_baseline("r2plus1d_18", family="3d", order_aware=True,
                   reference="Tran et al., A Closer Look at Spatiotemporal Convolutions, CVPR 2018",
                   description="torchvision R(2+1)D-18 (factorized 2D space + 1D time convs, random init)")
def r2plus1d_18(num_classes=10, num_frames=16, img_size=32, layers=(2, 2, 2, 2)):
    return TorchvisionVideo(_video_resnet("r2plus1d", num_classes, layers), "r2plus1d_18")
