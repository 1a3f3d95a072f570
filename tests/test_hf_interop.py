"""Hugging Face VideoMAE and original VideoMAE .pth, both directions, on several configs.

Every model has random weights (non-zero q/v biases included), so a tensor that is dropped,
zeroed or mis-sliced shows up in the outputs. Measured differences are printed (-s to see them).
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from _interop_util import randomize, tiny_vit, video_input
from finetune.interop.hf import export_hf, import_hf, masks_from_bool
from finetune.interop.pth import import_original
from finetune.interop.sources import load_encoder, open_source
from launch.cli import main as tubelet

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

# tubelet-side encoders: patch / tubelet / frames / size / width / depth / heads / mlp / pooling / qkv bias
OUR_CONFIGS = {
    "p8_t2_f4_s32_meanpool": dict(),
    "p16_t3_f6_s48_tokennorm": dict(patch_size=16, tubelet_size=3, num_frames=6, img_size=48, embed_dim=48, depth=3,
                                    num_heads=3, mlp_ratio=2.0, use_mean_pooling=True, fc_norm=False),
    "p4_t1_f2_s16x24_noqkvbias": dict(patch_size=4, tubelet_size=1, num_frames=2, img_size=[16, 24], embed_dim=32,
                                      depth=1, num_heads=4, mlp_ratio=3.0, qkv_bias=False, norm_eps=1e-5),
}
# HF-side configs: including HF's own default eps 1e-12 and no final norm
HF_CONFIGS = {
    "base_like_small": dict(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "no_meanpool_eps12": dict(image_size=24, patch_size=8, num_frames=6, tubelet_size=3, hidden_size=48,
                              num_hidden_layers=3, num_attention_heads=2, intermediate_size=96,
                              use_mean_pooling=False, layer_norm_eps=1e-12),
    "no_qv_bias_nonsquare": dict(image_size=[16, 32], patch_size=16, num_frames=2, tubelet_size=1, hidden_size=32,
                                 num_hidden_layers=1, num_attention_heads=1, intermediate_size=80, qv_bias=False),
}


def _hf_tokens(model, x):
    """HF takes (B, T, C, H, W)."""
    with torch.no_grad():
        base = model if isinstance(model, tf.VideoMAEModel) else model.videomae
        return base(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state


@pytest.mark.parametrize("name", list(OUR_CONFIGS))
def test_export_to_hf_then_back(name, tmp_path):
    enc = tiny_vit(seed=3, **OUR_CONFIGS[name])
    rep = export_hf(enc, tmp_path / "hf")
    assert rep["max_abs_diff"] <= 1e-4
    x = video_input(enc)
    # what a user gets from transformers itself
    hf_model = tf.VideoMAEModel.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        ours = enc.forward_features(x)
    diff = float((ours - _hf_tokens(hf_model, x)).abs().max())
    print(f"{name}: ours -> HF last_hidden_state max abs diff {diff:.3e}")
    assert diff <= 1e-4
    d = enc.embed_dim
    attn = hf_model.encoder.layer[0].attention.attention
    qkv_b = enc.blocks[0].attn.qkv.bias
    if qkv_b is not None:  # the known trap: q/v biases silently loaded as zeros
        assert torch.equal(attn.query.bias, qkv_b[:d]) and torch.equal(attn.value.bias, qkv_b[2 * d:])
        assert attn.query.bias.abs().sum() > 0 and attn.value.bias.abs().sum() > 0
    else:
        assert attn.query.bias is None
    # ... and back: every tensor the same except the (softmax-invariant) k bias, now zero
    back = load_encoder(tmp_path / "hf")
    sa, sb = enc.state_dict(), back.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        if k.endswith("attn.qkv.bias"):
            assert torch.equal(sb[k][:d], sa[k][:d]) and torch.equal(sb[k][2 * d:], sa[k][2 * d:])
            assert not sb[k][d:2 * d].any()
        else:
            assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        d_tok = float((back.forward_features(x) - ours).abs().max())
        d_pool = float((back(x) - enc(x)).abs().max())
    print(f"{name}: round trip tokens {d_tok:.3e}, pooled {d_pool:.3e}")
    assert d_tok <= 1e-5 and d_pool <= 1e-5


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_import_random_hf_model(name, tmp_path, capsys):
    cfg = tf.VideoMAEConfig(**HF_CONFIGS[name])
    hf_model = randomize(tf.VideoMAEModel(cfg), seed=5)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    assert tubelet(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "import check vs transformers: max_abs_diff" in capsys.readouterr().out
    enc = load_encoder(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_kwargs"]["norm_eps"] == cfg.layer_norm_eps
    x = video_input(enc)
    with torch.no_grad():
        diff = float((enc.forward_features(x) - _hf_tokens(hf_model, x)).abs().max())
    print(f"{name}: HF -> ours last_hidden_state max abs diff {diff:.3e}")
    assert diff <= 1e-4
    if cfg.qv_bias:
        q = hf_model.encoder.layer[0].attention.attention.query.bias
        assert torch.equal(enc.blocks[0].attn.qkv.bias[: cfg.hidden_size], q) and q.abs().sum() > 0


def test_old_hf_checkpoints_with_q_bias_names(tmp_path):
    """Checkpoints saved by older transformers name the biases q_bias / v_bias: read them, not zeros."""
    from safetensors.torch import load_file, save_file

    cfg = tf.VideoMAEConfig(**HF_CONFIGS["base_like_small"])
    hf_model = randomize(tf.VideoMAEModel(cfg), seed=6)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    f = tmp_path / "hf" / "model.safetensors"
    sd = load_file(str(f))
    old = {k.replace("attention.query.bias", "attention.q_bias").replace("attention.value.bias", "attention.v_bias"): v
           for k, v in sd.items()}
    assert any(k.endswith("q_bias") for k in old)
    save_file(old, str(f), metadata={"format": "pt"})
    imp = import_hf(tmp_path / "hf")
    x = video_input(imp.model)
    with torch.no_grad():
        diff = float((imp.model.forward_features(x) - _hf_tokens(hf_model, x)).abs().max())
    assert diff <= 1e-4
    assert torch.equal(imp.model.blocks[1].attn.qkv.bias[:64], hf_model.encoder.layer[1].attention.attention.query.bias)


def test_classification_import_and_reexport(tmp_path, capsys):
    cfg = tf.VideoMAEConfig(**HF_CONFIGS["base_like_small"], num_labels=3,
                            id2label={0: "left", 1: "right", 2: "up"}, label2id={"left": 0, "right": 1, "up": 2})
    hf_model = randomize(tf.VideoMAEForVideoClassification(cfg), seed=7)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    assert tubelet(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "-> classification" in out and "head: (3, 64)" in out and "logits_max_abs_diff" in out
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["head"] == {"num_classes": 3, "labels": ["left", "right", "up"]}
    src = open_source(tmp_path / "ours")
    assert src.kind == "classification" and src.labels == ["left", "right", "up"]
    x = video_input(src.encoder)
    with torch.no_grad():
        ref = hf_model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        diff = float((_logits(src, x) - ref).abs().max())
    # HF's fc_norm has LayerNorm eps 1e-5, the encoder's norms the config's 1e-12
    print(f"classification: HF -> ours logits max abs diff {diff:.3e}")
    assert diff <= 1e-3
    # and out again: the same HF classifier, labels included
    assert tubelet(["export", "--from", str(tmp_path / "ours"), "--out", str(tmp_path / "hf2"), "--format", "hf"]) == 0
    again = tf.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / "hf2")).eval()
    assert again.config.id2label == {0: "left", 1: "right", 2: "up"}
    with torch.no_grad():
        assert float((again(pixel_values=x.permute(0, 2, 1, 3, 4)).logits - ref).abs().max()) <= 1e-5


def _logits(src, x):
    """What the imported classifier computes: the encoder's pooled features through the head."""
    return torch.nn.functional.linear(src.encoder(x), src.head["weight"], src.head["bias"])


def _tube_mask(grid, batch=2, hidden_frac=0.75, seed=0):
    t, h, w = grid
    g = torch.Generator().manual_seed(seed)
    spatial = torch.stack([torch.randperm(h * w, generator=g) < int(hidden_frac * h * w) for _ in range(batch)])
    return spatial.repeat(1, t)


def test_pretraining_import_loss_matches_hf(tmp_path, capsys):
    from pretrain.models import create_model

    cfg = tf.VideoMAEConfig(**HF_CONFIGS["base_like_small"], use_mean_pooling=False, layer_norm_eps=1e-6,
                            decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
                            decoder_intermediate_size=64, norm_pix_loss=True)
    hf_model = randomize(tf.VideoMAEForPreTraining(cfg), seed=8)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    assert tubelet(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "pt")]) == 0
    assert "loss_abs_diff" in capsys.readouterr().out
    spec = json.loads((tmp_path / "pt" / "config.json").read_text())
    # what `tubelet pretrain` builds from the preset the import wrote (its model/data sections)
    from pretrain.config import PretrainConfig, load_config
    from pretrain.main import build_model, load_init

    mae = build_model(load_config(PretrainConfig, tmp_path / "pt" / "pretrain.yaml")).eval()
    assert load_init(mae, str(tmp_path / "pt")) == len(mae.state_dict())
    # every HF value is used: ours has the same values plus one (zero) k bias per block
    k_bias = sum(b.attn.qkv.bias.numel() // 3 for b in [*mae.encoder.blocks, *mae.decoder.blocks])
    assert sum(v.numel() for v in mae.state_dict().values()) == \
        sum(v.numel() for v in hf_model.state_dict().values()) + k_bias
    x = video_input(mae.encoder)
    mask = _tube_mask(mae.encoder.grid_size)
    with torch.no_grad():
        loss, aux = mae(x, masks=masks_from_bool(mask))
        res = hf_model(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
    b, n, p = aux["pred"].shape  # ours (C, kt, kh, kw) per row, HF (kt, kh, kw, C)
    pred = aux["pred"].view(b, n, 3, p // 3).transpose(-1, -2).reshape(b, n, p)
    d_loss, d_pred = abs(float(loss) - float(res.loss)), float((pred - res.logits).abs().max())
    print(f"pretraining: loss ours {float(loss):.6f} HF {float(res.loss):.6f} (diff {d_loss:.2e}), pred {d_pred:.2e}")
    assert d_loss <= 1e-4 and d_pred <= 1e-4
    # `tubelet pretrain` warm-starts from the imported directory (model.init): exact weights
    from pretrain.config import ConfigError

    warm = build_model(load_config(PretrainConfig, tmp_path / "pt" / "pretrain.yaml", [f"model.init={tmp_path / 'pt'}"]))
    load_init(warm, warm_path := str(tmp_path / "pt"))
    for k, v in mae.state_dict().items():
        assert torch.equal(warm.state_dict()[k], v), k
    # a model of another shape is refused with the exact key differences
    other = create_model(spec["model"], **{**spec["model_kwargs"], "decoder_depth": 1})
    with pytest.raises(ConfigError, match="model.init.*unexpected.*decoder.blocks.1"):
        load_init(other, warm_path)


# ------------------------------------------------------------------------------------------------
# original VideoMAE / VideoMAE V2 checkpoints, written by the test in their layout


def _to_original(sd: dict, prefix: str = "") -> dict:
    """tubelet names -> VideoMAE's: qkv.bias -> q_bias + v_bias (k must be zero), ls -> gamma,
    decoder head rows in VideoMAE's (kt, kh, kw, C) pixel order."""
    sd = dict(sd)
    if "decoder.head.weight" in sd:  # rows: ours c * S + s  ->  VideoMAE's s * C + c
        w, b = sd["decoder.head.weight"], sd["decoder.head.bias"]
        sd["decoder.head.weight"] = w.view(3, -1, w.shape[1]).permute(1, 0, 2).reshape(w.shape)
        sd["decoder.head.bias"] = b.view(3, -1).t().reshape(-1)
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            d = v.shape[0] // 3
            assert not v[d:2 * d].any()
            out[prefix + k.replace("qkv.bias", "q_bias")] = v[:d].clone()
            out[prefix + k.replace("qkv.bias", "v_bias")] = v[2 * d:].clone()
        else:
            out[prefix + k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")] = v.clone()
    return out


def _zero_k_bias(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.bias"):
                d = p.shape[0] // 3
                p[d:2 * d] = 0
    return model


@pytest.mark.parametrize("layerscale", [False, True])
def test_original_finetune_pth(layerscale, tmp_path):
    """VideoMAE fine-tuned layout: {"model": ..., "args": Namespace}, q/v biases, fc_norm, head (V2: gamma)."""
    src = _zero_k_bias(tiny_vit(seed=9, num_frames=8, img_size=32, num_classes=5,
                                init_values=0.1 if layerscale else None))
    f = tmp_path / "ft.pth"
    torch.save({"model": _to_original(src.state_dict()), "args": argparse.Namespace(model="vit"), "epoch": 9}, f)
    args = ["import", "--from", str(f), "--out", str(tmp_path / "o"), "--num-frames", "8", "--img-size", "32",
            "--num-heads", "4"]
    assert tubelet(args) == 0
    imp = open_source(tmp_path / "o")
    assert imp.kind == "classification"
    x = video_input(src)
    with torch.no_grad():
        assert torch.equal(imp.encoder.forward_features(x), src.forward_features(x))
        assert torch.equal(_logits(imp, x), src(x))


def test_original_pretrain_pth(tmp_path):
    """VideoMAE pretraining layout under "module": encoder.* (q/v biases) + decoder + encoder_to_decoder."""
    from pretrain.models import create_model

    src = _zero_k_bias(randomize(create_model("videomae_test", num_frames=4, img_size=32, patch_size=8,
                                              decoder_num_heads=2), seed=10))
    f = tmp_path / "pt.pth"
    torch.save({"module": _to_original(src.state_dict())}, f)
    imp = import_original(f, num_frames=4, img_size=32, num_heads=2, decoder_num_heads=2)
    assert imp.kind == "pretraining" and imp.report["tensors"] == len(src.state_dict())
    x = video_input(src.encoder)
    masks = masks_from_bool(_tube_mask(src.encoder.grid_size))
    with torch.no_grad():
        assert torch.equal(imp.model(x, masks=masks)[0], src(x, masks=masks)[0])
    # the encoder alone, as `tubelet export` would take it
    enc = load_encoder(f, num_frames=4, img_size=32, num_heads=2)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(x), src.encoder.forward_features(x))


def test_original_learned_pos_embed_refused(tmp_path):
    sd = _to_original(_zero_k_bias(tiny_vit()).state_dict())
    sd["pos_embed"] = torch.randn(1, 32, 64)
    torch.save({"model": sd}, tmp_path / "l.pth")
    with pytest.raises(Exception, match="learned pos_embed"):
        import_original(tmp_path / "l.pth", num_frames=4, img_size=32)


def test_finetune_from_import_then_export_to_hf(tmp_path, capsys):
    """HF VideoMAEModel -> `tubelet import` -> `tubelet finetune --init` (2 real steps on real shards)
    -> `tubelet export --format hf` of the fine-tuned run: a VideoMAEForVideoClassification with our
    class names whose logits are our classifier's."""
    import subprocess
    import sys

    from _interop_util import write_shards

    hf_model = randomize(tf.VideoMAEModel(tf.VideoMAEConfig(**HF_CONFIGS["base_like_small"])), seed=11)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    assert tubelet(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "enc")]) == 0
    write_shards(tmp_path / "shards", 4, per_shard=2)
    run = tmp_path / "ft"
    cmd = [sys.executable, "-m", "launch", "finetune", "--init", str(tmp_path / "enc"), "model.name=vit_test",
           f"data.shards={tmp_path / 'shards'}", f"data.val_shards={tmp_path / 'shards'}", f"run.dir={run}",
           "data.num_frames=4", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=2",
           "data.num_workers=0", "run.max_steps=2", "run.save_every=2", "run.tracker=none", "run.progress=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                              "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded 28 tensors from" in r.stdout + r.stderr
    assert tubelet(["export", "--from", str(run), "--out", str(tmp_path / "hf_ft"), "--format", "hf"]) == 0
    assert "VideoMAEForVideoClassification" in capsys.readouterr().out
    clf_hf = tf.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / "hf_ft")).eval()
    assert clf_hf.config.id2label == {0: "a", 1: "b"}
    src = open_source(run)
    x = video_input(src.encoder)
    with torch.no_grad():
        ours = src.encoder(x) @ src.head["weight"].t() + src.head["bias"]
        diff = float((ours - clf_hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits).abs().max())
    print(f"fine-tuned -> HF classification logits max abs diff {diff:.3e}")
    assert diff <= 1e-4
