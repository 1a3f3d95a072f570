"""The classifier of the fine-tune stage: build it from a config, rebuild it from a saved spec,
load a saved one, and call it on a batch.

A classifier is an encoder (``pretrain.models``) under a head (``finetune.heads``), or a baseline
(``finetune.baselines``). :func:`build_model` makes one for a :class:`~finetune.config.FinetuneConfig`
(from scratch or from ``--init``, transferring the encoder as VideoMAE does), :func:`rebuild` makes the
architecture a ``final/config.json`` spec describes, :func:`load_finetuned` reads a fine-tune result,
:func:`classifier_forward` runs one on a batch (passing optical flow to two-stream models).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from finetune.config import FinetuneConfig
from finetune.interop.native import CLASSIFIER_FORMAT
from pretrain.config import ConfigError, load_config


def is_baseline(name: str) -> bool:
    from finetune.baselines import list_baselines

    return name in list_baselines()


def transfer_encoder(src: nn.Module, drop_path_rate: float | None = None, what: str = "encoder") -> tuple[nn.Module, dict]:
    """The fine-tuning encoder built from a loaded source encoder, as VideoMAE transfers it.

    A mean-pooling ViT drops its pretraining per-token ``norm`` (``norm = Identity``) and learns a
    fresh ``fc_norm`` on ``mean(tokens)`` (``run_class_finetuning.py``: ``use_mean_pooling``), so a
    pretrained and a scratch ViT of the same config have the same head: ``fc_norm(mean(tokens))``.
    A source that already has an ``fc_norm`` (a fine-tuned or mean-pooled HF encoder) keeps it.
    ``drop_path_rate`` replaces the source's. Returns ``(encoder, load report)``; the key set is
    checked exactly (only ``norm.*`` dropped, only ``fc_norm.*`` fresh).
    """
    from pretrain.models.state_dict import load_exact
    from pretrain.models.vit import VideoViT

    mc = dict(getattr(src, "model_config", {}) or {})
    if drop_path_rate is not None and "drop_path_rate" in mc:
        mc["drop_path_rate"] = drop_path_rate
    sd = dict(src.state_dict())
    fresh: tuple = ()
    dropped: list = []
    if isinstance(src, VideoViT) and mc.get("use_mean_pooling", True):
        mc["fc_norm"] = None                       # mean pooling -> fc_norm, no token norm
        enc = type(src)(**mc)
        if isinstance(enc.norm, nn.Identity):
            dropped = sorted(k for k in sd if k.startswith("norm."))
            for k in dropped:
                del sd[k]
        if isinstance(enc.fc_norm, nn.LayerNorm) and "fc_norm.weight" not in sd:
            fresh = ("fc_norm.weight", "fc_norm.bias")
    else:
        enc = type(src)(**mc)
    report = load_exact(enc, sd, what, fresh=fresh)
    report["dropped"] = dropped
    return enc, report


def _encoder_from_init(cfg: FinetuneConfig) -> tuple[nn.Module, str]:
    """Rebuild the initial encoder with the fine-tuning drop path, loading the weights exactly."""
    from finetune.interop.sources import load_encoder

    src = load_encoder(cfg.init)
    mc = dict(getattr(src, "model_config", {}) or {})
    for field, want in (("num_frames", cfg.data.num_frames), ("img_size", cfg.data.img_size)):
        have = mc.get(field)
        have = have[0] if isinstance(have, (list, tuple)) else have
        if have is not None and have != want:
            raise ConfigError(f"data.{field}: {want}, but the encoder in {cfg.init} was built for {have}")
    enc, report = transfer_encoder(src, cfg.model.drop_path, str(cfg.init))
    how = f"loaded {report.get('tensors', '?')} tensors from {cfg.init}"
    if report["dropped"] or report["initialised_fresh"]:
        how += (f" (pretraining norm dropped: {', '.join(report['dropped']) or '-'}; "
                f"fresh: {', '.join(report['initialised_fresh']) or '-'})")
    return enc, how


def build_model(cfg: FinetuneConfig, num_classes: int) -> tuple[nn.Module, dict, str]:
    """(classifier, architecture spec for rebuilding, how it was initialised)."""
    name = cfg.model.name
    if is_baseline(name):
        from finetune.baselines import create_baseline

        if cfg.init:
            raise ConfigError(f"init: baselines ({name}) train from scratch; drop --init")
        if cfg.model.grad_checkpointing:
            raise ConfigError(f"model.grad_checkpointing: not supported by the baselines ({name}); "
                              f"it applies to ViT and MViT encoders")
        kw = dict(cfg.model.kwargs)
        try:
            model = create_baseline(name, num_classes=num_classes, num_frames=cfg.data.num_frames,
                                    img_size=cfg.data.img_size, **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.kwargs: {name}: {e}") from e
        spec = {"arch": "baseline", "name": name, "kwargs": kw}
        return model, spec, "scratch"
    from finetune.interop.native import encoder_config
    from finetune.heads import build_classifier
    from pretrain.models import create_model, is_model

    if cfg.init:
        enc, how = _encoder_from_init(cfg)
    else:
        if not is_model(name):
            from finetune.baselines import list_baselines
            from pretrain.models import list_models

            raise ConfigError(f"model.name: unknown {name!r} (encoders: {', '.join(list_models('vit*') + list_models('mvit*'))};"
                              f" baselines: {', '.join(list_baselines())})")
        try:
            enc = create_model(name, num_frames=cfg.data.num_frames, img_size=cfg.data.img_size,
                               drop_path_rate=cfg.model.drop_path, **cfg.model.kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.kwargs: {name}: {e}") from e
        how = "scratch"
    if cfg.model.grad_checkpointing:
        if not hasattr(enc, "set_grad_checkpointing"):
            raise ConfigError(f"model.grad_checkpointing: {type(enc).__name__} has no activation checkpointing")
        enc.set_grad_checkpointing(True)
    kw = {}
    if cfg.head.kind == "finetune":
        kw = {"head_dropout": cfg.head.dropout, "init_scale": cfg.head.init_scale}
    model = build_classifier(cfg.head.kind, enc, num_classes, **kw)
    spec = {"arch": "encoder", "head": cfg.head.kind, "head_kwargs": kw,
            "encoder": encoder_config(enc, name=name if not cfg.init else None, mean=cfg.data.mean, std=cfg.data.std)}
    return model, spec, how


def rebuild(spec: dict, num_classes: int, num_frames: int, img_size: int) -> nn.Module:
    """The classifier an ``export`` spec describes (no weights)."""
    if spec["arch"] == "baseline":
        from finetune.baselines import create_baseline

        return create_baseline(spec["name"], num_classes=num_classes, num_frames=num_frames, img_size=img_size,
                               **spec.get("kwargs", {}))
    from finetune.heads import build_classifier
    from finetune.interop.native import build_from_config

    enc = build_from_config(spec["encoder"])
    return build_classifier(spec["head"], enc, num_classes, **spec.get("head_kwargs", {}))


def load_finetuned(path: str | Path, device="cpu"):
    """(model in eval mode, FinetuneConfig, meta) from a fine-tune run dir or its ``final/`` dir."""
    from finetune.config import FinetuneConfig
    from pretrain.models.state_dict import load_exact
    from finetune.interop.safe_load import read_state_dict

    p = Path(path)
    final = p / "final" if (p / "final" / "config.json").is_file() else p
    run_dir = final.parent
    meta = json.loads((final / "config.json").read_text())
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{final / 'config.json'}: not a tubelet fine-tune result (format {meta.get('format')!r})")
    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    model = rebuild(meta["spec"], meta["num_classes"], cfg.data.num_frames, cfg.data.img_size)
    load_exact(model, read_state_dict(final / "model.safetensors"), str(final))
    meta["run_dir"] = str(run_dir)
    return model.eval().to(device), cfg, meta


def classifier_forward(model: nn.Module, batch: dict, video: torch.Tensor) -> torch.Tensor:
    """``model(video)``, passing the batch's optical flow to models that need it (two-stream)."""
    inner = getattr(model, "module", model)
    if getattr(inner, "needs_flow", False):
        return model(video, flow=batch["flow"].to(video.device))
    return model(video)
