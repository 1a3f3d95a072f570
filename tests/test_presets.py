"""The published-recipe presets (SSv2, UCF101 pretraining; K400, SSv2, UCF101 fine-tuning) load and
say what their comments say."""

from __future__ import annotations

import pytest

from finetune.config import FinetuneConfig
from pretrain.config import CONFIG_ROOT, PretrainConfig, load_config
from pretrain.schedule import scaled_lr

PRETRAIN = ["vit_s_ssv2", "vit_b_ssv2", "vit_b_ucf101"]
FINETUNE = ["vit_s_k400", "vit_b_k400", "vit_l_k400", "vit_s_ssv2", "vit_b_ssv2", "vit_l_ssv2", "vit_b_ucf101"]


def _total_batch(cfg, gpus: int = 8) -> int:
    return cfg.data.batch_size * cfg.dist.grad_accum * gpus


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretrain_presets_load(name):
    cfg = load_config(PretrainConfig, CONFIG_ROOT / "pretrain" / f"{name}.yaml")
    assert cfg.model.name.startswith("videomae_") and cfg.model.mask_type == "tube"
    assert cfg.data.num_frames == 16 and cfg.data.img_size == 224 and not cfg.data.hflip
    if "ssv2" in name:
        assert cfg.data.sampling_rate == 2 and cfg.model.mask_ratio == 0.9
    else:
        assert cfg.data.sampling_rate == 4 and cfg.model.mask_ratio == 0.75
    want = {"vit_s_ssv2": 6e-4, "vit_b_ssv2": 1.2e-3, "vit_b_ucf101": 7.5e-4}[name]
    assert scaled_lr(cfg.optim.blr, cfg.optim.lr, _total_batch(cfg)) == pytest.approx(want)


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_presets_load(name):
    cfg = load_config(FinetuneConfig, CONFIG_ROOT / "finetune" / f"{name}.yaml")
    size = name.split("_")[1]
    assert cfg.model.name == {"s": "vit_small", "b": "vit_base", "l": "vit_large"}[size]
    d, h = cfg.data, cfg.head
    assert d.randaug == "rand-m7-n4-mstd0.5-inc1" and d.num_repeats == 2 and d.train_crop == "random_resized"
    assert (h.mixup, h.cutmix, h.label_smoothing, h.random_erasing) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.weight_decay == 0.05
    if "ssv2" in name:
        assert d.sampling == "segment" and not d.hflip and (d.test_num_clips, d.test_num_crops) == (2, 3)
    else:
        assert d.sampling == "stride" and d.hflip and (d.test_num_clips, d.test_num_crops) == (5, 3)
    if name == "vit_b_ucf101":
        assert (cfg.optim.layer_decay, cfg.model.drop_path, h.dropout) == (0.7, 0.2, 0.5)
        assert cfg.optim.blr == 5e-4 and cfg.run.max_steps == 14902
        assert _total_batch(cfg) // d.num_repeats == 64
    else:
        assert (cfg.optim.layer_decay, cfg.model.drop_path, h.dropout) == (0.75, 0.1, 0.0)
        assert _total_batch(cfg) // d.num_repeats == 512  # videos per step, as published
    videos = _total_batch(cfg)
    assert scaled_lr(cfg.optim.blr, cfg.optim.lr, videos, d.num_repeats) == pytest.approx(
        cfg.optim.blr * (videos / d.num_repeats) / 256)


@pytest.mark.parametrize("path", sorted(p for p in (CONFIG_ROOT / "pretrain").glob("*.yaml") if not p.name.startswith("_"))
                         + sorted(p for p in (CONFIG_ROOT / "finetune").glob("*.yaml") if not p.name.startswith("_")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads(path):
    load_config(PretrainConfig if path.parent.name == "pretrain" else FinetuneConfig, path)
