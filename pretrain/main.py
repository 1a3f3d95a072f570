"""Pretrain a masked autoencoder (VideoMAE, MaskFeat-MViTv2) on video shards.

    tubelet pretrain --config configs/pretrain/synth_tiny.yaml data.shards=data/synth/pretrain run.dir=runs/tiny
    python -m pretrain --config configs/pretrain/vit_b_k400.yaml data.shards=/data/k400 run.dir=runs/vit_b
    accelerate launch --config_file launch/accelerate/cpu-2proc.yaml -m pretrain \\
        --config configs/pretrain/synth_tiny.yaml data.shards=data/synth/pretrain run.dir=runs/tiny2

Overrides are dotted ``key=value`` pairs (``run.max_steps=200 dist.grad_accum=2``). An existing
run directory is resumed from its newest complete checkpoint (``run.resume=true``). Writes
``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``recon_step*.png``, ``loss.png``
and ``final/{model.safetensors,config.json}`` into ``run.dir``.

Config sections: ``data`` (shards, clip sampling, augmentation, cache), ``model`` (pretrainer,
masking, warm start), ``optim`` (AdamW, LR rule, schedule), ``dist`` (DeepSpeed / DDP, precision,
accumulation), ``run`` (length, checkpoints, logging, probes). ``tubelet config pretrain [--config
NAME]`` prints every key with its value and documentation.
"""

from __future__ import annotations

import argparse

import torch

from pretrain.config import ConfigError, PretrainConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML preset (configs/pretrain/*.yaml or a path)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def model_kwargs(cfg: PretrainConfig) -> dict:
    """Keyword arguments for ``create_model(cfg.model.name, ...)`` (clip size from ``cfg.data``)."""
    ratio = {} if cfg.model.mask_ratio is None else {"mask_ratio": cfg.model.mask_ratio}  # else the model's own
    return {"num_frames": cfg.data.num_frames, "img_size": cfg.data.img_size,
            "mask_type": cfg.model.mask_type, **ratio,
            "decoder_mask_ratio": cfg.model.decoder_mask_ratio, "drop_path_rate": cfg.model.drop_path,
            "grad_checkpointing": cfg.model.grad_checkpointing, **cfg.model.kwargs}


def build_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The registered pretrainer; bad names or keywords become a ConfigError naming the field."""
    from pretrain.models import create_model, is_model, list_models

    if not is_model(cfg.model.name):
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r} (known: {', '.join(list_models('*mae*'))}, "
                          f"{', '.join(list_models('maskfeat*'))})")
    try:
        return create_model(cfg.model.name, **model_kwargs(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.kwargs / model.*: {cfg.model.name}: {e}") from e


def load_init(model: torch.nn.Module, path: str) -> int:
    """Load ``model.safetensors`` found at ``path`` (file, dir, run dir) strictly; returns #tensors."""
    from pathlib import Path

    from safetensors.torch import load_file

    p = Path(path)
    for cand in (p, p / "model.safetensors", p / "final" / "model.safetensors"):
        if cand.is_file() and cand.suffix == ".safetensors":
            break
    else:
        raise ConfigError(f"model.init: no model.safetensors at {path} (give a `tubelet import` output, a run "
                          f"directory or its final/)")
    from pretrain.models.state_dict import load_exact

    sd = load_file(str(cand))
    load_exact(model, sd, f"model.init: {cand}", error=ConfigError)
    return len(sd)


def make_step_fn(cfg: PretrainConfig, device: torch.device):
    """``step_fn(model, batch) -> (loss, {})``: uint8 clips to normalised floats on the device, MAE loss."""
    from pretrain.data.transforms import normalize_on_device

    mean, std = cfg.data.mean, cfg.data.std

    def step_fn(model, batch):
        video = normalize_on_device(batch["video"].to(device, non_blocking=True), mean, std)
        loss, _ = model(video)
        return loss, {}

    return step_fn


def make_recon_callback(cfg: PretrainConfig, clips: int = 2, frames: int = 8):
    """Callback writing ``recon_step{N}.png`` every ``run.vis_every`` steps and at the last step.

    Runs on every rank (ZeRO-3 needs all ranks in a forward); masks come from a fixed generator,
    so the pictures of two runs are comparable, and the trainer restores the RNG afterwards.
    """
    from pretrain.data.transforms import normalize_on_device
    from pretrain.visualize import save_recon_grid

    every = cfg.run.vis_every

    def callback(trainer, batch):
        if not (trainer.is_last or (every and trainer.step % every == 0)):
            return
        rt = trainer.runtime
        module = rt.module
        if not hasattr(module, "reconstruct") or not getattr(module, "can_reconstruct", True):
            return  # e.g. MaskFeat with HOG targets: nothing to draw as pixels
        video = normalize_on_device(batch["video"][:clips].to(rt.device), cfg.data.mean, cfg.data.std)
        gen = torch.Generator(device=rt.device).manual_seed(cfg.run.seed)
        was_training = module.training
        module.eval()
        with torch.no_grad(), rt.autocast():
            out = module.reconstruct(video, generator=gen)
        module.train(was_training)
        if rt.is_main:
            save_recon_grid(out, cfg.data.mean, cfg.data.std, trainer.run_dir / f"recon_step{trainer.step}.png",
                            frames=frames, clips=clips, title=f"{cfg.model.name} step {trainer.step}")

    return callback


def _probe_classes(cfg: PretrainConfig) -> int:
    from pathlib import Path

    from pretrain.data.shard_writer import read_classes

    p = Path(cfg.run.probe_shards)
    classes = read_classes(p) if p.is_dir() else None
    if not classes:
        raise ConfigError(f"run.probe_shards: no classes.json in {cfg.run.probe_shards} (labeled shards from "
                          f"`tubelet shard` or `tubelet synth` have one)")
    return len(classes)


def probe_record(cfg: PretrainConfig, rt, step: int, num_classes: int) -> dict:
    """Run ``run.probe_kinds`` on the encoder now (all ranks); the metric record ``{"step", "probe_*"}``."""
    from pretrain.probe import probe_encoder

    res = probe_encoder(rt.module.encoder, cfg.data, cfg.run.probe_kinds, num_classes, shards=cfg.run.probe_shards,
                        score_share=cfg.run.probe_score_share, rank=rt.rank, world_size=rt.world_size,
                        device=rt.device, seed=cfg.run.seed, steps=cfg.run.probe_steps, forward_context=rt.autocast)
    rec = {"step": step, **{f"probe_{k}_top1": r["top1"] for k, r in res.items()}}
    first = next(iter(res.values()))
    rec.update(probe_n_fit=first["n_fit"], probe_n_score=first["n_score"])
    return rec


def make_probe_callback(cfg: PretrainConfig, num_classes: int):
    """Callback probing the encoder every ``run.probe_every`` steps and at the last step: appends a
    record to the history (so checkpoints and ``metrics.jsonl`` keep it), logs it to TensorBoard and
    redraws ``probe.png``. Runs on every rank (features are gathered exactly once across ranks)."""
    from pretrain.visualize import plot_probe_curve

    every = cfg.run.probe_every

    def callback(trainer, batch):
        if not (trainer.is_last or trainer.step % every == 0):
            return
        rt = trainer.runtime
        rec = probe_record(cfg, rt, trainer.step, num_classes)
        trainer.history.append(rec)
        if rt.is_main:
            import json

            with open(trainer.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if trainer.tracker is not None:
                trainer.tracker.log({f"probe/{k[6:]}": v for k, v in rec.items() if k.endswith("_top1")},
                                    step=trainer.step)
            plot_probe_curve(trainer.history, trainer.run_dir / "probe.png", title=f"{cfg.model.name} probes")
            print("[tubelet] step {}: probe top-1 ".format(trainer.step) + ", ".join(
                f"{k[6:-5]} {100 * v:.1f}%" for k, v in rec.items() if k.endswith("_top1")), flush=True)

    return callback


def pretrain(cfg: PretrainConfig) -> list[dict]:
    """Train ``cfg`` to ``run.max_steps`` (resuming when possible); returns the metric records."""
    from functools import partial

    from pretrain.data.loader import build_loader, resolve_shards
    from pretrain.train.optim import param_groups
    from pretrain.train.runtime import init_runtime
    from pretrain.train.trainer import Trainer, export_final, seed_everything

    rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)
    try:
        cfg.dist = rt.dist  # what the launcher decided is what config.yaml records
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        model = build_model(cfg)
        if cfg.model.init:
            n = load_init(model, cfg.model.init)
            if rt.is_main:
                print(f"[tubelet] warm start: {n} tensors from {cfg.model.init}", flush=True)
        resolve_shards(cfg.data, "train")          # a missing data.shards fails before anything is written
        from pretrain.train.recipe import apply_recipe

        # epochs -> steps (optim.warmup_epochs; run.epochs / run.published_batch where RunConfig has them)
        apply_recipe(cfg, rt, epochs=getattr(cfg.run, "epochs", 0.0), published_batch=getattr(cfg.run, "published_batch", 0))
        rt.setup(model, param_groups(model, cfg.optim.weight_decay))

        def make_loader(state):
            try:
                return build_loader(cfg.data, "train", rank=rt.rank, world_size=rt.world_size,
                                    seed=cfg.run.seed, state=state)
            except ConfigError:
                raise
            except ValueError as e:  # a loader state from different data / worker count
                raise ConfigError(f"data: cannot resume the data position: {e}") from e

        callbacks = [make_recon_callback(cfg)]
        probe0 = None
        if cfg.run.probe_every:
            from pretrain.train.checkpoint import find_latest

            if cfg.dist.deepspeed and cfg.dist.zero_stage == 3:
                raise ConfigError("run.probe_every: probes are not supported under ZeRO-3 (ranks see different "
                                  "numbers of probe videos); use zero_stage <= 2 or probe the exported encoder "
                                  "with `tubelet evaluate --probe`")
            num_classes = _probe_classes(cfg)
            callbacks.append(make_probe_callback(cfg, num_classes))
            fresh = rt.broadcast_object(find_latest(cfg.run.dir) is None if rt.is_main else None)
            if fresh:
                probe0 = probe_record(cfg, rt, 0, num_classes)       # the initial (random or warm) encoder
        trainer = Trainer(rt, make_step_fn(cfg, rt.device), make_loader, optim=cfg.optim, run=cfg.run, config=cfg,
                          on_finish=partial(export_final, meta={"model": cfg.model.name,
                                                                "model_kwargs": model_kwargs(cfg)}),
                          callbacks=callbacks, desc="pretrain", clips_per_video=cfg.data.num_repeats)
        if probe0 is not None:
            trainer.history.append(probe0)                 # written to metrics.jsonl when the run starts
            if rt.is_main:
                print("[tubelet] step 0 (initial weights): probe top-1 " + ", ".join(
                    f"{k[6:-5]} {100 * v:.1f}%" for k, v in probe0.items() if k.endswith("_top1")), flush=True)
        return trainer.fit()
    finally:
        rt.close()


def run(args: argparse.Namespace) -> int:
    """A failed run (non-finite stop, a refused checkpoint, ...) is one line and exit 1, written by
    :func:`pretrain.cli_util.run_command` like every other command's errors."""
    pretrain(load_config(PretrainConfig, args.config, args.overrides))
    return 0
