"""The recipe arithmetic of a run: effective batch in clips and videos, the LR rule, epochs <-> steps.

Published recipes (VideoMAE ``run_class_finetuning.py`` / ``run_mae_pretraining.py``) state their
length and warmup in *epochs* and their batch in *videos* per optimizer step; the trainer counts
optimizer steps and clips. :func:`resolve_recipe` turns one into the other, the entry points
(``pretrain.main.pretrain``, ``finetune.main.finetune``) put the resulting ``max_steps`` /
``warmup_steps`` into the config before the trainer starts, print :func:`recipe_lines` and write
``recipe.json`` into the run directory::

    clips_per_step  = data.batch_size x dist.grad_accum x world size
    videos_per_step = clips_per_step / data.num_repeats          (repeated sampling: one video, R clips)
    steps_per_epoch = data.num_videos // videos_per_step         (VideoMAE: len(dataset) // total_batch)
    max_steps       = int(run.epochs x steps_per_epoch)          (when run.epochs > 0)
    warmup_steps    = int(optim.warmup_epochs x steps_per_epoch) (when optim.warmup_epochs > 0)
    lr              = optim.blr x videos_per_step / 256          (unless optim.lr is set)

``data.num_videos = 0`` reads ``num_samples`` from ``manifest.json`` of ``data.shards``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

from pretrain.config import ConfigError
from pretrain.train.schedule import lr_rule, scaled_lr


def manifest_videos(shards: str) -> Optional[int]:
    """``num_samples`` of ``manifest.json`` in the shard directory ``shards`` (None: no manifest)."""
    if not shards:
        return None
    p = Path(shards)
    f = p / "manifest.json" if p.is_dir() else None
    if f is None or not f.is_file():
        return None
    try:
        n = json.loads(f.read_text()).get("num_samples")
    except (OSError, ValueError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


def _g(x: float) -> str:
    return f"{x:g}"


def resolve_recipe(data, optim, *, max_steps: int, micro_batch: int, grad_accum: int, world_size: int,
                   epochs: float = 0.0, published_batch: int = 0) -> dict:
    """The run's recipe record (see the module docstring); raises ConfigError naming the field when
    epochs are asked for and the training-set size is unknown or smaller than one step."""
    clips = micro_batch * grad_accum * world_size
    repeats = int(data.num_repeats)
    videos = clips / repeats
    base_lr = scaled_lr(optim.blr, optim.lr, clips, repeats)
    rec: dict = {
        "clips_per_step": clips, "videos_per_step": videos, "num_repeats": repeats,
        "micro_batch": micro_batch, "grad_accum": grad_accum, "world_size": world_size,
        "lr_rule": lr_rule(optim.blr, optim.lr, clips, repeats), "blr": optim.blr, "lr_absolute": optim.lr,
        "base_lr": base_lr, "min_lr": min(optim.min_lr, base_lr), "min_lr_note": "absolute, not batch-scaled",
    }
    num_videos, src = int(data.num_videos), "data.num_videos"
    if not num_videos:
        num_videos, src = manifest_videos(data.shards) or 0, f"manifest.json of {data.shards}"
    need = [n for n, v in (("run.epochs", epochs), ("optim.warmup_epochs", optim.warmup_epochs)) if v > 0]
    spe = None
    if num_videos:
        spe = (num_videos * repeats) // clips          # = num_videos // videos_per_step, exact in integers
        rec.update(num_videos=num_videos, num_videos_from=src, steps_per_epoch=spe)
    else:
        rec.update(num_videos=None, num_videos_from=None, steps_per_epoch=None)
    if need and not num_videos:
        raise ConfigError(f"data.num_videos: {' and '.join(need)} need the training-set size to turn epochs into "
                          f"steps; set data.num_videos=N (no manifest.json with num_samples in data.shards="
                          f"{data.shards!r})")
    if need and spe == 0:
        raise ConfigError(f"data.num_videos: {num_videos} videos are fewer than one step's {_g(videos)} videos "
                          f"({clips} clips / {repeats} repeats): no whole step per epoch for {' and '.join(need)}")
    if epochs > 0:
        rec.update(epochs=epochs, max_steps=int(epochs * spe), max_steps_from="run.epochs")
    else:
        rec.update(epochs=(max_steps / spe) if spe else None, max_steps=max_steps, max_steps_from="run.max_steps")
    if optim.warmup_epochs > 0:
        rec.update(warmup_epochs=optim.warmup_epochs, warmup_steps=int(optim.warmup_epochs * spe),
                   warmup_from="optim.warmup_epochs")
    else:
        rec.update(warmup_epochs=(optim.warmup_steps / spe) if spe else None, warmup_steps=optim.warmup_steps,
                   warmup_from="optim.warmup_steps")
    if published_batch:
        rec["published_batch_videos"] = published_batch
        rec["published_batch_matches"] = math.isclose(videos, published_batch)
        rec["published_lr"] = scaled_lr(optim.blr, optim.lr, published_batch)
    else:
        rec.update(published_batch_videos=None, published_batch_matches=None, published_lr=None)
    return rec


def recipe_lines(rec: dict) -> list[str]:
    """The recipe in words, one fact per line (printed at the start of a run)."""
    reps = rec["num_repeats"]
    lines = [f"recipe: effective batch {rec['clips_per_step']} clips = {_g(rec['videos_per_step'])} videos per step "
             f"({rec['micro_batch']} clips x {rec['grad_accum']} accumulation x {rec['world_size']} process(es)"
             + (f", {reps} clips per video" if reps > 1 else "") + ")",
             f"recipe: {rec['lr_rule']}; cosine to min_lr {rec['min_lr']:.3g} ({rec['min_lr_note']})"]
    spe = rec["steps_per_epoch"]
    if spe:
        per = (f"{spe} steps/epoch ({rec['num_videos']} videos // {_g(rec['videos_per_step'])} videos/step, "
               f"from {rec['num_videos_from']})")
        if rec["max_steps_from"] == "run.epochs":
            length = f"epochs {_g(rec['epochs'])} x {per} = {rec['max_steps']} steps"
        else:
            length = f"{rec['max_steps']} steps (run.max_steps) = {rec['epochs']:.3g} epochs of {per}"
        if rec["warmup_from"] == "optim.warmup_epochs":
            warm = f"warmup {_g(rec['warmup_epochs'])} epochs = {rec['warmup_steps']} steps"
        else:
            warm = f"warmup {rec['warmup_steps']} steps (optim.warmup_steps) = {rec['warmup_epochs']:.3g} epochs"
        lines.append(f"recipe: {length}; {warm}")
    else:
        lines.append(f"recipe: {rec['max_steps']} steps, warmup {rec['warmup_steps']} steps (epochs unknown: "
                     f"no data.num_videos and no manifest.json)")
    return lines


def batch_warning(rec: dict) -> Optional[str]:
    """The loud line for a run whose videos per step differ from the preset's published batch."""
    pub = rec.get("published_batch_videos")
    if not pub or rec.get("published_batch_matches"):
        return None
    per = rec["micro_batch"] * rec["world_size"]
    accum = pub * rec["num_repeats"] / per
    hint = (f"dist.grad_accum={int(accum)} restores it with {rec['micro_batch']} clips x {rec['world_size']} "
            f"process(es)" if accum >= 1 and float(accum).is_integer() else
            "no integer dist.grad_accum restores it with this data.batch_size and process count")
    return (f"WARNING: effective batch {_g(rec['videos_per_step'])} videos/step differs from the published "
            f"{pub} videos/step (run.published_batch); the LR follows the rule ({rec['base_lr']:.4g} here, "
            f"{rec['published_lr']:.4g} at the published batch) but results may differ from the paper's; {hint}")


def announce(rec: dict, is_main: bool = True) -> None:
    """Print the recipe lines (and the batch warning on stdout and stderr) on the main rank."""
    if not is_main:
        return
    for line in recipe_lines(rec):
        print(f"[tubelet] {line}", flush=True)
    warn = batch_warning(rec)
    if warn:
        bar = "!" * 80
        for stream in (sys.stdout, sys.stderr):
            print(f"[tubelet] {bar}\n[tubelet] {warn}\n[tubelet] {bar}", file=stream, flush=True)


def write_recipe(rec: dict, run_dir: str | Path) -> Path:
    """``recipe.json`` in ``run_dir`` (atomic replace)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "recipe.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(d / "recipe.json")
    return d / "recipe.json"


def apply_recipe(cfg, rt, *, epochs: float = 0.0, published_batch: int = 0) -> dict:
    """Resolve the recipe for ``cfg`` under runtime ``rt``, write the derived ``run.max_steps`` and
    ``optim.warmup_steps`` into ``cfg`` (so the trainer and ``config.yaml`` use them), announce it
    and write ``recipe.json`` (main rank). Returns the record."""
    rec = resolve_recipe(cfg.data, cfg.optim, max_steps=cfg.run.max_steps, micro_batch=rt.micro_batch,
                         grad_accum=rt.grad_accum, world_size=rt.world_size, epochs=epochs,
                         published_batch=published_batch)
    cfg.run.max_steps = rec["max_steps"]
    cfg.optim.warmup_steps = rec["warmup_steps"]
    if rt.is_main:
        announce(rec)
        write_recipe(rec, cfg.run.dir)
    return rec
