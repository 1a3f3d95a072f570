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


# The published fine-tuning recipes, per preset, as this project understands them. Sources are
# MCG-NJU/VideoMAE's per-model scripts (run_class_finetuning.py arguments) and the paper's appendix
# tables (Tong et al., NeurIPS 2022, "End-to-end fine-tuning setting"). The script paths and values
# below were written from memory: no network was available to check them; "?" in a comment marks a
# value that is uncertain, not verified against the file. Shared by all rows (_videomae_ft.yaml,
# run_class_finetuning.py defaults): AdamW (0.9, 0.999), wd 0.05, RandAugment rand-m7-n4-mstd0.5-inc1,
# --num_sample 2, mixup 0.8, cutmix 1.0, smoothing 0.1, --reprob 0.25, warmup 5 epochs.
#   columns: blr (--lr), epochs, videos/step (--batch_size x GPUs x --update_freq), layer decay,
#            drop path, head dropout, test clips x crops, train videos (for the step counts)
PUBLISHED = {
    # scripts/kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh (path?)
    #   blr?, epochs? (150 from the paper's table, from memory), batch?
    "vit_s_k400": dict(blr=1e-3, epochs=150, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), videos=240000),
    # scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh (path?)
    #   75 epochs for the 1600-epoch checkpoint (81.5 %); FINETUNE.md's 800-epoch example names
    #   "eval_lr_1e-3_epoch_100" (lr 1e-3, 100 epochs); 64 GPUs x 8 videos = 512
    "vit_b_k400": dict(blr=1e-3, epochs=75, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), videos=240000),
    # scripts/kinetics/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh (path?)
    #   blr?, 50 epochs?, layer decay 0.8? and drop path 0.2? upstream -- the preset keeps 0.75 / 0.1
    "vit_l_k400": dict(blr=1e-3, epochs=50, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(5, 3), videos=240000),
    # scripts/ssv2/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_2400/finetune.sh (path?)
    #   blr?, epochs?, batch?
    "vit_s_ssv2": dict(blr=5e-4, epochs=40, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(2, 3), videos=168913),
    # scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_2400/finetune.sh (path?)
    #   blr 5e-4 ("eval_lr_5e-4_epoch_40" in FINETUNE.md, from memory), 40 epochs (some scripts: 30/50?)
    "vit_b_ssv2": dict(blr=5e-4, epochs=40, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(2, 3), videos=168913),
    # scripts/ssv2/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_2400/finetune.sh (path?)
    #   blr?, epochs?, layer decay 0.8? / drop path 0.2? upstream
    "vit_l_ssv2": dict(blr=5e-4, epochs=40, batch=512, ld=0.75, dp=0.1, hd=0.0, views=(2, 3), videos=168913),
    # scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/finetune.sh (path?)
    #   blr 5e-4?, 100 epochs, layer decay 0.7, drop path 0.2, head dropout 0.5 (--head_drop_rate?),
    #   8 GPUs x 8 videos = 64? ; UCF101 split 1 = 9537 train videos
    "vit_b_ucf101": dict(blr=5e-4, epochs=100, batch=64, ld=0.7, dp=0.2, hd=0.5, views=(5, 3), videos=9537),
}
STEPS = {  # 8 GPUs as the presets state: (steps/epoch, run steps, warmup steps), as in the comments
    "vit_s_k400": (468, 70200, 2340), "vit_b_k400": (468, 35100, 2340), "vit_l_k400": (468, 23400, 2340),
    "vit_s_ssv2": (329, 13160, 1645), "vit_b_ssv2": (329, 13160, 1645), "vit_l_ssv2": (329, 13160, 1645),
    "vit_b_ucf101": (149, 14900, 745),
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
    from pretrain.recipe import batch_warning, resolve_recipe

    pub = PUBLISHED[name]
    cfg = load_config(FinetuneConfig, CONFIG_ROOT / "finetune" / f"{name}.yaml", [f"data.num_videos={pub['videos']}"])
    d, o, r = cfg.data, cfg.optim, cfg.run
    assert (o.blr, r.epochs, o.warmup_epochs, r.published_batch) == (pub["blr"], pub["epochs"], 5, pub["batch"])
    assert (o.layer_decay, cfg.model.drop_path, cfg.head.dropout) == (pub["ld"], pub["dp"], pub["hd"])
    assert (d.test_num_clips, d.test_num_crops) == pub["views"] and d.num_frames == 16 and d.img_size == 224
    assert o.lr is None and o.min_lr == 1e-6 and o.clip_grad is None and cfg.head.init_scale == 1e-3
    rec = resolve_recipe(d, o, max_steps=r.max_steps, micro_batch=d.batch_size, grad_accum=cfg.dist.grad_accum,
                         world_size=8, epochs=r.epochs, published_batch=r.published_batch)
    assert rec["videos_per_step"] == pub["batch"] and batch_warning(rec) is None   # 8 GPUs: as published
    assert (rec["steps_per_epoch"], rec["max_steps"], rec["warmup_steps"]) == STEPS[name]
    assert rec["base_lr"] == pytest.approx(pub["blr"] * pub["batch"] / 256)
    # the preset's comments state the same numbers
    text = (CONFIG_ROOT / "finetune" / f"{name}.yaml").read_text()
    assert f"{rec['max_steps']} steps" in text, f"{name}.yaml: comment should say {rec['max_steps']} steps"


def test_finetune_preset_on_fewer_gpus_warns_and_says_how_to_fix():
    from pretrain.recipe import batch_warning, resolve_recipe

    cfg = load_config(FinetuneConfig, "vit_b_k400", ["data.num_videos=240000"])
    rec = resolve_recipe(cfg.data, cfg.optim, max_steps=cfg.run.max_steps, micro_batch=cfg.data.batch_size,
                         grad_accum=cfg.dist.grad_accum, world_size=2, epochs=cfg.run.epochs,
                         published_batch=cfg.run.published_batch)
    assert rec["videos_per_step"] == 128 and "dist.grad_accum=32 restores it" in batch_warning(rec)
    assert (rec["steps_per_epoch"], rec["max_steps"]) == (1875, 140625)   # epochs stay epochs


@pytest.mark.parametrize("path", sorted(p for p in (CONFIG_ROOT / "pretrain").glob("*.yaml") if not p.name.startswith("_"))
                         + sorted(p for p in (CONFIG_ROOT / "finetune").glob("*.yaml") if not p.name.startswith("_")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads(path):
    load_config(PretrainConfig if path.parent.name == "pretrain" else FinetuneConfig, path)
