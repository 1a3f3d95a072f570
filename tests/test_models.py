"""Every registered model builds at its real width, runs, and trains; MAE/MaskFeat specifics.

Heavy configs run on tiny clips (4 frames, 32-64 px) and ViT depths are cut to 1 block, but
every named width (and MViT's full stage layout) is constructed.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.masking import random_masking, tube_masking
from pretrain.models import MaskedAutoencoder, MaskFeat, create_model, list_models
from pretrain.models.hog import hog_histograms, hog_targets
from pretrain.models.mae import DECODER_SIZES
from pretrain.models.mvit import MVIT_SIZES
from pretrain.models.pos_embed import sincos_1d_table
from pretrain.models.vit import VIT_SIZES

torch.set_num_threads(1)

ENCODERS = [n for n in list_models() if n.startswith(("vit_", "mvitv2_"))]
PRETRAINERS = [n for n in list_models() if n.startswith(("videomae_", "maskfeat_"))]


def _size(name):
    return name.rsplit("_", 1)[1]


def _small(name, **kw):
    """Tiny-clip overrides for ``name``; ViT depth cut to 1 except the test size."""
    if "mvit" in name:
        return dict(num_frames=4, img_size=64, **kw)
    out = dict(num_frames=4, img_size=32, patch_size=8)
    if _size(name) != "test":
        out["depth"] = 1
    return {**out, **kw}


def _video(b=2, t=4, s=32, seed=0):
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def _check_grads(model):
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{n} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"


def test_registry_has_every_documented_name():
    expected = {f"vit_{s}" for s in ("test", "tiny", "small", "base", "large", "huge")}
    expected |= {f"videomae_{s}" for s in ("test", "tiny", "small", "base", "large", "huge")}
    expected |= {"mvitv2_test", "mvitv2_s", "mvitv2_b", "maskfeat_mvitv2_test", "maskfeat_mvitv2_s",
                 "maskfeat_mvitv2_b"}
    assert expected <= set(list_models())
    assert set(ENCODERS) | set(PRETRAINERS) == set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vit_gigantic")
    with pytest.raises(TypeError, match="vit_test"):
        create_model("vit_test", not_a_field=1)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_forward_backward(name):
    torch.manual_seed(0)
    enc = create_model(name, num_classes=0, **_small(name))
    if name.startswith("vit_"):
        assert enc.embed_dim == VIT_SIZES[_size(name)]["embed_dim"]
        assert enc.blocks[0].attn.num_heads == VIT_SIZES[_size(name)]["num_heads"]
    else:
        key = {"test": "test", "s": "s", "b": "b"}[_size(name)]
        assert len(enc.blocks) == sum(MVIT_SIZES[key]["depths"]) and enc.num_features == 8 * enc.embed_dim
    s = 64 if "mvit" in name else 32
    x = _video(s=s)
    tokens = enc.forward_features(x)
    n_expect = 2 * 2 * 2 + 1 if "mvit" in name else 2 * 4 * 4   # MViT: cls + (T/2, H/32, W/32)
    assert tokens.shape == (2, n_expect, enc.num_features)
    pooled = enc(x)
    assert pooled.shape == (2, enc.num_features) and torch.isfinite(pooled).all()
    enc.reset_classifier(5)
    logits = enc(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    _check_grads(enc)


@pytest.mark.parametrize("name", PRETRAINERS)
def test_pretrainer_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, **_small(name))
    s = 64 if "mvit" in name else 32
    loss, aux = model(_video(s=s))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert aux["mask"].dtype == torch.bool and aux["pred"].shape == aux["target"].shape
    assert aux["pred"].shape[:2] == aux["ids_pred"].shape
    assert aux["mask"].gather(1, aux["ids_pred"]).all(), "predictions are for hidden tubelets only"
    if isinstance(model, MaskedAutoencoder):
        enc = model.encoder
        assert enc.embed_dim == VIT_SIZES[_size(name)]["embed_dim"]
        assert model.decoder_config["decoder_embed_dim"] == DECODER_SIZES[_size(name)]["decoder_embed_dim"]
        assert aux["mask"].shape == (2, 2 * 4 * 4) and aux["mask"].sum(1).eq(2 * int(0.9 * 16)).all()
    else:
        assert isinstance(model, MaskFeat)
        assert aux["mask"].shape == (2, 2 * 2 * 2)
    loss.backward()
    _check_grads(model)


@pytest.mark.parametrize("name", ["vit_test", "mvitv2_test"])
def test_model_config_rebuilds_exactly(name):
    torch.manual_seed(0)
    enc = create_model(name, **_small(name), num_classes=3, drop_path_rate=0.1).eval()
    cfg = json.loads(json.dumps(enc.model_config))
    clone = type(enc)(**cfg).eval()
    clone.load_state_dict(enc.state_dict(), strict=True)
    x = _video(s=64 if "mvit" in name else 32)
    assert torch.equal(enc(x), clone(x))


@pytest.mark.parametrize("name", ["vit_test", "mvitv2_test"])
def test_timm_layer_decay_groups(name):
    from timm.optim import param_groups_layer_decay
    enc = create_model(name, **_small(name), num_classes=3)
    groups = param_groups_layer_decay(enc, weight_decay=0.05, no_weight_decay_list=enc.no_weight_decay(),
                                      layer_decay=0.75)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in enc.parameters()}
    scales = {g["lr_scale"] for g in groups}
    assert len(scales) == len(enc.blocks) + 2       # stem, one per block, head
    nwd = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for n, p in enc.named_parameters():
        if n in enc.no_weight_decay() or p.ndim <= 1:
            assert id(p) in nwd, n


@pytest.mark.parametrize("pos", ["sincos_1d", "sincos_3d"])
def test_pos_embed_interpolates_to_other_clip_sizes(pos):
    enc = create_model("vit_test", num_frames=4, img_size=32, patch_size=8, pos_embed_type=pos)
    assert enc.pos_embed_for(enc.grid_size) is enc.pos_embed
    for t, s in [(8, 48), (2, 16), (6, 32)]:
        grid = (t // 2, s // 8, s // 8)
        table = enc.pos_embed_for(grid)
        assert table.shape == (1, math.prod(grid), 64) and torch.isfinite(table).all()
        out = enc.forward_features(_video(t=t, s=s))
        assert out.shape == (2, math.prod(grid), 64)
    # upsampling keeps the corners' neighbourhood: the first token stays close to the native one
    big = enc.pos_embed_for((4, 8, 8))
    assert F.cosine_similarity(big[0, 0], enc.pos_embed[0, 0], dim=0) > 0.9


def test_sincos_1d_is_videomae_table():
    hf = pytest.importorskip("transformers.models.videomae.modeling_videomae")
    ref = hf.get_sinusoid_encoding_table(50, 64)[0]
    assert torch.allclose(sincos_1d_table(50, 64), ref.float(), atol=1e-6)


def test_visible_only_embedding_equals_conv():
    enc = create_model("vit_test", num_frames=4, img_size=32, patch_size=8)
    x = _video()
    ids = tube_masking(2, enc.grid_size, 0.75, generator=torch.Generator().manual_seed(0)).ids_keep
    full = enc.patch_embed(x)
    assert torch.allclose(enc.patch_embed(x, ids), full[torch.arange(2)[:, None], ids], atol=1e-5)


@pytest.mark.parametrize("layout", ["cthw", "thwc"])
def test_tubelet_gather_and_unpatchify(layout):
    from pretrain.models.tubelets import gather_tubelets, patchify, unpatchify
    x = _video(t=4, s=32)
    tub = (2, 8, 8)
    patches = patchify(x, tub, layout)                       # (2, 32, 384)
    assert patches.shape == (2, 32, 3 * 2 * 8 * 8)
    assert torch.equal(unpatchify(patches, (2, 4, 4), tub, layout), x)
    for keep in (4, 28):                                      # strided-index path and patchify + row path
        ids = torch.stack([torch.randperm(32)[:keep].sort().values for _ in range(2)])
        assert torch.equal(gather_tubelets(x, ids, tub, layout), patches[torch.arange(2)[:, None], ids])
    # tubelet 0 of sample 0 is the clip's first 2 x 8 x 8 corner
    corner = x[0, :, :2, :8, :8]
    assert torch.equal(patches[0, 0], (corner if layout == "cthw" else corner.permute(1, 2, 3, 0)).flatten())


def test_attention_and_tail_match_timm_block():
    from timm.models.vision_transformer import Block
    from pretrain.models.attention import Attention, block_forward_tail
    torch.manual_seed(0)
    ref = Block(32, 2, qkv_bias=True)                        # timm's own attention
    blk = Block(32, 2, qkv_bias=True, attn_layer=Attention)
    blk.load_state_dict(ref.state_dict(), strict=True)       # same parameter names
    x = torch.randn(2, 10, 32, requires_grad=True)
    full = ref(x)
    assert torch.allclose(blk(x), full, atol=1e-6)
    tail = block_forward_tail(blk, x, 6)
    assert torch.allclose(tail, full[:, -6:], atol=1e-6)
    g_ref = torch.autograd.grad(full[:, -6:].sum(), [x, ref.attn.qkv.weight])
    g_tail = torch.autograd.grad(tail.sum(), [x, blk.attn.qkv.weight])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ref, g_tail))


@pytest.mark.parametrize("mode", ["v2", "hidden"])
def test_decoder_masking_reduces_decoder_tokens(mode):
    seen = {}
    for r in (0.0, 0.5):
        m = create_model("videomae_test", num_frames=8, img_size=64, patch_size=8, decoder_mask_ratio=r,
                         decoder_mask_mode=mode)
        hook = m.decoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__(r, inp[0].shape[1]))
        loss, aux = m(_video(t=8, s=64))
        hook.remove()
        n_vis, n_mask = aux["ids_keep"].shape[1], int(aux["mask"].sum(1)[0])
        n_all = aux["mask"].shape[1]
        if r == 0 or mode == "hidden":
            assert aux["ids_pred"].shape[1] == n_mask - int(r * n_mask)
            assert aux["loss_mask"].all()
        else:   # V2: every running-cell decoded position, the visible ones out of the loss
            assert aux["ids_pred"].shape[1] == n_all // 2
            assert torch.equal(aux["loss_mask"], aux["mask"].gather(1, aux["ids_pred"]))
            assert not aux["loss_mask"].all()
        assert seen[r] == n_vis + aux["ids_pred"].shape[1]
        assert aux["target"].shape[1] == aux["ids_pred"].shape[1]
    assert seen[0.5] < 0.65 * seen[0.0]


def test_v2_decoder_token_counts_on_the_vit_b_grid():
    """8x14x14 grid, tube 0.9, running cell 0.5: VideoMAE V2 feeds 160 visible + 784 mask tokens
    (every cell-decoded position) and scores the hidden ones; "hidden" mode 704 mask tokens."""
    from pretrain.masking import decoder_targets, tube_masking

    grid = (8, 14, 14)
    m = tube_masking(3, grid, 0.9, generator=torch.Generator().manual_seed(0))
    assert m.ids_keep.shape[1] == 160
    ids, lm = decoder_targets(m, grid, 0.5, "v2", generator=torch.Generator().manual_seed(1))
    assert ids.shape == (3, 784) and torch.equal(lm, m.mask.gather(1, ids))
    assert (lm.sum(1) < 784).all() and (lm.sum(1) > 600).all()
    ids_h, lm_h = decoder_targets(m, grid, 0.5, "hidden", generator=torch.Generator().manual_seed(1))
    assert ids_h.shape == (3, 704) and lm_h.all()
    # V2's int() rounding: 0.4 hides int(1.6) = 1 slot of a 2x2 cell, so 3/4 of positions are decoded
    ids4, _ = decoder_targets(m, grid, 0.4, "v2", generator=torch.Generator().manual_seed(1))
    assert ids4.shape == (3, 1176)


def test_v2_loss_counts_only_hidden_rows():
    torch.manual_seed(0)
    m = create_model("videomae_test", num_frames=8, img_size=32, patch_size=8, decoder_mask_ratio=0.5)
    x = _video(t=8, s=32)
    loss, aux = m(x)
    per_row = (aux["pred"] - aux["target"]).square().mean(-1)
    want = per_row[aux["loss_mask"]].mean()
    assert torch.allclose(loss, want, atol=1e-6)


def test_pretrainer_init_follows_videomae():
    """Every Linear of encoder and decoder xavier-uniform (bound sqrt(6 / (fan_in + fan_out))),
    zero biases; encoder_to_decoder at PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in));
    mask_token truncated normal cut at +-0.02."""
    torch.manual_seed(0)
    m = create_model("videomae_base", num_frames=4, img_size=32, patch_size=16)
    qkv = m.encoder.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    assert abs(qkv.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    fc2 = m.decoder.blocks[-1].mlp.fc2
    b2 = math.sqrt(6 / sum(fc2.weight.shape))
    assert fc2.weight.abs().max() <= b2 and torch.all(fc2.bias == 0)
    e2d = m.encoder_to_decoder.weight
    assert e2d.abs().max() <= 1 / math.sqrt(e2d.shape[1]) and e2d.abs().max() > 0.9 / math.sqrt(e2d.shape[1])
    assert m.mask_token.abs().max() <= 0.02 and m.mask_token.std() > 0.008
    old = create_model("videomae_base", num_frames=4, img_size=32, patch_size=16, init="trunc_normal")
    assert old.encoder.blocks[0].attn.qkv.weight.std() < 0.021


@pytest.mark.parametrize("name", ["videomae_test", "maskfeat_mvitv2_test"])
def test_reconstruct(name):
    kw = dict(target="pixel") if "maskfeat" in name else {}
    model = create_model(name, **_small(name), **kw)
    s = 64 if "mvit" in name else 32
    x = _video(s=s)
    out = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    for k in ("original", "masked", "recon"):
        assert out[k].shape == x.shape and torch.isfinite(out[k]).all()
    unit = model.tubelet if hasattr(model, "tubelet") else model.unit
    hidden = out["mask"].view(2, *[n // u for n, u in zip(x.shape[2:], unit)])
    for d, u in enumerate(unit):
        hidden = hidden.repeat_interleave(u, dim=d + 1)
    hidden = hidden.unsqueeze(1).expand_as(x)
    assert torch.equal(out["recon"][~hidden], x[~hidden]), "visible tubelets are the input"
    assert torch.equal(out["masked"][~hidden], x[~hidden])
    assert (out["masked"][hidden] == 0).all(), "hidden tubelets are grey"
    assert not torch.allclose(out["recon"][hidden], x[hidden])
    if "maskfeat" in name:
        with pytest.raises(ValueError, match="pixel"):
            create_model(name, **_small(name)).reconstruct(x)


def test_divided_attention_with_tube_masking():
    torch.manual_seed(0)
    m = create_model("videomae_test", **_small("videomae_test"), attn_type="divided")
    loss, _ = m(_video())
    loss.backward()
    _check_grads(m)
    with pytest.raises(ValueError, match="tube"):
        create_model("videomae_test", **_small("videomae_test"), attn_type="divided", mask_type="random")
    enc = create_model("vit_test", **_small("vit_test"), attn_type="divided", use_mean_pooling=False)
    ids = random_masking(2, enc.grid_size, 0.5, generator=torch.Generator().manual_seed(0)).ids_keep
    with pytest.raises(ValueError, match="random masking is not supported"):
        enc.forward_features(_video(), ids_keep=ids)
    ids = tube_masking(2, enc.grid_size, 0.5, generator=torch.Generator().manual_seed(0)).ids_keep
    assert enc.forward_features(_video(), ids_keep=ids).shape == (2, 1 + ids.shape[1], 64)   # with a class token
    assert enc(_video()).shape == (2, 64)


def test_matches_transformers_videomae():
    tf = pytest.importorskip("transformers")
    from finetune.interop.hf import hf_config_kwargs, hf_state_dict
    torch.manual_seed(0)
    m = create_model("videomae_test", num_frames=4, img_size=32, patch_size=8, decoder_mask_ratio=0.0)
    with torch.no_grad():   # HF has no k bias; dropping it is exact (softmax ignores a per-query shift)
        for blk in list(m.encoder.blocks) + list(m.decoder.blocks):
            d = blk.attn.qkv.weight.shape[1]
            blk.attn.qkv.bias.normal_()
            assert blk.attn.qkv.bias[d:2 * d].abs().sum() > 0
    hf = tf.VideoMAEForPreTraining(tf.VideoMAEConfig(**hf_config_kwargs(m))).eval()
    hf.load_state_dict(hf_state_dict(m), strict=True)
    hf.decoder.norm.eps = 1e-6
    x = _video()
    loss, aux = m.eval()(x)
    out = hf(x.transpose(1, 2), bool_masked_pos=aux["mask"])
    b, n, p = aux["pred"].shape
    pred_thwc = aux["pred"].view(b, n, 3, p // 3).transpose(-1, -2).reshape(b, n, p)   # ours are (C, kt, kh, kw)
    assert torch.allclose(out.logits, pred_thwc, atol=1e-5)
    assert torch.allclose(out.loss, loss, rtol=1e-4)


def test_mvit_matches_torchvision(monkeypatch):
    from torchvision.models.video import mvit as tv
    from pretrain.models.mvit import mvit_block_settings
    # capture torchvision's own MViTv2-S block table, then build its model on a small clip
    monkeypatch.setattr(tv, "_mvit", lambda block_setting, **kw: block_setting)
    tv_settings = tv.mvit_v2_s()
    assert tv_settings == mvit_block_settings(MVIT_SIZES["s"]["depths"])
    torch.manual_seed(0)
    ref = tv.MViT(spatial_size=(64, 64), temporal_size=4, block_setting=tv_settings, residual_pool=True,
                  residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True).eval()
    ours = create_model("mvitv2_s", num_frames=4, img_size=64, num_classes=400).eval()
    sd = ref.state_dict()
    sd["head.weight"], sd["head.bias"] = sd.pop("head.1.weight"), sd.pop("head.1.bias")
    ours.load_state_dict(sd, strict=True)
    x = _video(b=1, s=64)
    assert torch.allclose(ours(x), ref(x), atol=1e-4)


@pytest.mark.parametrize("name", ["videomae_test", "maskfeat_mvitv2_test"])
def test_grad_checkpointing_and_generator_determinism(name):
    s = 64 if "mvit" in name else 32
    x = _video(s=s)
    results = []
    for ckpt in (False, True, False):
        torch.manual_seed(0)
        m = create_model(name, **_small(name), grad_checkpointing=ckpt)
        loss, _ = m(x, generator=torch.Generator().manual_seed(5))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    for loss, grads in results[1:]:
        assert torch.allclose(loss, results[0][0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, results[0][1]))


def test_bad_clip_sizes_raise_clear_errors():
    m = create_model("videomae_test", **_small("videomae_test"))
    with pytest.raises(ValueError, match="frames 5"):
        m(_video(t=5))
    with pytest.raises(ValueError, match="height 30"):
        m.encoder(torch.randn(1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match="decoder_mask_ratio"):
        create_model("maskfeat_mvitv2_test", decoder_mask_ratio=0.5)
    with pytest.raises(ValueError, match="fc_norm"):
        MaskedAutoencoder(create_model("vit_test"))


def test_hog_orientation_and_invariance():
    # a vertical edge: horizontal gradient, orientation 0, split between the bins centred at +-10 deg
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8:] = 1.0
    hist = hog_histograms(img, bins=9, cell=8)
    assert hist.shape == (1, 3, 9, 2, 2)
    energy = hist.sum(dim=(0, 1, 3, 4))
    assert energy[0] > 0 and torch.allclose(energy[0], energy[8]) and energy[1:8].sum() == 0
    # a horizontal edge: orientation pi / 2, the centre of bin 4
    energy_h = hog_histograms(img.transpose(-1, -2), 9, 8).sum(dim=(0, 1, 3, 4))
    assert torch.allclose(energy_h[4], energy.sum()) and energy_h.sum() == energy_h[4]
    # per-unit L2 normalisation: invariant to a per-channel affine map of the input
    video = torch.rand(2, 3, 4, 32, 32)
    ids = torch.tensor([[0, 3], [1, 2]])
    a = hog_targets(video, ids, (2, 16, 16))
    b = hog_targets(video * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1, 1) - 1.0, ids, (2, 16, 16))
    assert a.shape == (2, 2, 2 * 3 * 4 * 9) and torch.allclose(a, b, atol=1e-5)


def _moving_squares(n=4, t=8, s=32, seed=0):
    """Clips ``(n, 3, t, s, s)``: a per-clip background colour and a 10 px square moving in a straight line."""
    g = torch.Generator().manual_seed(seed)
    v = (torch.rand(n, 3, 1, 1, 1, generator=g) * 3 - 1.5).expand(n, 3, t, s, s).clone()
    for i in range(n):
        y, x = torch.randint(0, s - 10, (2,), generator=g).tolist()
        dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
        color = torch.rand(3, 1, 1, generator=g) * 3 - 1.5
        for f in range(t):
            yy, xx = min(max(y + dy * f, 0), s - 10), min(max(x + dx * f, 0), s - 10)
            v[i, :, f, yy:yy + 10, xx:xx + 10] = color
    return v + 0.05 * torch.randn(v.shape, generator=g)


def test_tiny_mae_learns_moving_squares():
    torch.manual_seed(0)
    m = create_model("videomae_test", num_frames=8, img_size=32, patch_size=8, mask_ratio=0.75, norm_pix_loss=False)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    video = _moving_squares()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, _ = m(video, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # predicting each channel's mean colour: beating it clearly needs the visible context
    # (which background, where the square is)
    baseline = ((video - video.mean(dim=(0, 2, 3, 4), keepdim=True)) ** 2).mean().item()
    assert last < 0.6 * first and last < 0.75 * baseline, (first, last, baseline)


_ZERO3_SCRIPT = r"""
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from pretrain.models import create_model
for name, kw in [("videomae_test", dict(num_frames=4, img_size=32, patch_size=8, use_mean_pooling=False,
                                       decoder_mask_ratio=0.5)),
                 ("maskfeat_mvitv2_test", dict(num_frames=4, img_size=64))]:
    torch.manual_seed(0)
    model = create_model(name, **kw)
    cfg = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
           "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                      config=cfg)
    x = torch.randn(2, 3, 4, kw["img_size"], kw["img_size"])
    losses = []
    for _ in range(3):
        loss, _ = engine(x, generator=torch.Generator().manual_seed(0))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0], losses
    print(name, "ok", losses)
"""


@pytest.mark.slow
def test_models_train_under_deepspeed_zero3(tmp_path):
    """Pretrainers train under ZeRO-3 partitioning (visible-only stem, decoder tail block,
    class token, decoder masking, MaskFeat mask token), in a subprocess to keep the
    distributed state out of this session."""
    pytest.importorskip("deepspeed")
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _ZERO3_SCRIPT, port], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "videomae_test ok" in out.stdout and "maskfeat_mvitv2_test ok" in out.stdout


def test_rgb_diff_input_sees_motion_not_colour():
    from pretrain.models.vit import RGB_DIFF_SCALE, rgb_difference

    x = _video(b=1, t=4)
    d = rgb_difference(x)
    assert d.shape == x.shape
    assert torch.allclose(d[:, :, 0], RGB_DIFF_SCALE * (x[:, :, 1] - x[:, :, 0]))
    assert torch.equal(d[:, :, -1], d[:, :, -2])       # last difference repeated: T (and the grid) kept
    enc = create_model("vit_test", input_mode="rgb_diff", **_small("vit_test")).eval()
    # two static clips of different colours are the same input to an rgb_diff encoder...
    a = torch.full((1, 3, 4, 32, 32), -1.0)
    b = torch.full((1, 3, 4, 32, 32), 2.0)
    with torch.no_grad():
        assert torch.allclose(enc(a), enc(b), atol=1e-6)
        # ...but not to an rgb one with the same weights, and motion changes the features
        rgb = create_model("vit_test", **_small("vit_test")).eval()
        rgb.load_state_dict(enc.state_dict())
        assert not torch.allclose(rgb(a), rgb(b), atol=1e-3)
        moving = a.clone()
        moving[:, :, 2:, 8:16, 8:16] = 2.0
        assert not torch.allclose(enc(moving), enc(a), atol=1e-3)
    assert enc.model_config["input_mode"] == "rgb_diff"
    with pytest.raises(ValueError, match="input_mode"):
        create_model("vit_test", input_mode="flow", **_small("vit_test"))


def test_mae_with_rgb_diff_reconstructs_the_differences():
    from pretrain.models.tubelets import gather_tubelets
    from pretrain.models.vit import rgb_difference

    mae = create_model("videomae_test", input_mode="rgb_diff", norm_pix_loss=False, **_small("videomae_test"))
    x = _video(b=2, t=4)
    g = torch.Generator().manual_seed(0)
    loss, aux = mae(x, generator=g)
    want = gather_tubelets(rgb_difference(x), aux["ids_pred"], mae.tubelet, layout="cthw")
    assert torch.equal(aux["target"], want)
    assert torch.allclose(loss, F.mse_loss(aux["pred"], want), atol=1e-6)
    loss.backward()
    assert mae.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    rec = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rec["original"], rgb_difference(x))


def test_temporal_difference_embedding_init():
    from pretrain.models.vit import temporal_difference_init_

    torch.manual_seed(0)
    enc = create_model("vit_test", num_frames=8, img_size=32, patch_size=8, embed_init="temporal_diff")
    w = enc.patch_embed.proj.weight                                  # (D, C, 2, 8, 8)
    assert torch.equal(w[:, :, 1], -w[:, :, 0]), "w1 = -w0: a difference across the tubelet's frames"
    ref = create_model("vit_test", num_frames=8, img_size=32, patch_size=8)
    assert abs(w.abs().mean() / ref.patch_embed.proj.weight.abs().mean() - 4.0) < 0.3, "gain 4"
    static = torch.randn(2, 3, 1, 32, 32).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        tok = enc.patch_embed(static)
        assert torch.allclose(tok, enc.patch_embed.proj.bias.expand_as(tok), atol=1e-5), "a static clip embeds to the bias"
        moving = torch.roll(static, 1, dims=-1) * (torch.arange(8).view(1, 1, 8, 1, 1) % 2) + \
            static * (1 - torch.arange(8).view(1, 1, 8, 1, 1) % 2)
        assert (enc.patch_embed(moving) - tok).abs().max() > 0.1
    half = create_model("vit_test", num_frames=8, img_size=32, patch_size=8, embed_init="temporal_diff",
                        embed_init_share=0.5, embed_init_gain=2.0)
    hw = half.patch_embed.proj.weight
    assert torch.equal(hw[:32, :, 1], -hw[:32, :, 0]) and not torch.equal(hw[32:, :, 1], -hw[32:, :, 0])
    w3 = temporal_difference_init_(torch.randn(4, 3, 3, 2, 2), gain=1.0)
    assert torch.allclose(w3.sum(2), torch.zeros(4, 3, 2, 2)), "odd tubelets: filters still sum to zero"
    with pytest.raises(ValueError, match="embed_init"):
        create_model("vit_test", num_frames=8, img_size=32, patch_size=8, embed_init="nope")
    with pytest.raises(ValueError, match="tubelet_size"):
        create_model("vit_test", num_frames=8, img_size=32, patch_size=8, tubelet_size=1, embed_init="temporal_diff")
    # the MAE passes it to its encoder, and the encoder config rebuilds it
    mae = create_model("videomae_test", num_frames=8, img_size=32, patch_size=8, embed_init="temporal_diff")
    assert mae.encoder.model_config["embed_init"] == "temporal_diff"
    w = mae.encoder.patch_embed.proj.weight
    assert torch.equal(w[:, :, 1], -w[:, :, 0])


def test_conv_maxpool_stem_is_local_and_trains_in_the_mae():
    """``stem="conv_maxpool"``: each token sees only its own tubelet (a masked tubelet cannot leak
    into a visible one), visible-only embedding equals the full embedding, the config rebuilds it,
    the MAE pretrains through it and HF export refuses it by name."""
    from finetune.interop.hf import HFConversionError, hf_config_from_vit
    from pretrain.models.tubelets import ConvPoolEmbed3d

    torch.manual_seed(0)
    kw = dict(num_frames=8, img_size=32, patch_size=8, stem="conv_maxpool", stem_width=8)
    enc = create_model("vit_test", **kw).eval()
    assert isinstance(enc.patch_embed, ConvPoolEmbed3d) and enc.patch_embed.width == 8
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        tok = enc.patch_embed(x)                                      # (2, 4*4*4, D)
        y = x.clone()
        y[:, :, 2:4, 8:16, 16:24] += 3.0                              # tubelet (t=1, h=1, w=2) only
        changed = (enc.patch_embed(y) - tok).abs().amax(-1) > 0
        assert changed.sum().item() == 2 and changed[:, 1 * 16 + 1 * 4 + 2].all()
        ids = torch.stack([torch.randperm(64)[:16] for _ in range(2)])
        sub = enc.patch_embed(x, ids)
        assert torch.allclose(sub, tok[torch.arange(2)[:, None], ids], atol=1e-6)
    again = type(enc)(**enc.model_config)
    assert type(again.patch_embed) is ConvPoolEmbed3d and again.model_config == enc.model_config
    # tokens start at the scale of the position table, not 7x below it (the linear gets PyTorch's init)
    assert tok.std() > 0.1
    mae = create_model("videomae_test", **kw)
    loss = mae(x)[0]
    loss.backward()
    assert mae.encoder.patch_embed.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="stem"):
        create_model("vit_test", num_frames=8, img_size=32, patch_size=8, stem="nope")
    with pytest.raises(ValueError, match="embed_init"):
        create_model("vit_test", **kw, embed_init="temporal_diff")
    with pytest.raises(HFConversionError, match="stem='conv_maxpool'"):
        hf_config_from_vit(enc.model_config)
