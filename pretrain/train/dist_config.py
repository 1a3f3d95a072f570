"""Batch arithmetic and backend settings in one place: our config -> the DeepSpeed config.

Everything here is a pure function of the config (and of the environment passed in), so it is
unit-tested without processes:

    ds = to_deepspeed_config(cfg.dist, cfg.data.batch_size, cfg.optim.clip_grad, world_size=8)
    ds["train_batch_size"] == cfg.data.batch_size * cfg.dist.grad_accum * 8

A DeepSpeed JSON template (``dist.deepspeed_config``, e.g. ``launch/deepspeed/zero2.json``) may
add tuning keys (bucket sizes, overlap); its ``"auto"`` values are filled from the config, and an
explicit value that contradicts the config is an error naming both, so the batch arithmetic can
never silently differ between our logs and DeepSpeed.

``apply_launcher_env`` folds what ``accelerate launch`` decided (``--use_deepspeed``, ZeRO stage,
offload, mixed precision, from ``launch/accelerate/*.yaml``) into ``cfg.dist`` so the launcher
and the YAML preset cannot disagree unnoticed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Mapping, Optional

from pretrain.config import ConfigError

# Values the config decides; a template must say "auto" or the same value.
# (DeepSpeed key path, the config field that decides it)
_DECIDED = {
    ("train_batch_size",): "data.batch_size x dist.grad_accum x world size",
    ("train_micro_batch_size_per_gpu",): "data.batch_size",
    ("gradient_accumulation_steps",): "dist.grad_accum",
    ("gradient_clipping",): "optim.clip_grad",
    ("zero_optimization", "stage"): "dist.zero_stage",
    ("bf16", "enabled"): "dist.precision",
    ("fp16", "enabled"): "dist.precision",
    ("zero_optimization", "offload_optimizer", "device"): "dist.offload_optimizer",
}


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; other values pass through."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def check_dist(dist) -> None:
    """Cross-field checks of ``cfg.dist`` (each error names the field to change)."""
    if not dist.deepspeed:
        if dist.zero_stage != 0:
            raise ConfigError(f"dist.zero_stage: ZeRO stage {dist.zero_stage} needs dist.deepspeed=true")
        if dist.offload_optimizer:
            raise ConfigError("dist.offload_optimizer: optimizer offload needs dist.deepspeed=true")
        if dist.precision == "fp16":
            raise ConfigError("dist.precision: fp16 needs dist.deepspeed=true (its dynamic loss scaling); "
                              "use bf16 or fp32 without DeepSpeed")
    if dist.offload_optimizer and dist.zero_stage < 2:
        raise ConfigError(f"dist.offload_optimizer: needs dist.zero_stage 2 or 3, got {dist.zero_stage}")


def to_deepspeed_config(dist, micro_batch: int, clip_grad: Optional[float], world_size: int,
                        template: Optional[dict] = None, device_type: str = "cpu") -> dict:
    """The DeepSpeed config for ``dist`` (``cfg.dist``), ``micro_batch`` clips per rank and
    micro-step (``cfg.data.batch_size``) and ``clip_grad`` (``cfg.optim.clip_grad``; None or 0 = off)
    on ``world_size`` ranks.

    ``train_batch_size = micro x accum x world``; ZeRO stage, clipping and bf16/fp16 follow the
    arguments. ``template`` (a parsed DeepSpeed JSON) may add keys; its ``"auto"`` values are
    filled and contradicting explicit values raise :class:`ConfigError`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    check_dist(dataclasses.replace(dist, deepspeed=True))
    micro, accum, stage = micro_batch, dist.grad_accum, dist.zero_stage
    precision = resolve_precision(dist.precision, device_type)
    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=False, reduce_scatter=True,
                    reduce_bucket_size=int(5e7), allgather_bucket_size=int(5e7))
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    elif stage >= 1:
        zero["offload_optimizer"] = {"device": "none"}  # explicit, so a template cannot turn it on unnoticed
    derived = {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(clip_grad or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # torch.optim.AdamW under ZeRO (and under offload) instead of DeepSpeed's compiled Adam
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10 ** 9,  # our trainer logs; silence DeepSpeed's periodic prints
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        derived["fp16"].update(loss_scale=0, initial_scale_power=16, loss_scale_window=1000,
                               hysteresis=2, min_loss_scale=1)
    if template is None:
        return derived
    return _fill_template(copy.deepcopy(template), derived, ())


def _fill_template(tpl: dict, derived: dict, path: tuple) -> dict:
    for key, value in derived.items():
        here = path + (key,)
        if isinstance(value, dict):
            sub = tpl.get(key)
            if sub is None or sub == "auto":
                sub = {}
            if not isinstance(sub, dict):
                raise ConfigError(f"deepspeed template {'.'.join(here)}: expected a mapping, got {sub!r}")
            tpl[key] = _fill_template(sub, value, here)
        elif key not in tpl or tpl[key] == "auto":
            tpl[key] = value
        elif here in _DECIDED and tpl[key] != value:
            raise ConfigError(f"deepspeed template {'.'.join(here)}={tpl[key]!r} contradicts the config "
                              f"({_DECIDED[here]} gives {value!r}); set it to \"auto\" or change the config")
    _no_auto_left(tpl, path)
    return tpl


def _no_auto_left(tpl: dict, path: tuple) -> None:
    for k, v in tpl.items():
        if isinstance(v, dict):
            _no_auto_left(v, path + (k,))
        elif v == "auto":
            raise ConfigError(f"deepspeed template {'.'.join(path + (k,))}: \"auto\" is not derived from the "
                              f"config here; give a value")


def load_template(path: str | Path) -> dict:
    """Read a DeepSpeed JSON template (error names the file)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"dist.deepspeed_config: cannot read {path}: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"dist.deepspeed_config: {path} must hold a JSON object")
    return _strip_comments(doc)


def _strip_comments(doc: dict) -> dict:
    """Drop ``"_..."`` keys (the templates' documentation) at every level."""
    return {k: _strip_comments(v) if isinstance(v, dict) else v for k, v in doc.items() if not k.startswith("_")}


def apply_launcher_env(dist, environ: Mapping[str, str]):
    """``cfg.dist`` updated with what ``accelerate launch`` chose; returns (dist, notes).

    Under ``accelerate launch`` with a DeepSpeed accelerate config, DeepSpeed is on and the
    YAML's ``zero_stage`` / ``offload_optimizer_device`` / ``deepspeed_config_file`` /
    ``mixed_precision`` apply. Gradient accumulation and clipping belong to our config (the batch
    arithmetic lives in one place): a launcher value that contradicts ``dist.grad_accum`` is an
    error.
    """
    notes = []
    changes: dict = {}
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        changes["deepspeed"] = True
        stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is not None:
            changes["zero_stage"] = int(stage)
        offload = environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
        if offload is not None:
            changes["offload_optimizer"] = offload.lower() == "cpu"
        ds_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if ds_file:
            changes["deepspeed_config"] = ds_file
        accum = environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
        if accum is not None and int(accum) != dist.grad_accum:
            raise ConfigError(f"dist.grad_accum={dist.grad_accum} but the accelerate config sets "
                              f"gradient_accumulation_steps={accum}; set it only in the tubelet config")
    mp = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp in ("bf16", "fp16"):
        if dist.precision not in ("auto", mp):
            raise ConfigError(f"dist.precision={dist.precision} but accelerate launch asks for "
                              f"mixed_precision={mp}; set it in one place")
        changes["precision"] = mp
    for k, v in changes.items():
        if getattr(dist, k) != v:
            notes.append(f"dist.{k}={v!r} (from accelerate launch)")
    return dataclasses.replace(dist, **changes), notes


def check_launch_layout(environ: Mapping[str, str]) -> None:
    """Fail fast when the nodes of one job were launched with different process counts.

    torchrun's agents (one per node) add up the processes every node brings, so a node started
    with another ``--num_processes`` / ``--num_machines`` silently changes the world size (and
    the batch arithmetic) instead of failing. Every node of an ``accelerate launch`` job runs the
    same number of processes: ``WORLD_SIZE == nodes x LOCAL_WORLD_SIZE``, and accelerate's
    ``num_processes`` (exported as ``ACCELERATE_NUM_PROCESSES`` when known) must equal it.
    """
    try:
        world = int(environ["WORLD_SIZE"])
        local = int(environ["LOCAL_WORLD_SIZE"])
        nodes = int(environ["GROUP_WORLD_SIZE"])
    except (KeyError, ValueError):
        return  # not started by torchrun's agent: nothing to compare
    if world != nodes * local:
        raise ConfigError(f"the nodes were launched with different numbers of processes: {world} in total over "
                          f"{nodes} node(s), but this node runs {local}; give every node the same "
                          f"--num_processes (total) and --num_machines")

