"""Recipe arithmetic (pretrain/train/recipe.py): epochs <-> steps by videos per step, the LR rule, the
published-batch warning, the config fields, and a tiny pretraining run given warmup in epochs."""

from __future__ import annotations

import json

import pytest
from _train_helpers import tiny_overrides

from finetune.config import FinetuneConfig
from pretrain.config import ConfigError, DataConfig, OptimConfig, PretrainConfig, load_config
from pretrain.train.recipe import batch_warning, recipe_lines, resolve_recipe


def _rec(data=None, optim=None, *, micro=16, accum=8, world=8, max_steps=1000, epochs=0.0, published=0):
    return resolve_recipe(data or DataConfig(num_repeats=2, num_videos=240000),
                          optim or OptimConfig(blr=1e-3, warmup_epochs=5), max_steps=max_steps, micro_batch=micro,
                          grad_accum=accum, world_size=world, epochs=epochs, published_batch=published)


def test_k400_recipe_as_published():
    # VideoMAE ViT-B K400: 512 videos/step (1024 clips, 2 repeats), 75 epochs, 5 warmup epochs
    rec = _rec(epochs=75, published=512)
    assert (rec["clips_per_step"], rec["videos_per_step"], rec["steps_per_epoch"]) == (1024, 512, 468)
    assert (rec["max_steps"], rec["warmup_steps"]) == (35100, 2340)
    assert rec["base_lr"] == pytest.approx(2e-3) and rec["published_batch_matches"] is True
    text = "\n".join(recipe_lines(rec))
    assert "epochs 75 x 468 steps/epoch (240000 videos // 512 videos/step, from data.num_videos) = 35100 steps" in text
    assert "warmup 5 epochs = 2340 steps" in text
    assert "lr 0.002 = blr 0.001 x 512 videos (1024 clips / 2 repeats) / 256" in text
    assert batch_warning(rec) is None


def test_steps_given_in_steps_still_report_epochs():
    rec = _rec(optim=OptimConfig(warmup_steps=100), max_steps=936)
    assert (rec["max_steps"], rec["warmup_steps"], rec["epochs"]) == (936, 100, 2.0)
    assert rec["max_steps_from"] == "run.max_steps" and rec["warmup_from"] == "optim.warmup_steps"
    assert "936 steps (run.max_steps) = 2 epochs of 468 steps/epoch" in "\n".join(recipe_lines(rec))


def test_unknown_dataset_size_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.num_videos: run\.epochs and optim\.warmup_epochs"):
        _rec(data=DataConfig(num_repeats=2, shards=str(tmp_path)), epochs=75)
    with pytest.raises(ConfigError, match=r"^data\.num_videos: 100 videos are fewer than one step's 512 videos"):
        _rec(data=DataConfig(num_repeats=2, num_videos=100), epochs=1)
    rec = _rec(data=DataConfig(num_repeats=2), optim=OptimConfig(warmup_steps=7))   # no epochs asked: fine
    assert rec["steps_per_epoch"] is None and rec["max_steps"] == 1000
    assert "epochs unknown" in "\n".join(recipe_lines(rec))


def test_num_videos_overrides_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"num_samples": 2000}))
    d = DataConfig(shards=str(tmp_path), num_repeats=1)
    rec = _rec(data=d, micro=10, accum=1, world=1, epochs=3)
    assert (rec["num_videos"], rec["steps_per_epoch"], rec["max_steps"]) == (2000, 200, 600)
    d.num_videos = 1000
    assert _rec(data=d, micro=10, accum=1, world=1, epochs=3)["max_steps"] == 300


def test_published_batch_warning_names_the_fix():
    rec = _rec(world=1, published=512, epochs=1)             # 64 videos/step instead of 512
    w = batch_warning(rec)
    assert "effective batch 64 videos/step differs from the published 512" in w
    assert "dist.grad_accum=64 restores it" in w and rec["published_batch_matches"] is False
    assert rec["published_lr"] == pytest.approx(2e-3) and rec["base_lr"] == pytest.approx(2.5e-4)
    rec = _rec(micro=12, accum=1, world=1, published=512, epochs=1)
    assert "no integer dist.grad_accum restores it" in batch_warning(rec)


@pytest.mark.parametrize("override, field", [("run.epochs=-1", "run.epochs"),
                                             ("run.published_batch=-2", "run.published_batch"),
                                             ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
                                             ("data.num_videos=-5", "data.num_videos")])
def test_fields_are_checked(override, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        load_config(FinetuneConfig, None, [override])


def test_pretraining_warmup_in_epochs(tmp_path, capsys):
    from pretrain.data.synth import write_synth
    from pretrain.main import pretrain

    write_synth(tmp_path / "d", videos_per_class=1, frames=16, size=32, pretrain_videos=20, val_per_class=1,
                test_per_class=1, progress=False)
    run = tmp_path / "pt"
    # 20 unlabeled videos (manifest) at 2 clips/step: 10 steps/epoch; warmup 0.2 epochs = 2 steps
    cfg = load_config(PretrainConfig, None, tiny_overrides(tmp_path / "d", run, **{
        "optim.warmup_epochs": 0.2, "optim.lr": 1e-3, "run.max_steps": 3, "run.save_every": 3, "data.img_size": 32,
        "data.sampling_rate": 1, "model.name": "videomae_test"}))
    hist = pretrain(cfg)
    out = capsys.readouterr().out
    assert "3 steps (run.max_steps) = 0.3 epochs of 10 steps/epoch (20 videos // 2 videos/step" in out
    assert "warmup 0.2 epochs = 2 steps" in out
    rec = json.loads((run / "recipe.json").read_text())
    assert (rec["steps_per_epoch"], rec["warmup_steps"], rec["num_videos"]) == (10, 2, 20)
    lrs = [r["lr"] for r in hist if "lr" in r]
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])


def test_partial_sections_keep_the_finetune_defaults():
    # a partial optim/model section used to rebuild the pretraining defaults (blr 1.5e-4, betas
    # (0.9, 0.95), no layer decay, model videomae_small) instead of the fine-tuning ones
    full = FinetuneConfig()
    cfg = load_config(FinetuneConfig, None, ["optim.warmup_steps=5", "model.drop_path=0.1"])
    assert (cfg.optim.blr, cfg.optim.betas, cfg.optim.layer_decay) == (1e-3, (0.9, 0.999), 0.75)
    assert (full.optim.blr, full.optim.betas, full.optim.layer_decay) == (1e-3, (0.9, 0.999), 0.75)
    assert cfg.model.name == full.model.name == "vit_small" and cfg.model.drop_path == 0.1
    assert load_config(PretrainConfig, None, ["optim.warmup_steps=5"]).optim.blr == 1.5e-4
