"""Typed config: layered YAML, key=value overrides, validation naming the field, round trip."""

import pytest
import yaml

from finetune.config import FinetuneConfig
from pretrain.config import ConfigError, PretrainConfig, load_config, save_config


def _write(path, doc):
    path.write_text(yaml.safe_dump(doc))
    return path


def test_layers_and_overrides(tmp_path):
    _write(tmp_path / "data.yaml", {"data": {"num_frames": 8, "img_size": 32, "hflip": False}})
    _write(tmp_path / "base.yaml", {"base": "data.yaml", "model": {"name": "videomae_test"}, "run": {"max_steps": 5}})
    top = _write(tmp_path / "top.yaml", {"base": ["base.yaml"], "run": {"max_steps": 7}, "data": {"img_size": 48}})
    cfg = load_config(PretrainConfig, top, ["data.shards=/x/{000..003}.tar", "optim.betas=[0.9,0.99]", "optim.clip_grad=null"])
    assert cfg.data.num_frames == 8 and cfg.data.hflip is False   # from the deepest layer
    assert cfg.data.img_size == 48 and cfg.run.max_steps == 7     # later layers win
    assert cfg.model.name == "videomae_test"
    assert cfg.data.shards == "/x/{000..003}.tar"
    assert cfg.optim.betas == (0.9, 0.99) and cfg.optim.clip_grad is None


@pytest.mark.parametrize("override,field", [
    ("data.bogus=1", "data.bogus"),
    ("nosuch.x=1", "nosuch"),
    ("data.num_frames=abc", "data.num_frames"),
    ("data.num_frames=0", "data.num_frames"),
    ("data.backend=ffmpeg", "data.backend"),
    ("model.mask_ratio=1.5", "model.mask_ratio"),
    ("dist.zero_stage=4", "dist.zero_stage"),
    ("run.save_every=0", "run.save_every"),
    ("data.hflip=maybe", "data.hflip"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, [override])
    assert str(e.value).startswith(field)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, "does/not/exist.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PretrainConfig, None, ["run.max_steps"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(FinetuneConfig, None, ["head.mixup=0.8", "data.crop_scales=[1.0,0.5]", "init=runs/x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(FinetuneConfig, tmp_path / "config.yaml")
    assert again == cfg
    with pytest.raises(ConfigError, match="head.kind"):
        load_config(FinetuneConfig, None, ["head.kind=svm"])


@pytest.mark.parametrize("key", ["model.mask_ratio=0.5", "model.init=/x", "model.mask_type=random",
                                 "model.decoder_mask_ratio=0.5"])
def test_finetune_model_section_refuses_pretraining_keys(key):
    """Fine-tuning has its own model section: the pretraining masking / warm-start keys would be
    accepted and ignored, so they fail naming the field."""
    with pytest.raises(ConfigError, match=key.split("=")[0].split(".")[1]):
        load_config(FinetuneConfig, None, [key])
    cfg = load_config(FinetuneConfig, None, ["model.grad_checkpointing=true", "model.drop_path=0.1"])
    assert cfg.model.grad_checkpointing and cfg.model.name == "vit_small"


def test_finetune_grad_checkpointing_reaches_the_encoder():
    from finetune.classifier import build_model

    cfg = load_config(FinetuneConfig, None, ["model.name=vit_test", "data.num_frames=4", "data.img_size=32",
                                             "model.grad_checkpointing=true", "model.kwargs.patch_size=16"])
    model, _, how = build_model(cfg, 3)
    assert how == "scratch" and model.encoder.grad_checkpointing
    cfg = load_config(FinetuneConfig, None, ["model.name=cnn3d", "model.grad_checkpointing=true"])
    with pytest.raises(ConfigError, match="model.grad_checkpointing"):
        build_model(cfg, 3)


def test_mask_ratio_defaults_to_the_models_own():
    """Unset ``model.mask_ratio``: VideoMAE keeps 0.9 and MaskFeat its 0.4 (the config no longer
    shadows MaskFeat's default with VideoMAE's)."""
    from pretrain.main import build_model

    base = ["data.num_frames=4", "data.img_size=32"]
    mae = build_model(load_config(PretrainConfig, None, base + ["model.name=videomae_test", "model.kwargs.patch_size=16"]))
    assert mae.mask_ratio == 0.9
    mf = build_model(load_config(PretrainConfig, None, base + ["model.name=maskfeat_mvitv2_test"]))
    assert mf.mask_ratio == 0.4
    mf = build_model(load_config(PretrainConfig, None, base + ["model.name=maskfeat_mvitv2_test", "model.mask_ratio=0.6"]))
    assert mf.mask_ratio == 0.6
