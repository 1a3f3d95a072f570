"""Fine-tune a pretrained encoder, probe it frozen, or train a baseline, on labeled video shards.

    tubelet finetune --config configs/finetune/synth_vit.yaml --init runs/pretrain \\
        data.shards=data/synth/train data.val_shards=data/synth/test run.dir=runs/ft_vit
    tubelet finetune --config configs/finetune/synth_baseline.yaml model.name=c3d run.dir=runs/c3d ...
    accelerate launch --config_file launch/accelerate/cpu-2proc.yaml -m finetune --config ... key=value

``--init`` takes a pretraining run directory, a checkpoint, an exported encoder directory or an
imported one (Hugging Face / original VideoMAE); loading asserts the exact key set and says what it
loaded. Without ``--init`` the encoder starts from scratch. ``model.name`` may also name a baseline
(``finetune.baselines.list_baselines()``). Same runtime as pretraining: DeepSpeed or plain torch,
checkpoints, exact resume, metrics, progress bar. Length and warmup may be given in epochs
(``run.epochs``, ``optim.warmup_epochs`` with ``data.num_videos`` or the shards' manifest; see
``pretrain.train.recipe``): the arithmetic is printed at the start and written to ``recipe.json``, with a
loud warning when the videos per step differ from ``run.published_batch``. At the end the model is
evaluated on ``data.val_shards`` with K clips × C crops per video (per-view and per-video top-1 /
top-5); ``eval.json``, ``scores.npy`` + ``scores_keys.json``, ``confusion.png`` and ``results.json``
(for ``tubelet compare``) land in ``run.dir``.

Config sections: ``data``, ``model`` (encoder or baseline, drop path, activation checkpointing),
``optim`` (VideoMAE fine-tuning defaults, layer decay), ``dist``, ``run`` (also ``epochs``,
``published_batch``), ``head`` (kind, init, label smoothing, mixup / cutmix, random erasing), ``eval``
and ``init``. ``tubelet config finetune [--config NAME]`` prints every key with its value and
documentation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from finetune.classifier import build_model, classifier_forward, is_baseline
from finetune.config import FinetuneConfig
from finetune.interop.native import CLASSIFIER_FORMAT
from pretrain.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML preset (configs/finetune/*.yaml or a path)")
    parser.add_argument("--init", default=None, metavar="PATH",
                        help="pretraining run dir, checkpoint or encoder dir to start from (same as init=PATH)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


# ------------------------------------------------------------------------------------------------
# model


def _read_classes(shards: str) -> list[str] | None:
    from pretrain.data.shard_writer import read_classes

    p = Path(shards)
    return read_classes(p) if p.is_dir() else None


def resolve_num_classes(cfg: FinetuneConfig) -> tuple[int, list[str] | None]:
    classes = _read_classes(cfg.data.shards) if cfg.data.shards else None
    if cfg.head.num_classes:
        return cfg.head.num_classes, classes
    if classes:
        return len(classes), classes
    raise ConfigError("head.num_classes: not set and no classes.json next to data.shards")



# ------------------------------------------------------------------------------------------------
# training step


def make_step_fn(cfg: FinetuneConfig, num_classes: int, device):
    from finetune.augment import random_erase_
    from finetune.mixup import VideoMixup
    from pretrain.data.transforms import normalize_on_device

    mixer = None
    if cfg.head.mixup > 0 or cfg.head.cutmix > 0:
        mixer = VideoMixup(mixup_alpha=cfg.head.mixup, cutmix_alpha=cfg.head.cutmix, prob=cfg.head.mix_prob,
                           switch_prob=cfg.head.mix_switch_prob, label_smoothing=cfg.head.label_smoothing,
                           num_classes=num_classes)

    def step_fn(model, batch):
        video = normalize_on_device(batch["video"].to(device, non_blocking=True), cfg.data.mean, cfg.data.std)
        y = batch["label"].to(device)
        if bool((y < 0).any()):
            raise ValueError("unlabeled sample in fine-tuning data (label -1): point data.shards at labeled shards")
        if cfg.head.random_erasing > 0:
            random_erase_(video, cfg.head.random_erasing)
        if mixer is not None and video.shape[0] % 2 == 0:
            video, target = mixer(video, y)
            logits = classifier_forward(model, batch, video)
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = classifier_forward(model, batch, video)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.head.label_smoothing)
        acc = (logits.argmax(-1) == y).float().mean().detach()
        return loss, {"acc": acc}

    return step_fn


# ------------------------------------------------------------------------------------------------
# entry


def _labels_per_class(shards: str, num_classes: int) -> float | None:
    from pretrain.data.shard_writer import read_manifest

    p = Path(shards)
    m = read_manifest(p) if p.is_dir() else None
    if not m or not num_classes:
        return None
    per = m["num_samples"] / num_classes
    return int(per) if float(per).is_integer() else round(per, 1)


def finetune(cfg: FinetuneConfig) -> dict:
    """Train ``cfg`` (resuming when possible), evaluate on ``data.val_shards``; returns results."""
    from functools import partial

    from finetune.baselines import BASELINE_INFO, count_params, gflops_per_clip
    from finetune.evaluate import evaluate_model, report_lines, save_confusion_png
    from pretrain.data.loader import build_loader, resolve_shards
    from pretrain.train.optim import param_groups
    from pretrain.train.recipe import apply_recipe
    from pretrain.train.runtime import init_runtime
    from pretrain.train.trainer import Trainer, export_final, seed_everything

    if not cfg.data.shards:
        raise ConfigError("data.shards: set the labeled training shards")
    resolve_shards(cfg.data, "train")              # fail before anything is written
    if cfg.data.val_shards:
        resolve_shards(cfg.data, "eval")
    num_classes, classes = resolve_num_classes(cfg)
    baseline = is_baseline(cfg.model.name)
    if baseline and BASELINE_INFO[cfg.model.name].get("needs_flow"):
        cfg.data.flow = True
    rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)
    try:
        cfg.dist = rt.dist
        seed_everything(cfg.run.seed)
        model, spec, how = build_model(cfg, num_classes)
        params = count_params(model)
        try:
            gflops = gflops_per_clip(model, cfg.data.num_frames, cfg.data.img_size)
        except Exception:  # FLOP counting is informative only
            gflops = None
        layer_decay = cfg.optim.layer_decay if hasattr(model, "group_matcher") else 1.0
        if rt.is_main:
            print(f"[tubelet] {cfg.model.name} ({'baseline' if baseline else cfg.head.kind}), init: {how}; "
                  f"{params / 1e6:.2f} M params, {num_classes} classes"
                  + (f", layer decay {layer_decay}" if layer_decay < 1 else ""), flush=True)
        # epochs -> steps (run.epochs, optim.warmup_epochs), printed and written to recipe.json
        recipe = apply_recipe(cfg, rt, epochs=cfg.run.epochs, published_batch=cfg.run.published_batch)
        rt.setup(model, param_groups(model, cfg.optim.weight_decay, layer_decay))

        def make_loader(state):
            return build_loader(cfg.data, "train", rank=rt.rank, world_size=rt.world_size, seed=cfg.run.seed,
                                state=state)

        eval_dtype = rt.amp_dtype      # evaluate in the training precision (DeepSpeed bf16/fp16 weights)
        callbacks = []
        if cfg.eval.every and cfg.data.val_shards:
            def periodic_eval(trainer, batch):
                if trainer.step % cfg.eval.every or trainer.is_last:
                    return
                s = evaluate_model(rt.module, cfg.data, cfg.data.val_shards, num_classes, num_clips=1, num_crops=1,
                                   rank=rt.rank, world_size=rt.world_size, device=rt.device, progress=False,
                                   autocast_dtype=eval_dtype,
                                   max_videos=cfg.eval.max_videos, forward=classifier_forward)
                if rt.is_main:
                    with open(Path(cfg.run.dir) / "val.jsonl", "a") as f:
                        f.write(json.dumps({"step": trainer.step, "top1": s["top1"], "num_videos": s["num_videos"]}) + "\n")
                    print(f"[tubelet] step {trainer.step}: val top-1 {100 * s['top1']:.1f}% "
                          f"({s['num_videos']} videos, 1 view)", flush=True)
            callbacks.append(periodic_eval)

        export = {"format": CLASSIFIER_FORMAT, "spec": spec, "num_classes": num_classes, "classes": classes,
                  "model": cfg.model.name, "init": how}
        trainer = Trainer(rt, make_step_fn(cfg, num_classes, rt.device), make_loader, optim=cfg.optim, run=cfg.run,
                          config=cfg, on_finish=partial(export_final, meta=export), callbacks=callbacks,
                          desc=f"finetune {cfg.model.name}", clips_per_video=cfg.data.num_repeats)
        history = trainer.fit()
        enc = getattr(model, "encoder", model)
        mode = (getattr(enc, "model_config", None) or {}).get("input_mode", "rgb")
        label = cfg.model.name if mode == "rgb" else f"{cfg.model.name} ({mode})"   # kept apart in compare
        results = {"name": Path(cfg.run.dir).name, "model": label,
                   "init": "scratch" if how == "scratch" else "pretrained", "init_from": cfg.init or None,
                   "head": "baseline" if baseline else cfg.head.kind, "params": params, "gflops_per_clip": gflops,
                   "labels_per_class": _labels_per_class(cfg.data.shards, num_classes), "seed": cfg.run.seed,
                   "steps": trainer.step, "num_classes": num_classes,
                   "clips_per_step": recipe["clips_per_step"], "videos_per_step": recipe["videos_per_step"],
                   "base_lr": trainer.base_lr, "recipe": recipe}
        cps = [r["clips_per_s"] for r in history if r.get("clips_per_s")]
        results["train_clips_per_s"] = sum(cps) / len(cps) if cps else None
        losses = [r["loss"] for r in history if r.get("loss") is not None]
        results["final_train_loss"] = losses[-1] if losses else None
        if cfg.data.val_shards:
            summary = evaluate_model(rt.module, cfg.data, cfg.data.val_shards, num_classes,
                                     num_clips=cfg.data.test_num_clips, num_crops=cfg.data.test_num_crops,
                                     rank=rt.rank, world_size=rt.world_size, device=rt.device, class_names=classes,
                                     autocast_dtype=eval_dtype,
                                     progress=cfg.run.progress, forward=classifier_forward,
                                     scores_dir=cfg.run.dir)
            results.update(top1=summary["top1"], top5=summary["top5"], eval_videos=summary["num_videos"],
                           eval_views=cfg.data.test_num_clips * cfg.data.test_num_crops,
                           mean_class_accuracy=summary["mean_class_accuracy"], view_top1=summary["view_top1"],
                           view_top5=summary["view_top5"], eval_protocol=summary["protocol"])
            if rt.is_main:
                run_dir = Path(cfg.run.dir)
                summary["shards"] = cfg.data.val_shards
                (run_dir / "eval.json").write_text(json.dumps(summary, indent=1))
                save_confusion_png(summary, run_dir / "confusion.png", title=cfg.model.name)
                for line in report_lines(summary):
                    print(f"[tubelet] {line}", flush=True)
                print(f"[tubelet] {cfg.model.name} ({results['init']}): top-1 {100 * summary['top1']:.2f}%  "
                      f"top-5 {100 * summary['top5']:.2f}%  on {summary['num_videos']} videos "
                      f"x {results['eval_views']} views", flush=True)
        if rt.is_main:
            (Path(cfg.run.dir) / "results.json").write_text(json.dumps(results, indent=1))
        return results
    finally:
        rt.close()


def run(args: argparse.Namespace) -> int:
    """Errors end as one line through :func:`pretrain.cli_util.run_command` (exit 1 for a failed run)."""
    overrides = list(args.overrides)
    if args.init:
        overrides.append(f"init={args.init}")
    finetune(load_config(FinetuneConfig, args.config, overrides))
    return 0
