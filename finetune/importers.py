"""Build tubelet models from Hugging Face VideoMAE directories and original VideoMAE / V2 ``.pth``.

Each importer returns an :class:`Imported`: a tubelet model (``VideoViT`` encoder, or a
``MaskedAutoencoder`` for pretraining checkpoints) with every tensor loaded through
:func:`load_exact` (the exact key sets are asserted), the classifier head for classification
checkpoints, and what was loaded. Nothing is unpickled: HF weights come from safetensors or a
``weights_only`` load, ``.pth`` files from :func:`finetune.safe_load.torch_load`.

Kinds: ``model`` (encoder only), ``pretraining`` (encoder + decoder, so pretraining can go on),
``classification`` (encoder + ``fc_norm`` + linear head).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch.nn as nn

from finetune import hf
from finetune.safe_load import read_state_dict, torch_load, unwrap_state_dict

KINDS = ("model", "pretraining", "classification")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# VideoMAE's head counts by width (not recoverable from tensor shapes); otherwise 64-wide heads
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DECODER_HEADS = {96: 3, 192: 3, 384: 6, 512: 8, 640: 8}


@dataclass
class Imported:
    """A converted checkpoint: ``model`` plus what is needed to save and describe it."""

    kind: str
    model: nn.Module
    """VideoViT (kinds model / classification) or MaskedAutoencoder (pretraining)."""
    name: Optional[str]
    """Registered model name that ``create_model(name, **model_kwargs)`` rebuilds (pretraining)."""
    model_kwargs: dict
    head: Optional[dict] = None
    """Classification: ``{"weight": (K, D), "bias": (K,)}``."""
    labels: Optional[list] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    report: dict = field(default_factory=dict)


def load_exact(model: nn.Module, sd: dict, what: str, fresh: tuple = ()) -> dict:
    """``model.load_state_dict(sd)`` after asserting the key sets and shapes match exactly.

    ``fresh``: keys the checkpoint cannot have and that keep the model's initial values (e.g. the
    ``fc_norm`` of an encoder whose source had none); they must be missing, all of them.
    Raises ``ValueError`` listing missing / unexpected / mis-shaped keys. Returns a report.
    """
    own = model.state_dict()
    if set(fresh) & set(sd) or not set(fresh) <= set(own):
        raise ValueError(f"{what}: keys {sorted(fresh)} were to be initialised fresh but are present")
    sd = {**sd, **{k: own[k] for k in fresh}}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): {items[:10]}{' ...' if len(items) > 10 else ''}")
        raise ValueError(f"{what}: state dict does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return {"tensors": len(sd) - len(fresh), "parameters": int(sum(v.numel() for v in sd.values())),
            "initialised_fresh": sorted(fresh)}


def _fresh_fc_norm(model: nn.Module, sd: dict) -> tuple:
    """The source has no pooled-feature norm (HF ``VideoMAEModel`` with mean pooling, VideoMAE's
    pretraining encoder): our ``fc_norm`` keeps its init (weight 1, bias 0), as when fine-tuning."""
    if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm) and "fc_norm.weight" not in sd:
        return ("fc_norm.weight", "fc_norm.bias")
    return ()


def _size_name(kwargs: dict, prefix: str) -> Optional[str]:
    from pretrain.models.vit import VIT_SIZES

    for size, dims in VIT_SIZES.items():
        if all(kwargs.get(k) == v for k, v in dims.items()):
            return f"{prefix}_{size}"
    return None


def _build_encoder(kw: dict):
    from pretrain.models import VideoViT

    return VideoViT(**kw)


def _build_mae(enc_kw: dict, mae_kw: dict):
    from pretrain.models import create_model

    kwargs = {**enc_kw, **mae_kw}
    name = _size_name(enc_kw, "videomae") or "videomae_base"  # sizes not in the table: all overridden
    kwargs.pop("num_classes", None)
    return name, kwargs, create_model(name, **kwargs)


def _head_from(sd: dict, w: str, b: str) -> Optional[dict]:
    if w not in sd:
        return None
    return {"weight": sd[w], "bias": sd[b]}


# ------------------------------------------------------------------------------------------------
# Hugging Face


def _hf_weights(d: Path) -> dict:
    files = sorted(d.glob("model*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{d}: no model*.safetensors or pytorch_model*.bin")
    sd: dict = {}
    for f in files:
        sd.update(read_state_dict(f))
    return sd


def _hf_kind(cfg: dict, sd: dict) -> str:
    arch = (cfg.get("architectures") or [""])[0]
    if arch == "VideoMAEForPreTraining" or any(k.startswith("decoder.decoder_layers.") for k in sd):
        return "pretraining"
    if "classifier.weight" in sd:  # num_labels=0 (tubelet's feature export) has no classifier: a model
        return "classification"
    return "model"


def _hf_norm_stats(d: Path) -> tuple:
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        p = d / name
        if p.is_file():
            pc = json.loads(p.read_text())
            if "image_mean" in pc and "image_std" in pc:
                return tuple(pc["image_mean"]), tuple(pc["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def is_hf_dir(path: Path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("model_type") == "videomae"
    except json.JSONDecodeError:
        return False


def import_hf(path: str | Path, kind: str = "auto") -> Imported:
    """A ``transformers`` VideoMAE directory (config.json + weights) -> :class:`Imported`."""
    d = Path(path)
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("model_type") != "videomae":
        raise hf.HFConversionError(f"{d}/config.json: model_type is {cfg.get('model_type')!r}, not 'videomae'")
    sd = _hf_weights(d)
    found = _hf_kind(cfg, sd)
    kind = found if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
    if kind == "pretraining" and found != "pretraining":
        raise hf.HFConversionError(f"{d}: kind=pretraining but the checkpoint has no decoder ({found})")
    if kind == "classification" and found != "classification":
        raise hf.HFConversionError(f"{d}: kind=classification but the checkpoint has no classifier ({found})")
    enc_kw = hf.vit_kwargs_from_hf(cfg, exact_pooling=(kind == "classification"))
    mean, std = _hf_norm_stats(d)
    labels = None
    if cfg.get("id2label"):
        id2 = {int(k): v for k, v in cfg["id2label"].items()}
        labels = [id2[i] for i in sorted(id2)]
    if kind == "pretraining":
        msd = hf.mae_from_hf(sd, enc_kw["qkv_bias"], enc_kw["in_chans"])
        name, kwargs, model = _build_mae(enc_kw, hf.mae_kwargs_from_hf(cfg))
        report = load_exact(model, msd, f"{d} (VideoMAEForPreTraining)")
        return Imported(kind, model, name, kwargs, mean=mean, std=std, report=report)
    esd, used = hf.vit_from_hf(sd, enc_kw["qkv_bias"], with_head=True)
    head = _head_from(esd, "head.weight", "head.bias") if kind == "classification" else None
    esd = {k: v for k, v in esd.items() if not k.startswith("head.")}
    # what the encoder does not take is named by pattern, never silently dropped
    ignore: tuple = ()
    if kind == "model":
        ignore = (r"classifier\..*",)
        if found == "pretraining":
            ignore += (r"decoder\..*", r"encoder_to_decoder\..*", r"mask_token")
    hf._check_all_used(sd, used, f"{d}", ignore=ignore)
    model = _build_encoder(enc_kw)
    arch = (cfg.get("architectures") or ["VideoMAE"])[0]
    report = load_exact(model, esd, f"{d} ({arch})", fresh=_fresh_fc_norm(model, esd))
    return Imported(kind, model, _size_name(enc_kw, "vit"), enc_kw, head=head, labels=labels, mean=mean,
                    std=std, report=report)


# ------------------------------------------------------------------------------------------------
# original VideoMAE / VideoMAE V2 .pth


def _infer_vit_kwargs(sd: dict, num_frames: int, img_size: int, num_heads: Optional[int]) -> dict:
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        raise hf.HFConversionError("not a VideoMAE checkpoint: no 5-D patch_embed.proj.weight "
                                   f"(first keys: {sorted(sd)[:6]})")
    d, c, kt, kh, kw = w.shape
    if kh != kw:
        raise hf.HFConversionError(f"patch_embed.proj.weight {tuple(w.shape)}: non-square patches")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    use_mp = "fc_norm.weight" in sd
    kwargs = dict(img_size=img_size, patch_size=kh, num_frames=num_frames, tubelet_size=kt, in_chans=c,
                  embed_dim=d, depth=depth, num_heads=num_heads or ENCODER_HEADS.get(d, max(1, d // 64)),
                  mlp_ratio=hf.mlp_ratio_for(d, hidden, "mlp hidden size"),
                  qkv_bias="blocks.0.attn.qkv.bias" in sd, norm_eps=1e-6, class_token=False,
                  pos_embed_type="sincos_1d", attn_type="joint", num_classes=0,
                  use_mean_pooling=True, fc_norm=use_mp)
    if "blocks.0.ls1.gamma" in sd:
        kwargs["init_values"] = 1e-5  # LayerScale on; the value is overwritten by the checkpoint
    return kwargs


def import_original(path: str | Path, kind: str = "auto", num_frames: int = 16, img_size: int = 224,
                    num_heads: Optional[int] = None, decoder_num_heads: Optional[int] = None) -> Imported:
    """An original VideoMAE / VideoMAE V2 checkpoint (``.pth``) -> :class:`Imported`.

    Handles nested ``model`` / ``module`` dicts, ``encoder.`` / ``backbone.`` prefixes, split
    ``q_bias`` / ``v_bias`` (k bias becomes zero) and V2's LayerScale ``gamma_1/2``. The clip
    geometry (``num_frames``, ``img_size``) and head counts are not stored in these files.
    """
    p = Path(path)
    raw = torch_load(p) if p.suffix != ".safetensors" else read_state_dict(p)
    sd = unwrap_state_dict(raw, p)
    enc, rest = hf.split_original(sd)
    if "pos_embed" in enc:
        n = enc["pos_embed"].shape[-2]
        raise hf.HFConversionError(f"{p}: has a learned pos_embed ({n} positions); tubelet's VideoViT uses the "
                                   "fixed sine-cosine table, so these weights would not reproduce the model")
    has_dec = any(k.startswith("decoder.") for k in rest)
    found = "pretraining" if has_dec else ("classification" if "head.weight" in enc else "model")
    kind = found if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
    if kind != "model" and kind != found:
        raise hf.HFConversionError(f"{p}: kind={kind} but the checkpoint looks like {found}")
    head = _head_from(enc, "head.weight", "head.bias")
    enc = {k: v for k, v in enc.items() if not k.startswith("head.")}
    enc_kw = _infer_vit_kwargs(enc, num_frames, img_size, num_heads)
    if kind == "pretraining":
        dd = rest["decoder.blocks.0.norm1.weight"].shape[0] if "decoder.blocks.0.norm1.weight" in rest else None
        if dd is None:
            raise hf.HFConversionError(f"{p}: decoder without blocks")
        dec_depth = 1 + max(int(m.group(1)) for k in rest if (m := re.match(r"decoder\.blocks\.(\d+)\.", k)))
        mae_kw = dict(decoder_embed_dim=dd, decoder_depth=dec_depth,
                      decoder_num_heads=decoder_num_heads or DECODER_HEADS.get(dd, max(1, dd // 64)),
                      decoder_mlp_ratio=hf.mlp_ratio_for(dd, rest["decoder.blocks.0.mlp.fc1.weight"].shape[0]))
        rest.pop("pos_embed", None)
        rest.pop("decoder_pos_embed", None)
        name, kwargs, model = _build_mae(enc_kw, mae_kw)
        msd = hf.head_rows_from_videomae({**{f"encoder.{k}": v for k, v in enc.items()}, **rest}, enc_kw["in_chans"])
        report = load_exact(model, msd, f"{p} (VideoMAE pretraining layout)")
        return Imported(kind, model, name, kwargs, report=report)
    if kind == "model":
        rest = {}
    elif rest:
        raise hf.HFConversionError(f"{p}: unexpected keys {sorted(rest)[:8]}")
    if kind == "classification" and not enc_kw["fc_norm"]:
        enc_kw["use_mean_pooling"] = False  # VideoMAE then classifies the first (normed) token
    model = _build_encoder(enc_kw)
    report = load_exact(model, enc, f"{p} (VideoMAE encoder layout)")
    return Imported(kind, model, _size_name(enc_kw, "vit"), enc_kw,
                    head=head if kind == "classification" else None, report=report)
