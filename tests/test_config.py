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
