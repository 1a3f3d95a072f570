"""The published-recipe presets (SSv2, UCF101 pretraining; K400, SSv2, UCF101 fine-tuning) load and
say what their comments say."""

from __future__ import annotations

import pytest

from finetune.config import FinetuneConfig
from pretrain.config import CONFIG_ROOT, PretrainConfig, load_config
from pretrain.train.schedule import scaled_lr

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
    # MCG-NJU/VideoMAE scripts/{ssv2,ucf101}/*/pretrain.sh: 2048 x 1.5e-4, 2048 x 1.5e-4, 192 x 3e-4
    want = {"vit_s_ssv2": 1.2e-3, "vit_b_ssv2": 1.2e-3, "vit_b_ucf101": 2.25e-4}[name]
    assert scaled_lr(cfg.optim.blr, cfg.optim.lr, _total_batch(cfg)) == pytest.approx(want)


# The published fine-tuning recipes, per preset, read from MCG-NJU/VideoMAE's scripts
# (scripts/<dataset>/videomae_vit_<size>_patch16_224_tubemasking_ratio_<r>_epoch_<e>/finetune.sh) and
# run_class_finetuning.py's defaults (AdamW (0.9, 0.999), wd 0.05, --layer_decay 0.75, --drop_path 0.1,
# --warmup_epochs 5, --aa rand-m7-n4-mstd0.5-inc1, --num_sample 2, --mixup 0.8, --cutmix 1.0,
# --smoothing 0.1, --reprob 0.25, --init_scale 0.001; lr, min_lr and warmup_lr scaled by total
# batch / 256, the batch counting videos).
#   columns: blr (--lr), epochs, videos/step (--batch_size x GPUs x --update_freq), layer decay,
#            drop path, head dropout (--fc_drop_rate), test clips x crops, min_lr (scaled), train videos
PUBLISHED = {
    # kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600: 32 GPUs x 12
    "vit_s_k400": dict(blr=5e-4, epochs=150, batch=384, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), min_lr=1.5e-6,
                       videos=240000),
    # kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600: 64 GPUs x 6
    "vit_b_k400": dict(blr=5e-4, epochs=75, batch=384, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), min_lr=1.5e-6,
                       videos=240000),
    # kinetics/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_1600: 64 GPUs x 2
    "vit_l_k400": dict(blr=2e-3, epochs=35, batch=128, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), min_lr=5e-7,
                       videos=240000),
    # ssv2/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_2400: 32 GPUs x 12, --layer_decay 0.7
    "vit_s_ssv2": dict(blr=1e-3, epochs=40, batch=384, ld=0.7, dp=0.1, hd=0.0, views=(2, 3), min_lr=1.5e-6,
                       videos=168913),
    # ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_2400: 64 GPUs x 6
    "vit_b_ssv2": dict(blr=5e-4, epochs=30, batch=384, ld=0.75, dp=0.1, hd=0.0, views=(2, 3), min_lr=1.5e-6,
                       videos=168913),
    # no ViT-L SSv2 script upstream: the preset takes ViT-B's values
    "vit_l_ssv2": dict(blr=5e-4, epochs=30, batch=384, ld=0.75, dp=0.1, hd=0.0, views=(2, 3), min_lr=1.5e-6,
                       videos=168913),
    # ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200: 8 GPUs x 16, --min_lr 1e-5,
    # --layer_decay 0.7, --drop_path 0.2, --fc_drop_rate 0.5, --epochs 100; UCF101 split 1 = 9537 videos
    "vit_b_ucf101": dict(blr=5e-4, epochs=100, batch=128, ld=0.7, dp=0.2, hd=0.5, views=(5, 3), min_lr=5e-6,
                         videos=9537),
}
STEPS = {  # 8 GPUs as the presets state: (steps/epoch, run steps, warmup steps), as in the comments
    "vit_s_k400": (625, 93750, 3125), "vit_b_k400": (625, 46875, 3125), "vit_l_k400": (1875, 65625, 9375),
    "vit_s_ssv2": (439, 17560, 2195), "vit_b_ssv2": (439, 13170, 2195), "vit_l_ssv2": (439, 13170, 2195),
    "vit_b_ucf101": (74, 7400, 370),
}


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
    videos = _total_batch(cfg)
    assert scaled_lr(cfg.optim.blr, cfg.optim.lr, videos, d.num_repeats) == pytest.approx(
        cfg.optim.blr * (videos / d.num_repeats) / 256)


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_presets_match_the_published_recipe(name):
    from pretrain.train.recipe import batch_warning, resolve_recipe

    pub = PUBLISHED[name]
    cfg = load_config(FinetuneConfig, CONFIG_ROOT / "finetune" / f"{name}.yaml", [f"data.num_videos={pub['videos']}"])
    d, o, r = cfg.data, cfg.optim, cfg.run
    assert (o.blr, r.epochs, o.warmup_epochs, r.published_batch) == (pub["blr"], pub["epochs"], 5, pub["batch"])
    assert (o.layer_decay, cfg.model.drop_path, cfg.head.dropout) == (pub["ld"], pub["dp"], pub["hd"])
    assert (d.test_num_clips, d.test_num_crops) == pub["views"] and d.num_frames == 16 and d.img_size == 224
    assert o.lr is None and o.min_lr == pub["min_lr"] and o.clip_grad is None and cfg.head.init_scale == 1e-3
    rec = resolve_recipe(d, o, max_steps=r.max_steps, micro_batch=d.batch_size, grad_accum=cfg.dist.grad_accum,
                         world_size=8, epochs=r.epochs, published_batch=r.published_batch)
    assert rec["videos_per_step"] == pub["batch"] and batch_warning(rec) is None   # 8 GPUs: as published
    assert (rec["steps_per_epoch"], rec["max_steps"], rec["warmup_steps"]) == STEPS[name]
    assert rec["base_lr"] == pytest.approx(pub["blr"] * pub["batch"] / 256)
    # the preset's comments state the same numbers
    text = (CONFIG_ROOT / "finetune" / f"{name}.yaml").read_text()
    assert f"{rec['max_steps']} steps" in text, f"{name}.yaml: comment should say {rec['max_steps']} steps"


def test_finetune_preset_on_fewer_gpus_warns_and_says_how_to_fix():
    from pretrain.train.recipe import batch_warning, resolve_recipe

    cfg = load_config(FinetuneConfig, "vit_b_k400", ["data.num_videos=240000"])
    rec = resolve_recipe(cfg.data, cfg.optim, max_steps=cfg.run.max_steps, micro_batch=cfg.data.batch_size,
                         grad_accum=cfg.dist.grad_accum, world_size=2, epochs=cfg.run.epochs,
                         published_batch=cfg.run.published_batch)
    assert rec["videos_per_step"] == 96 and "dist.grad_accum=32 restores it" in batch_warning(rec)
    assert (rec["steps_per_epoch"], rec["max_steps"]) == (2500, 187500)   # epochs stay epochs


@pytest.mark.parametrize("path", sorted(p for p in (CONFIG_ROOT / "pretrain").glob("*.yaml") if not p.name.startswith("_"))
                         + sorted(p for p in (CONFIG_ROOT / "finetune").glob("*.yaml") if not p.name.startswith("_")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads(path):
    load_config(PretrainConfig if path.parent.name == "pretrain" else FinetuneConfig, path)
