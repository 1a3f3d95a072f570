"""Two-stream network (Simonyan & Zisserman, NeurIPS 2014): appearance stream + motion stream.

- Spatial (RGB) stream: a 2D CNN on single frames — trained on one random frame per clip, scores
  averaged over all frames at test time (the :class:`~.frame2d.SingleFrame` model).
- Temporal (flow) stream: a 2D CNN whose first conv sees ``L`` consecutive optical-flow fields
  stacked as ``2L`` channels ``[dx_1, dy_1, dx_2, dy_2, …]`` ("optical flow stacking"), with each
  field's mean displacement subtracted (the paper's cheap camera-motion compensation). ``L``
  (``flow_stack``) defaults to all ``T-1`` fields; with a shorter stack, training uses one random
  window and test averages evenly spaced windows.
- Late fusion of the two streams' scores, optionally weighted (``flow_weight``):
  ``fusion="logits"`` (default) averages logits — trained end to end, both streams always get
  gradient (a product of experts); ``"softmax"`` averages class probabilities as in the paper and
  returns their log, so softmax of the output is the averaged score (trained as a mixture, where the
  stronger stream can starve the weaker one of gradient, hence not the default).

Flow comes from the data path (``pretrain.data.flow.farneback_flow``, OpenCV Farnebäck, enabled by
``data.flow=true``): ``flow: (B, 2, T-1, H, W)`` float16 or float32, in pixels, channel 0 = dx,
channel 1 = dy; it is cast to the video's dtype here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .frame2d import SingleFrame, feature_dim, make_backbone2d
from .registry import check_video, register_baseline


class TwoStream(nn.Module):
    """``forward(video (B, 3, T, H, W), flow (B, 2, T-1, H, W)) -> (B, num_classes)`` fused logits."""

    needs_flow = True

    def __init__(self, rgb: SingleFrame, flow_backbone: nn.Module, num_classes: int, num_frames: int,
                 flow_stack: int, fusion: str = "logits", flow_weight: float = 1.0, test_windows: int = 5,
                 mean_subtract: bool = True, drop_rate: float = 0.0):
        super().__init__()
        if fusion not in ("logits", "softmax"):
            raise ValueError(f"two_stream: fusion must be 'logits' or 'softmax', got {fusion!r}")
        if flow_weight < 0:
            raise ValueError(f"two_stream: flow_weight must be >= 0, got {flow_weight}")
        self.rgb = rgb
        self.flow_backbone = flow_backbone
        self.flow_head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(feature_dim(flow_backbone), num_classes))
        self.num_frames, self.flow_stack = num_frames, flow_stack
        self.fusion, self.flow_weight = fusion, float(flow_weight)
        self.test_windows, self.mean_subtract = test_windows, mean_subtract

    def _window_starts(self, n_fields: int) -> list[int]:
        """First flow index of each stacked window: one random (train) or evenly spaced (test)."""
        last = n_fields - self.flow_stack
        if self.training:
            return [int(torch.randint(last + 1, ()))]
        n = min(last + 1, self.test_windows)
        return sorted({round(i * last / max(n - 1, 1)) for i in range(n)})

    def flow_logits(self, flow: torch.Tensor) -> torch.Tensor:
        """``flow: (B, 2, T-1, H, W) -> (B, num_classes)``, averaged over stacked windows."""
        if self.mean_subtract:
            flow = flow - flow.mean(dim=(3, 4), keepdim=True)
        b, _, n, h, w = flow.shape
        starts = self._window_starts(n)
        # (B, 2, L, H, W) -> (B, L, 2, H, W) -> (B, 2L, H, W): x/y interleaved per time step
        stacks = [flow[:, :, s:s + self.flow_stack].transpose(1, 2).reshape(b, -1, h, w) for s in starts]
        z = self.flow_head(self.flow_backbone(torch.cat(stacks, 0)))            # (W*B, C)
        return z.view(len(stacks), b, -1).mean(0)

    def forward(self, video: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        """``video: (B, 3, T, H, W)``, ``flow: (B, 2, T-1, H, W)`` -> ``(B, num_classes)``."""
        check_video(video, "two_stream", self.num_frames)
        if flow is None:
            raise ValueError("two_stream needs optical flow: call model(video, flow=flow) with "
                             "flow (B, 2, T-1, H, W); enable data.flow=true in the data config")
        b, _, t, h, w = video.shape
        if tuple(flow.shape) != (b, 2, t - 1, h, w):
            raise ValueError(f"two_stream: flow must be (B, 2, T-1, H, W) = {(b, 2, t - 1, h, w)}, "
                             f"got {tuple(flow.shape)}")
        z_rgb = self.rgb(video)
        z_flow = self.flow_logits(flow.to(video.dtype))     # the loader ships flow as float16
        w_rgb, w_flow = 1.0, self.flow_weight
        if self.fusion == "logits":
            return (w_rgb * z_rgb + w_flow * z_flow) / (w_rgb + w_flow)
        # log(w_r p_r + w_f p_f) - log(w_r + w_f), computed in log space (w_flow=0 allowed)
        logp = torch.stack([z_rgb.log_softmax(-1) + math.log(w_rgb),
                            z_flow.log_softmax(-1) + (math.log(w_flow) if w_flow > 0 else -math.inf)])
        return torch.logsumexp(logp, 0) - math.log(w_rgb + w_flow)


@register_baseline("two_stream", family="two-stream", order_aware=True, needs_flow=True,
                   reference="Simonyan & Zisserman, Two-Stream ConvNets for Action Recognition, NeurIPS 2014",
                   description="RGB single-frame CNN + stacked optical-flow CNN, scores fused")
def two_stream(num_classes=10, num_frames=16, img_size=32, backbone="resnet18", width=None, stem="auto",
               flow_stack=None, fusion="logits", flow_weight=1.0, test_windows=5, mean_subtract=True,
               rgb_train_frames="random", drop_rate=0.0, drop_path_rate=0.0):
    if num_frames < 2:
        raise ValueError(f"two_stream: needs num_frames >= 2 for optical flow, got {num_frames}")
    stack = num_frames - 1 if flow_stack is None else int(flow_stack)
    if not 1 <= stack <= num_frames - 1:
        raise ValueError(f"two_stream: flow_stack must be in [1, num_frames-1={num_frames - 1}], got {stack}")
    rgb_bb = make_backbone2d(backbone, 3, img_size, width, stem, drop_path_rate=drop_path_rate)
    rgb = SingleFrame(rgb_bb, num_classes, train_frames=rgb_train_frames, score_fusion="logit",
                      drop_rate=drop_rate)
    flow_bb = make_backbone2d(backbone, 2 * stack, img_size, width, stem, drop_path_rate=drop_path_rate)
    return TwoStream(rgb, flow_bb, num_classes, num_frames, stack, fusion, flow_weight, test_windows,
                     mean_subtract, drop_rate)
