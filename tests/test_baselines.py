"""The baseline zoo: every registered model builds, runs, trains; the papers' facts hold (C3D's table and cost).

Tiny configs (4 frames, 16 px) keep the whole file fast on a shared 2-core CPU; the C3D table test
runs the full-size model (16×112×112, batch 1, about a second on one thread).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from finetune.baselines import (BASELINE_INFO, count_params, create_baseline, gflops_per_clip,
                                list_baselines)
from finetune.baselines.nonlocal_block import NonLocalBlock3d
from finetune.baselines.recurrent import ConvGRUCell
from pretrain.data.flow import farneback_flow

T, S, C, B = 4, 16, 4, 4          # frames, pixels, classes, batch for the tiny configs

TINY = {
    "single_frame": dict(width=0.125),
    "late_fusion_avg": dict(width=0.125),
    "late_fusion_meanstd": dict(width=0.125),
    "late_fusion_concat": dict(width=0.125),
    "early_fusion": dict(width=0.125),
    "cnn3d": dict(width=0.5),
    "c3d": dict(width=1 / 16, drop_rate=0.0),
    "r3d_18": dict(layers=(1, 1, 1, 1)),        # the 18-layer defaults are checked separately
    "r2plus1d_18": dict(layers=(1, 1, 1, 1)),
    "nonlocal_3d": dict(width=0.5),
    "two_stream": dict(width=0.125),
    "recurrent_conv": dict(width=0.25),
    "timesformer": dict(patch_size=8, embed_dim=64, depth=2, num_heads=4, drop_path_rate=0.0),
    "vivit": dict(patch_size=8, embed_dim=64, spatial_depth=2, temporal_depth=1, num_heads=4, drop_path_rate=0.0),
}
LR = {"timesformer": 1e-3, "vivit": 1e-3}   # transformers want a lower peak LR (3e-3 elsewhere)

REQUIRED = {"single_frame", "late_fusion_avg", "late_fusion_meanstd", "late_fusion_concat", "early_fusion",
            "cnn3d", "c3d", "r3d_18", "r2plus1d_18", "two_stream", "recurrent_conv", "nonlocal_3d",
            "timesformer", "vivit"}


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)   # the CPU is shared; one thread is also the most stable for timing
    yield
    torch.set_num_threads(prev)


def moving_squares(batch: int, t: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of a bright square moving in a random direction over noise, with real Farnebäck flow.

    Returns ``video (B, 3, T, S, S)`` normalized float and ``flow (B, 2, T-1, S, S)`` float16,
    computed by the data path's ``farneback_flow`` exactly as the loader does.
    """
    rng = np.random.default_rng(seed)
    videos, flows = [], []
    for _ in range(batch):
        clip = rng.integers(0, 60, size=(t, s, s, 3), dtype=np.uint8)
        dx, dy = rng.integers(-2, 3, size=2)
        x0, y0 = rng.integers(4, s - 8, size=2)
        for i in range(t):
            x, y = int(np.clip(x0 + dx * i, 0, s - 5)), int(np.clip(y0 + dy * i, 0, s - 5))
            clip[i, y:y + 5, x:x + 5] = 230
        videos.append(clip)
        flows.append(farneback_flow(torch.from_numpy(clip).permute(3, 0, 1, 2)))
    video = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float().div(255).sub(0.45).div(0.225)
    return video, torch.stack(flows)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    video, flow = moving_squares(B, T, S)
    labels = torch.arange(B) % C
    return video, flow, labels


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    # models registered later without a tiny config are still tested, at their defaults
    return create_baseline(name, num_classes=C, num_frames=T, img_size=S, **{**TINY.get(name, {}), **kw})


def call(model: nn.Module, video: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    return model(video, flow=flow) if model.needs_flow else model(video)


def test_registry_lists_every_classic_model():
    assert REQUIRED <= set(list_baselines())
    assert set(BASELINE_INFO) == set(list_baselines())
    for name, info in BASELINE_INFO.items():
        assert info["description"] and info["reference"], name
        assert isinstance(info["order_aware"], bool) and info["family"] in (
            "2d", "3d", "two-stream", "recurrent", "transformer"), name
    assert [n for n in list_baselines() if BASELINE_INFO[n]["needs_flow"]] == ["two_stream"]
    assert {n for n in list_baselines() if not BASELINE_INFO[n]["order_aware"]} == {
        "single_frame", "late_fusion_avg", "late_fusion_meanstd"}


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown baseline 'c4d'.*c3d"):
        create_baseline("c4d")
    with pytest.raises(TypeError, match="'cnn3d'.*no_such_kw"):
        create_baseline("cnn3d", no_such_kw=1)
    with pytest.raises(ValueError, match="num_frames"):
        create_baseline("cnn3d", num_frames=0)
    model = build("early_fusion")
    with pytest.raises(ValueError, match="num_frames=4 but video has T=6"):
        model(torch.zeros(1, 3, 6, S, S))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.zeros(1, T, 3, S, S))


@pytest.mark.parametrize("name", list_baselines())
def test_forward_backward_and_overfit(name, batch):
    """Shape, finite logits, finite grads on every parameter, and a few AdamW steps halve the loss."""
    video, flow, labels = batch
    model = build(name)
    assert model.needs_flow == BASELINE_INFO[name]["needs_flow"]
    out = call(model, video, flow)
    assert out.shape == (B, C) and torch.isfinite(out).all()
    F.cross_entropy(out, labels).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"

    # Memorize the fixed batch: short warmup + grad clipping (the usual recipe), stop once the
    # running loss (mean of 3 steps) is below half its start (6-26 steps here); at most 40 steps.
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR.get(name, 3e-3))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 5))
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(call(model, video, flow), labels)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        assert math.isfinite(losses[-1]), f"{name}: non-finite loss {losses}"
        if len(losses) >= 6 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]):
            break
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f} ({[round(v, 3) for v in losses]})"


@pytest.mark.parametrize("name", list_baselines())
def test_order_awareness_matches_registry(name, batch):
    """Order-blind models give identical logits on a time-reversed clip; order-aware ones do not.

    Differences are measured relative to how much the logits differ between clips of the batch.
    """
    video, flow, _ = batch
    model = build(name).eval()
    rev_flow = -flow.flip(2)   # the reversed clip moves the other way
    with torch.no_grad():
        fwd, bwd = call(model, video, flow), call(model, video.flip(2), rev_flow)
    spread = (fwd - fwd.mean(0)).abs().max().item()
    rel = (fwd - bwd).abs().max().item() / spread
    if BASELINE_INFO[name]["order_aware"]:
        assert rel > 1e-3, f"{name} is registered order-aware but ignores frame order (rel. diff {rel:.1e})"
    else:
        assert rel < 1e-4, f"{name} is registered order-blind but depends on frame order (rel. diff {rel:.1e})"


# C3D's layer table (Tran et al. 2015), input 3 x 16 x 112 x 112.
C3D_TABLE = [("conv1", (64, 16, 112, 112)), ("pool1", (64, 16, 56, 56)), ("conv2", (128, 16, 56, 56)),
             ("pool2", (128, 8, 28, 28)), ("conv3a", (256, 8, 28, 28)), ("conv3b", (256, 8, 28, 28)),
             ("pool3", (256, 4, 14, 14)), ("conv4a", (512, 4, 14, 14)), ("conv4b", (512, 4, 14, 14)),
             ("pool4", (512, 2, 7, 7)), ("conv5a", (512, 2, 7, 7)), ("conv5b", (512, 2, 7, 7)),
             ("pool5", (512, 1, 3, 3))]


def test_c3d_matches_the_paper_table():
    torch.manual_seed(0)
    model = create_baseline("c3d", num_classes=487, num_frames=16, img_size=112, width=1.0).eval()
    sizes = []
    for lname, module in model.features.named_children():
        module.register_forward_hook(lambda m, i, o, lname=lname: sizes.append((lname, tuple(o.shape[1:]))))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 112, 112))
    assert sizes == C3D_TABLE
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv3d)]
    assert [c.kernel_size for c in convs] == [(3, 3, 3)] * 8
    assert (model.fc6.in_features, model.fc6.out_features) == (512 * 1 * 3 * 3, 4096)
    assert (model.fc7.out_features, model.fc8.out_features) == (4096, 487) and out.shape == (1, 487)
    # C3D's cost is quoted as 39.5 GFLOP (multiply-adds); FlopCounterMode counts 2 FLOPs per multiply-add.
    with torch.device("meta"):
        meta = create_baseline("c3d", num_classes=487, num_frames=16, img_size=112, width=1.0)
    assert gflops_per_clip(meta, 16, 112) / 2 == pytest.approx(39.5, rel=0.05)


def test_c3d_width_scales_channels_and_fc_and_runs_any_size():
    model = create_baseline("c3d", num_classes=10, num_frames=16, img_size=32, width=0.25)
    convs = [m.out_channels for m in model.features.modules() if isinstance(m, nn.Conv3d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]
    assert (model.fc6.out_features, model.fc7.out_features, model.fc8.out_features) == (1024, 1024, 10)
    assert model.grid == (1, 1, 1) and model.fc6.in_features == 128
    model.eval()
    with torch.no_grad():   # the adaptive pool before fc6 makes other clip sizes work too
        for shape in [(16, 32, 32), (16, 64, 64), (8, 40, 48), (4, 16, 16)]:
            assert model(torch.randn(1, 3, *shape)).shape == (1, 10)


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_torchvision_models_are_the_real_ones(name, batch):
    from torchvision.models import video as tv_video

    torch.manual_seed(0)
    model = create_baseline(name, num_classes=C, num_frames=T, img_size=S)
    reference = getattr(tv_video, name)(weights=None, num_classes=C)   # weights=None: no download
    assert [k for k, _ in model.net.named_parameters()] == [k for k, _ in reference.named_parameters()]
    assert count_params(model) == count_params(reference)
    with torch.no_grad():
        assert model.eval()(batch[0]).shape == (B, C)


def test_late_fusion_avg_is_the_mean_of_single_frame_logits(batch):
    video, _, _ = batch
    lf = build("late_fusion_avg").eval()
    with torch.no_grad():
        per_frame = torch.stack([lf.head(lf.backbone(video[:, :, t])) for t in range(T)], 1)
        assert torch.allclose(lf(video), per_frame.mean(1), atol=1e-5)
        # the same weights as a single-frame CNN with logit averaging give the same clip scores
        sf = build("single_frame", score_fusion="logit")
        sf.load_state_dict(lf.state_dict())
        assert torch.allclose(sf.eval()(video), lf(video), atol=1e-5)
        # default single-frame scoring averages probabilities: softmax(output) == mean_t softmax
        sf.score_fusion = "prob"
        assert torch.allclose(sf(video).softmax(-1), per_frame.softmax(-1).mean(1), atol=1e-6)


def test_any_timm_backbone_plugs_into_the_frame_models(batch):
    video, _, labels = batch
    model = build("late_fusion_meanstd", backbone="mobilenetv3_small_050", width=None)
    assert type(model.backbone).__name__ == "MobileNetV3"
    out = model(video)
    assert out.shape == (B, C) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="width= is only supported for timm ResNets"):
        build("single_frame", backbone="mobilenetv3_small_050", width=0.5)


def test_single_frame_trains_on_one_random_frame(batch):
    video, _, _ = batch
    model = build("single_frame").train()
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(video)
    assert seen == [(B, 3, S, S)]       # one frame per clip, not B*T frames


def test_nonlocal_block_is_identity_at_init_and_learns():
    torch.manual_seed(0)
    block = NonLocalBlock3d(8)
    x = torch.randn(2, 8, 4, 6, 6)
    for mode in (True, False):
        assert torch.equal(block.train(mode)(x), x)
    block.train()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    (block(x) - x.roll(1, dims=2)).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(block(x), x)

    # inserting non-local blocks into a 3D CNN leaves its function unchanged at init
    cnn, nl = build("cnn3d").eval(), build("nonlocal_3d").eval()
    inserted = [n for n, m in nl.named_modules() if isinstance(m, NonLocalBlock3d)]
    assert inserted == ["stages.2.2", "stages.3.2"]                      # after the convs of stages 2, 3
    result = nl.load_state_dict(cnn.state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all(k.rsplit(".", 2)[0] in inserted for k in result.missing_keys)   # only the new blocks
    video = torch.randn(2, 3, T, S, S)
    with torch.no_grad():
        assert torch.allclose(nl(video), cnn(video), atol=1e-6)


def test_convgru_weights_are_shared_across_time():
    counts = {}
    for t in (4, 16):
        torch.manual_seed(0)
        model = create_baseline("recurrent_conv", num_classes=C, num_frames=t, img_size=S, width=0.25)
        counts[t] = count_params(model)
        cells = [m for m in model.modules() if isinstance(m, ConvGRUCell)]
        assert len(cells) == 3 and all(isinstance(c.h2zr, nn.Conv2d) and c.h2zr.kernel_size == (3, 3)
                                       for c in cells)
        calls = []
        for i, cell in enumerate(cells):
            cell.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
        model(torch.randn(1, 3, t, S, S))
        assert [calls.count(i) for i in range(3)] == [t, t, t]     # each cell reused at every step
    assert counts[4] == counts[16]


def test_two_stream_needs_flow_and_fuses_scores(batch):
    video, flow, _ = batch
    model = build("two_stream").eval()
    with pytest.raises(ValueError, match="needs optical flow"):
        model(video)
    with pytest.raises(ValueError, match=r"flow must be \(B, 2, T-1, H, W\)"):
        model(video, flow=flow[:, :, :2])
    assert model.flow_backbone.conv1.in_channels == 2 * (T - 1)      # stacked flow, all T-1 fields
    with torch.no_grad():
        z_rgb, z_flow = model.rgb(video), model.flow_logits(flow.float())
        assert torch.allclose(model(video, flow=flow), (z_rgb + z_flow) / 2, atol=1e-6)
        model.fusion, model.flow_weight = "softmax", 3.0
        fused = model(video, flow=flow).softmax(-1)
        assert torch.allclose(fused, (z_rgb.softmax(-1) + 3 * z_flow.softmax(-1)) / 4, atol=1e-6)
    short = build("two_stream", flow_stack=2).eval()      # windows of 2 fields, averaged at test
    assert short.flow_backbone.conv1.in_channels == 4 and short._window_starts(T - 1) == [0, 1]
    assert call(short, video, flow).shape == (B, C)


def test_cost_helpers():
    sf, lf = build("single_frame"), build("late_fusion_avg")
    assert count_params(sf) == count_params(lf) == sum(p.numel() for p in lf.parameters())
    # same test-time work, up to the head: single-frame applies it per frame before averaging
    assert gflops_per_clip(sf, T, S) == pytest.approx(gflops_per_clip(lf, T, S), rel=1e-3)
    assert sf.training                                                              # mode restored
    ts = build("two_stream")
    assert gflops_per_clip(ts, T, S) > gflops_per_clip(sf, T, S) > 0
