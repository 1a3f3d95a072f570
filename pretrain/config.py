"""Typed configuration: dataclasses + layered YAML + ``key=value`` overrides.

A YAML file may name the files it builds on with ``base: [other.yaml, ...]`` (paths relative to
the file, or to the repository's ``configs/`` directory). Layers merge left to right, the file
itself last, then command-line overrides such as ``data.shards=/x run.max_steps=10``.
Every field is checked on load; an unknown key or a bad value raises :class:`ConfigError`
naming the dotted field. The merged config is written to the run directory with
:func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

def _config_root() -> Path:
    """The presets: the repository's ``configs/`` in a source checkout, else the copy installed as
    package data of ``tubelet.configs`` (a wheel or ``pip install .``)."""
    source = Path(__file__).resolve().parents[1] / "configs"
    if source.is_dir():
        return source
    import importlib.util

    spec = importlib.util.find_spec("tubelet")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "configs").is_dir():
            return Path(loc) / "configs"
    return source


CONFIG_ROOT = _config_root()
PRESET_SECTIONS = {"PretrainConfig": "pretrain", "FinetuneConfig": "finetune"}


def preset_names(section: str) -> list[str]:
    """Preset names of ``section`` (``pretrain`` / ``finetune``): ``configs/SECTION/*.yaml``
    without the partial layers whose name starts with ``_``."""
    return sorted(p.stem for p in (CONFIG_ROOT / section).glob("*.yaml") if not p.stem.startswith("_"))


def resolve_preset(path: str | Path, section: str | None = None) -> Path:
    """A config path as given, relative to the presets, or a preset *name* (``vit_b_k400``) of
    ``section``; raises :class:`ConfigError` listing the presets when nothing matches."""
    p = Path(path)
    if section and p.suffix == "" and len(p.parts) == 1:
        cand = CONFIG_ROOT / section / f"{p.name}.yaml"
        if cand.is_file():
            return cand
        if not p.is_file():
            raise UsageError(f"--config: no preset {str(path)!r} for {section} (presets: "
                              f"{', '.join(preset_names(section))}; or give a YAML path)")
    return _resolve(path)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field."""


class UsageError(ConfigError):
    """A command-line flag is missing or has a bad value (a path that does not exist, a number out
    of range); the message starts with the flag. The command runner prints it as ``usage error``."""


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled and augmented."""

    shards: str = ""
    """Train shards: a directory, a glob, a brace list (``a-{000..009}.tar``) or a ``pipe:`` URL."""
    val_shards: str = ""
    """Validation/test shards (fine-tuning and evaluation), same forms as ``shards``."""
    backend: str = "decord"
    """Video decoder: ``decord`` (default) or ``pyav`` (fallback, same output)."""
    num_frames: int = 16
    """Frames per clip."""
    sampling_rate: int = 4
    """Temporal stride between sampled frames (ignored when ``target_fps`` is set)."""
    target_fps: Optional[float] = None
    """Resample clips to this frame rate instead of a fixed stride."""
    img_size: int = 224
    """Square output crop size in pixels."""
    num_repeats: int = 1
    """Repeated sampling: clips emitted per decoded video (each with its own augmentation)."""
    batch_size: int = 8
    """Clips per device per micro-step."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 decodes in the main process)."""
    shuffle_buffer: int = 64
    """Samples held in the shuffle buffer of each worker (train mode)."""
    train_crop: str = "multiscale"
    """Train crop: ``multiscale`` (VideoMAE), ``random_resized`` or ``center``."""
    crop_scales: tuple = (1.0, 0.875, 0.75, 0.66)
    """Scales of the VideoMAE multi-scale crop."""
    rrc_scale: tuple = (0.25, 1.0)
    """Area range of the random resized crop."""
    hflip: bool = True
    """Random horizontal flip (switch off for direction-defined classes)."""
    test_num_clips: int = 2
    """Uniformly spaced clips per video at test time."""
    test_num_crops: int = 1
    """Spatial crops per clip at test time: 1 (centre) or 3 (left/centre/right)."""
    decode_timeout: float = 30.0
    """Seconds one sample may take to decode before it is skipped and counted."""
    mean: tuple = (0.485, 0.456, 0.406)
    """Per-channel mean for normalisation (applied on the device)."""
    std: tuple = (0.229, 0.224, 0.225)
    """Per-channel std for normalisation (applied on the device)."""
    flow: bool = False
    """Also compute optical flow (Farnebäck) for two-stream models."""
    repeat_temporal: bool = False
    """Repeated sampling: give every repeat its own temporal position (costs up to ``num_repeats``x
    the decoding); off: repeats share the decoded frames and differ in crop/flip (VideoMAE V2)."""
    sampling: str = "stride"
    """Temporal sampling: ``stride`` (``num_frames`` frames ``sampling_rate`` apart at a random
    start) or ``segment`` (TSN/SSv2: ``num_frames`` equal segments over the whole video, one random
    frame per segment in train, the middle one at test; ``sampling_rate`` / ``target_fps`` unused)."""
    randaug: str = ""
    """RandAugment applied identically to every frame of a clip, train mode only, timm syntax
    (VideoMAE fine-tuning: ``rand-m7-n4-mstd0.5-inc1``); empty: off."""
    cache: str = ""
    """Decoded-clip cache: ``""`` off, ``ram`` (uint8 ``.npy`` files under ``/dev/shm``, removed when
    the process that built the loader exits) or a directory (kept and reused across runs). Every video
    is decoded once in full, memory-mapped by all workers and ranks of the host; augmentation stays
    per sample. Keyed on the shards' sizes, mtimes and manifest: changed shards invalidate it."""
    cache_max_gb: float = 16.0
    """Bound on the cache's size in GB (10^9 bytes) over all processes; beyond it, samples are
    decoded normally. ``ram`` also stops at 90 % of ``/dev/shm``."""
    num_videos: int = 0
    """Training videos in one epoch, for ``run.epochs`` / ``optim.warmup_epochs`` (0: read
    ``num_samples`` from ``manifest.json`` of ``data.shards`` when there is one). Epochs become
    optimizer steps as VideoMAE does (``len(dataset) // total_batch_videos``):
    ``steps_per_epoch = num_videos // videos_per_step``, ``videos_per_step = clips_per_step /
    num_repeats``, ``clips_per_step = batch_size x grad_accum x world size``."""

    def __post_init__(self):
        _check(self.backend in ("decord", "pyav"), "data.backend", f"must be 'decord' or 'pyav', got {self.backend!r}")
        _check(self.num_frames >= 1, "data.num_frames", f"must be >= 1, got {self.num_frames}")
        _check(self.sampling_rate >= 1, "data.sampling_rate", f"must be >= 1, got {self.sampling_rate}")
        _check(self.target_fps is None or self.target_fps > 0, "data.target_fps", "must be > 0")
        _check(self.img_size >= 8, "data.img_size", f"must be >= 8, got {self.img_size}")
        _check(self.num_repeats >= 1, "data.num_repeats", f"must be >= 1, got {self.num_repeats}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        _check(self.train_crop in ("multiscale", "random_resized", "center"), "data.train_crop",
               f"must be multiscale|random_resized|center, got {self.train_crop!r}")
        _check(len(self.rrc_scale) == 2 and 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1,
               "data.rrc_scale", "must be (lo, hi) with 0 < lo <= hi <= 1")
        _check(all(0 < s <= 1 for s in self.crop_scales), "data.crop_scales", "values must lie in (0, 1]")
        _check(self.test_num_clips >= 1, "data.test_num_clips", "must be >= 1")
        _check(self.test_num_crops in (1, 3), "data.test_num_crops", "must be 1 or 3")
        _check(self.decode_timeout > 0, "data.decode_timeout", "must be > 0")
        _check(len(self.mean) == 3 and len(self.std) == 3, "data.mean/std", "need 3 values each")
        _check(isinstance(self.repeat_temporal, bool), "data.repeat_temporal", "must be true or false")
        _check(self.sampling in ("stride", "segment"), "data.sampling",
               f"must be stride|segment, got {self.sampling!r}")
        _check(self.cache_max_gb > 0, "data.cache_max_gb", f"must be > 0, got {self.cache_max_gb}")
        _check(self.num_videos >= 0, "data.num_videos", f"must be >= 0, got {self.num_videos}")
        if self.randaug:
            from pretrain.data.randaug import RandAugSpec

            try:
                RandAugSpec.parse(self.randaug)
            except ValueError as e:
                raise ConfigError(f"data.randaug: {e}") from None


@dataclass
class ModelConfig:
    """Which registered model to build and how."""

    name: str = "videomae_small"
    """Registered model name (``pretrain.models.list_models()``)."""
    mask_type: str = "tube"
    """Encoder masking: ``tube`` (same spatial mask every time step) or ``random``."""
    mask_ratio: Optional[float] = None
    """Share of tubelets hidden from the encoder (unset: the model's own default, VideoMAE 0.9,
    MaskFeat 0.4)."""
    decoder_mask_ratio: float = 0.0
    """VideoMAE V2 running-cell decoder masking: share of masked tubelets NOT reconstructed."""
    drop_path: float = 0.0
    """Stochastic depth rate of the encoder."""
    grad_checkpointing: bool = False
    """Activation checkpointing in the encoder blocks."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword overrides passed to ``create_model`` (e.g. ``embed_dim``, ``depth``)."""
    init: str = ""
    """Warm start (pretraining): a dir holding the full pretrainer's ``model.safetensors`` (``tubelet
    import`` output, a run or its ``final/``); exact key set. A resumed checkpoint takes precedence."""

    def __post_init__(self):
        _check(bool(self.name), "model.name", "must be set")
        _check(self.mask_type in ("tube", "random"), "model.mask_type", f"must be tube|random, got {self.mask_type!r}")
        _check(self.mask_ratio is None or 0.0 <= self.mask_ratio < 1.0, "model.mask_ratio",
               f"must be in [0, 1), got {self.mask_ratio}")
        _check(0.0 <= self.decoder_mask_ratio < 1.0, "model.decoder_mask_ratio", "must be in [0, 1)")
        _check(0.0 <= self.drop_path < 1.0, "model.drop_path", "must be in [0, 1)")


@dataclass
class OptimConfig:
    """AdamW and its schedule."""

    blr: float = 1.5e-4
    """Base learning rate; the actual LR is ``blr * total_batch / 256`` unless ``lr`` is set."""
    lr: Optional[float] = None
    """Absolute learning rate (overrides ``blr`` scaling)."""
    min_lr: float = 1e-6
    """Floor of the cosine schedule, absolute: NOT scaled with the batch (VideoMAE's scripts scale
    their ``--min_lr`` by total_batch / 256 like ``--lr``; give the scaled value here)."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to norms, biases, position/mask/cls tokens)."""
    betas: tuple = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Linear warmup steps (optimizer steps); replaced by ``warmup_epochs`` when that is > 0."""
    warmup_epochs: float = 0.0
    """Linear warmup in epochs (VideoMAE's ``--warmup_epochs``; 0: use ``warmup_steps``):
    ``warmup_steps = int(warmup_epochs x steps_per_epoch)``, steps per epoch from ``data.num_videos``
    (see there). Printed at the start and recorded in ``recipe.json``."""
    clip_grad: Optional[float] = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    layer_decay: float = 1.0
    """Layer-wise LR decay (fine-tuning; 1.0 disables)."""

    def __post_init__(self):
        _check(self.blr > 0, "optim.blr", "must be > 0")
        _check(self.lr is None or self.lr > 0, "optim.lr", "must be > 0")
        _check(self.min_lr >= 0, "optim.min_lr", "must be >= 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two values in [0, 1)")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(self.clip_grad is None or self.clip_grad > 0, "optim.clip_grad", "must be > 0 or null")
        _check(0 < self.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]")


@dataclass
class DistConfig:
    """Distribution backend (DeepSpeed ZeRO through accelerate-launched processes)."""

    deepspeed: bool = False
    """Run through a DeepSpeed engine (ZeRO stage below); off: plain torch (DDP when multi-process)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1, 2 or 3."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer states to CPU (stages 2 and 3)."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimizer step."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``."""
    deepspeed_config: str = ""
    """DeepSpeed JSON template (e.g. ``launch/deepspeed/zero2.json``) whose ``"auto"`` values are
    filled from this config; empty: the built-in settings for ``zero_stage``."""
    elastic: bool = True
    """Allow resuming with another number of processes; DeepSpeed ZeRO 1-3 then also write a
    world-size-free copy of the model + optimizer state (``elastic.pt``) with every checkpoint."""
    timeout_s: float = 600.0
    """Collective timeout: a rank whose peer died (or hangs) fails after this many seconds
    instead of waiting forever (process group creation and every gloo/NCCL collective)."""

    def __post_init__(self):
        _check(self.zero_stage in (0, 1, 2, 3), "dist.zero_stage", f"must be 0..3, got {self.zero_stage}")
        _check(self.grad_accum >= 1, "dist.grad_accum", "must be >= 1")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), "dist.precision",
               f"must be auto|fp32|bf16|fp16, got {self.precision!r}")
        _check(not self.deepspeed_config or self.deepspeed_config.endswith(".json"), "dist.deepspeed_config",
               f"must name a .json file, got {self.deepspeed_config!r}")
        _check(self.timeout_s > 0, "dist.timeout_s", "must be > 0")


@dataclass
class RunConfig:
    """Run directory, length, checkpoints and logging."""

    dir: str = "runs/default"
    """Run directory (checkpoints, config.yaml, metrics.jsonl, PNGs)."""
    max_steps: int = 1000
    """Optimizer steps to train."""
    save_every: int = 500
    """Checkpoint every N optimizer steps (and always at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    log_every: int = 10
    """Write metrics every N steps."""
    vis_every: int = 0
    """Write a reconstruction PNG every N steps (0: only at the end)."""
    seed: int = 0
    """Global seed (data order, augmentation, masking, init)."""
    resume: bool = True
    """Resume from the latest checkpoint in ``dir`` when there is one."""
    max_nonfinite: int = 5
    """Non-finite loss policy: skip the step; stop after this many in a row."""
    tracker: str = "tensorboard"
    """accelerate tracker: ``tensorboard`` or ``none``."""
    progress: bool = True
    """Show a tqdm progress bar on the main rank."""
    compile: bool = False
    """``torch.compile`` the model's forward/backward (DDP: the wrapped model; DeepSpeed:
    ``engine.compile()``); checkpoints stay those of the plain model."""
    data_wait_warn: float = 0.10
    """Warn when waiting for batches takes more than this share of the step time in a log interval."""
    probe_every: int = 0
    """Pretraining: run frozen-encoder probes every N steps (and at step 0 and the end); 0: off."""
    probe_shards: str = ""
    """Labeled shards for the probes (split by video key into a fit and a score part)."""
    probe_kinds: tuple = ("knn", "attentive")
    """Probes to run: any of ``knn`` (DINO weighted k-NN, k=20, T=0.07), ``linear``, ``attentive``."""
    probe_score_share: float = 0.2
    """Share of the probe videos held out for scoring (the rest fits the probe)."""
    probe_steps: int = 200
    """AdamW steps that fit the linear / attentive probe on the extracted features."""

    def __post_init__(self):
        _check(bool(self.dir), "run.dir", "must be set")
        _check(self.max_steps >= 0, "run.max_steps", "must be >= 0")
        _check(self.save_every >= 1, "run.save_every", "must be >= 1")
        _check(self.keep_last >= 1, "run.keep_last", "must be >= 1")
        _check(self.log_every >= 1, "run.log_every", "must be >= 1")
        _check(self.vis_every >= 0, "run.vis_every", "must be >= 0")
        _check(self.max_nonfinite >= 1, "run.max_nonfinite", "must be >= 1")
        _check(self.tracker in ("tensorboard", "none"), "run.tracker", "must be tensorboard|none")
        _check(0 <= self.data_wait_warn <= 1, "run.data_wait_warn", "must be in [0, 1] (0: never warn)")
        _check(self.probe_every >= 0, "run.probe_every", "must be >= 0")
        _check(not self.probe_every or bool(self.probe_shards), "run.probe_shards",
               "set labeled shards for the probes (run.probe_every is on)")
        _check(all(k in ("knn", "linear", "attentive") for k in self.probe_kinds) and len(self.probe_kinds) > 0,
               "run.probe_kinds", f"must be a non-empty list of knn|linear|attentive, got {list(self.probe_kinds)}")
        _check(0.0 < self.probe_score_share < 1.0, "run.probe_score_share", "must be in (0, 1)")
        _check(self.probe_steps >= 1, "run.probe_steps", "must be >= 1")


@dataclass
class PretrainConfig:
    """Everything ``tubelet pretrain`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    """Data path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Distribution."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory and length."""


# --------------------------------------------------------------------------------------------
# Loading


def _resolve(path: str | Path, rel_to: Path | None = None) -> Path:
    p = Path(path)
    candidates = [p]
    if rel_to is not None and not p.is_absolute():
        candidates.append(rel_to / p)
    if not p.is_absolute():
        candidates.append(CONFIG_ROOT / p)
        candidates.append(CONFIG_ROOT.parent / p)
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config file not found: {path} (looked in {', '.join(str(c) for c in candidates)})")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = _deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_yaml_layers(path: str | Path) -> dict:
    """Read a YAML file and the ``base:`` files it names, merged (base first)."""
    p = _resolve(path)
    with open(p) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    bases = doc.pop("base", []) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        merged = _deep_merge(merged, load_yaml_layers(_resolve(b, p.parent)))
    return _deep_merge(merged, doc)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=1`` -> (["a", "b"], 1); the value is parsed as YAML (``[1,2]``, ``null``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    doc = _deep_merge({}, doc)
    for o in overrides:
        keys, value = parse_override(o)
        cur = doc
        for k in keys[:-1]:
            nxt = cur.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                cur[k] = nxt
            cur = nxt
        cur[keys[-1]] = value
    return doc


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, name: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: may not be null")
    tp = inner
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if tp is tuple or typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return list(value)
    return value


def from_dict(cls, doc: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by dotted name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in doc:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in doc:
            full = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(doc[f.name], hints[f.name], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Load ``cls`` from a layered YAML file (a path or a preset name) plus ``key=value``
    overrides; validated."""
    if path:
        path = resolve_preset(path, PRESET_SECTIONS.get(cls.__name__))
    doc = load_yaml_layers(path) if path else {}
    doc = apply_overrides(doc, overrides or [])
    return from_dict(cls, doc)


def to_dict(cfg) -> dict:
    """Plain-dict view of a config (tuples become lists), suitable for YAML/JSON."""

    def conv(x):
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, list):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x

    return conv(dataclasses.asdict(cfg))


def save_config(cfg, path: str | Path) -> None:
    """Write the merged config as YAML (re-loadable with :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    tmp.replace(path)
