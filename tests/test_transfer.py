"""Transfer as VideoMAE: every init source gives the scratch ViT's head, the LR rule counts videos,
and an exported fine-tuned classifier gives Hugging Face ``VideoMAEForVideoClassification``'s logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from finetune.config import FinetuneConfig
from finetune.classifier import build_model
from finetune.main import finetune
from finetune.interop.sources import load_encoder
from launch.cli import main as tubelet
from pretrain.config import PretrainConfig, load_config
from pretrain.train.schedule import lr_rule, scaled_lr

DATA = ["data.num_frames=8", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=4",
        "data.num_workers=0", "data.hflip=false", "data.test_num_clips=1", "run.progress=false",
        "run.tracker=none", "run.log_every=1"]
ENC_KW = "{patch_size: 8, tubelet_size: 2, embed_init: temporal_diff}"


@pytest.fixture(scope="module")
def data(synth_dir):
    return synth_dir          # conftest's session dataset (read-only)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    from pretrain.main import pretrain

    run = tmp_path_factory.mktemp("pt")
    cfg = load_config(PretrainConfig, None, DATA + [
        f"data.shards={data / 'pretrain'}", f"run.dir={run}", "run.max_steps=2", "run.save_every=2",
        "model.name=videomae_test", f"model.kwargs={ENC_KW}", "optim.lr=1e-2"])
    pretrain(cfg)
    return run


def _ft_cfg(data, run_dir, *extra):
    return load_config(FinetuneConfig, None, DATA + [
        f"data.shards={data / 'train'}", f"data.val_shards={data / 'test'}", f"run.dir={run_dir}",
        "run.max_steps=2", "run.save_every=2", "optim.warmup_steps=1", "model.name=vit_test",
        f"model.kwargs={ENC_KW}", *extra])


def _sources(pretrained, tmp_path):
    """Every kind of init source a user can pass: run dir, checkpoint, native export, HF dir."""
    ckpt = sorted((pretrained / "checkpoints").glob("step_*"))[-1]
    assert tubelet(["export", "--from", str(pretrained), "--out", str(tmp_path / "native"), "--format", "native"]) == 0
    out = {"run": pretrained, "checkpoint": ckpt, "native": tmp_path / "native"}
    return out


@pytest.mark.parametrize("kind", ["run", "checkpoint", "native", "hf"])
def test_every_init_source_gets_a_fresh_fc_norm_on_mean_tokens(kind, data, pretrained, tmp_path):
    if kind == "hf":
        pytest.importorskip("transformers")
        src_dir = tmp_path / "hf"
        # a VideoMAE encoder exported to HF, then used as the init source
        from pretrain.models import create_model

        torch.manual_seed(3)
        mae = create_model("videomae_test", num_frames=8, img_size=32, patch_size=8, tubelet_size=2)
        from finetune.interop.hf import export_hf

        export_hf(mae.encoder, src_dir, log=lambda m: None)
        cfg = _ft_cfg(data, tmp_path / "ft", f"init={src_dir}", "model.kwargs={}")
    else:
        src_dir = _sources(pretrained, tmp_path)[kind]
        cfg = _ft_cfg(data, tmp_path / "ft", f"init={src_dir}")
    model, _, how = build_model(cfg, num_classes=10)
    enc = model.encoder
    assert isinstance(enc.norm, nn.Identity), "the pretraining token norm is dropped"
    assert isinstance(enc.fc_norm, nn.LayerNorm)
    assert torch.all(enc.fc_norm.weight == 1) and torch.all(enc.fc_norm.bias == 0), "fc_norm starts fresh"
    src = load_encoder(src_dir)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        src.norm = nn.Identity()                     # the source's tokens before its norm
        tokens = src.forward_features(x)
        assert torch.allclose(enc.forward_features(x), tokens, atol=1e-6), "same blocks, same weights"
        pooled = enc.eval()(x)
        want = nn.functional.layer_norm(tokens.mean(1), (tokens.shape[-1],), eps=enc.fc_norm.eps)
        assert torch.allclose(pooled, want, atol=1e-6), "pooled = fc_norm(mean(tokens))"
    # the scratch ViT of the same config has exactly the same modules and parameter names
    scratch, _, how_s = build_model(_ft_cfg(data, tmp_path / "s", *(["model.kwargs={}"] if kind == "hf" else [])),
                                    num_classes=10)
    assert how_s == "scratch" and how.startswith("loaded")
    assert set(scratch.state_dict()) == set(model.state_dict())
    assert type(scratch.encoder.norm) is type(enc.norm) and type(scratch.encoder.fc_norm) is type(enc.fc_norm)


def test_lr_rule_counts_videos_not_repeats():
    assert scaled_lr(1e-3, None, 32) == pytest.approx(1e-3 * 32 / 256)
    assert scaled_lr(1e-3, None, 32, clips_per_video=2) == pytest.approx(1e-3 * 16 / 256)
    assert scaled_lr(1e-3, 5e-4, 32, clips_per_video=2) == 5e-4
    assert "16 videos (32 clips / 2 repeats)" in lr_rule(1e-3, None, 32, 2)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, None, 32, clips_per_video=0)


def test_finetune_prints_and_uses_the_video_lr_rule(data, tmp_path, capsys):
    run = tmp_path / "rep"
    finetune(_ft_cfg(data, run, "data.num_repeats=2", "optim.blr=1e-3", "run.max_steps=1", "run.save_every=1",
                     "model.kwargs={patch_size: 8, tubelet_size: 2}"))
    out = capsys.readouterr().out
    assert "lr 7.813e-06 = blr 0.001 x 2 videos (4 clips / 2 repeats) / 256" in out
    import json

    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isclose(rec["lr"], 1e-3 * 2 / 256, rel_tol=1e-6)


def test_finetuned_classifier_matches_hf_video_classification(data, pretrained, tmp_path):
    """Pretraining run -> fine-tune -> `tubelet export --format hf`: HF VideoMAEForVideoClassification
    (use_mean_pooling) gives our logits within 1e-5."""
    tf = pytest.importorskip("transformers")
    from finetune.interop.sources import open_source

    # a plain-ViT pretraining run
    from pretrain.main import pretrain

    pt = tmp_path / "pt"
    pretrain(load_config(PretrainConfig, None, DATA + [
        f"data.shards={data / 'pretrain'}", f"run.dir={pt}", "run.max_steps=2", "run.save_every=2",
        "model.name=videomae_test", "model.kwargs={patch_size: 8, tubelet_size: 2}", "optim.lr=1e-2"]))
    run = tmp_path / "ft"
    finetune(_ft_cfg(data, run, f"init={pt}", "model.kwargs={}", "head.init_scale=1.0", "optim.lr=1e-2"))
    assert tubelet(["export", "--from", str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = tf.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.use_mean_pooling
    src = open_source(run)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = src.encoder(x) @ src.head["weight"].t() + src.head["bias"]
        theirs = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    diff = float((ours - theirs).abs().max())
    print(f"fine-tuned classifier vs HF VideoMAEForVideoClassification: max |logits diff| = {diff:.2e}")
    assert diff <= 1e-5
