"""Hugging Face ``transformers`` VideoMAE: the one key mapping, config conversion, import, export
and the checks against ``transformers`` itself.

The mapping (the sections up to "import": config conversion, key renaming, whole models) is pure
functions over state dicts and config dicts; it neither touches the disk nor imports
``transformers``. :func:`hf_config_kwargs` / :func:`hf_state_dict` give a whole tubelet model's
``VideoMAEConfig`` kwargs and HF-named tensors (``VideoMAEForPreTraining`` for a
``MaskedAutoencoder``, ``VideoMAEModel`` for a ``VideoViT``); tests and benchmarks use them too.
:func:`import_hf`, :func:`export_hf`, :func:`export_hf_pretraining` and :func:`check_hf_import`
read and write directories; the last three need ``transformers`` (the ``hf`` extra). HF VideoMAE
takes ``pixel_values: (B, T, C, H, W)``; tubelet ``(B, C, T, H, W)``.

Layouts:

* tubelet (``pretrain.models``): ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}``, ``norm`` / ``fc_norm``, ``head``; the pretrainer adds ``encoder.``,
  ``encoder_to_decoder``, ``mask_token``, ``decoder.{blocks.i.*, norm, head}``.
* Hugging Face: ``videomae.embeddings.patch_embeddings.projection``,
  ``videomae.encoder.layer.i.attention.attention.{query, key, value}`` (separate q/k/v, bias on q
  and v only), ``…attention.output.dense``, ``layernorm_before/after``, ``intermediate.dense``,
  ``output.dense``, ``videomae.layernorm``; ``fc_norm`` + ``classifier`` (classification);
  ``encoder_to_decoder``, ``mask_token``, ``decoder.decoder_layers.i.*``, ``decoder.norm``,
  ``decoder.head`` (pretraining). A bare ``VideoMAEModel`` is saved without ``videomae.``.
  (The original VideoMAE ``.pth`` layout is :mod:`finetune.interop.pth`'s.)

The decoder predicts tubelet pixels: VideoMAE / HF order its head's rows ``(kt, kh, kw, C)``,
tubelet ``(C, kt, kh, kw)``; the head weight and bias rows are permuted on the way.

Why dropping a k bias is exact: for one query ``q``, a key bias ``b`` adds the same ``q . b`` to
every logit of that query's row, and softmax is invariant to a per-row constant.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from finetune.interop.native import size_name
from finetune.interop.safe_load import read_state_dict
from finetune.interop.weights import IMAGENET_MEAN, IMAGENET_STD, KINDS, Source, clip_shape
from pretrain.models.state_dict import load_exact


class HFConversionError(ValueError):
    """A model or checkpoint that the other side cannot express; the message says which part."""


# ------------------------------------------------------------------------------------------------
# config


def hf_config_from_vit(mc: dict) -> dict:
    """``VideoMAEConfig`` kwargs for a VideoViT ``model_config``; refuses what HF cannot express."""
    why = []
    if mc.get("attn_type", "joint") != "joint":
        why.append(f"attn_type={mc['attn_type']!r} (HF VideoMAE has joint space-time attention only)")
    if mc.get("pos_embed_type", "sincos_1d") != "sincos_1d":
        why.append(f"pos_embed_type={mc['pos_embed_type']!r} (HF VideoMAE uses the 1-D sine-cosine table)")
    if mc.get("input_mode", "rgb") != "rgb":
        why.append(f"input_mode={mc['input_mode']!r} (HF VideoMAE embeds the frames themselves)")
    if mc.get("stem", "linear") != "linear":
        why.append(f"stem={mc['stem']!r} (HF VideoMAE's tubelet embedding is one linear Conv3d)")
    if mc.get("init_values") is not None:
        why.append(f"init_values={mc['init_values']} (LayerScale; HF VideoMAE has none)")
    use_mp = mc.get("use_mean_pooling", True)
    use_cls = (not use_mp) if mc.get("class_token") is None else mc["class_token"]
    if use_cls:
        why.append("a class token (HF VideoMAE has none; build with class_token=False)")
    if why:
        raise HFConversionError("cannot express this encoder as HF VideoMAE: " + "; ".join(why))
    use_fc_norm = use_mp if mc.get("fc_norm") is None else mc["fc_norm"]
    d = int(mc["embed_dim"])
    h, w = mc["img_size"] if isinstance(mc["img_size"], (list, tuple)) else (mc["img_size"],) * 2
    return dict(
        image_size=int(h) if h == w else [int(h), int(w)],
        patch_size=int(mc["patch_size"]), num_channels=int(mc.get("in_chans", 3)),
        num_frames=int(mc["num_frames"]), tubelet_size=int(mc["tubelet_size"]),
        hidden_size=d, num_hidden_layers=int(mc["depth"]), num_attention_heads=int(mc["num_heads"]),
        intermediate_size=int(d * float(mc.get("mlp_ratio", 4.0))), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(mc.get("norm_eps", 1e-6)), qv_bias=bool(mc.get("qkv_bias", True)),
        # HF: use_mean_pooling=True <=> VideoMAEModel applies no final LayerNorm to the tokens.
        use_mean_pooling=bool(use_fc_norm),
    )


def mlp_ratio_for(hidden: int, intermediate: int, what: str = "intermediate_size") -> float:
    """A float ``r`` with ``int(hidden * r) == intermediate`` (timm sizes the MLP that way)."""
    r = intermediate / hidden
    for cand in (r, r + 1e-9, r + 1e-6):
        if int(hidden * cand) == intermediate:
            return cand
    raise HFConversionError(f"{what}={intermediate} cannot be written as int({hidden} * mlp_ratio)")


def vit_kwargs_from_hf(cfg: dict, exact_pooling: bool = False) -> dict:
    """VideoViT kwargs for a ``VideoMAEConfig`` dict (``config.json``).

    HF ``use_mean_pooling=True``: no token norm, ``fc_norm`` after the mean (as HF classification).
    ``False``: token ``norm``; pooled features are the mean of normed tokens, or with
    ``exact_pooling`` the first token (what ``VideoMAEForVideoClassification`` does then).
    """
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise HFConversionError(f"hidden_act={act!r}: only exact 'gelu' matches tubelet's MLP")
    img = cfg.get("image_size", 224)
    patch = cfg.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise HFConversionError(f"patch_size={patch}: tubelet needs square patches")
        patch = patch[0]
    d = int(cfg.get("hidden_size", 768))
    use_mp = bool(cfg.get("use_mean_pooling", True))
    kw = dict(img_size=list(img) if isinstance(img, (list, tuple)) else int(img), patch_size=int(patch),
              num_frames=int(cfg.get("num_frames", 16)), tubelet_size=int(cfg.get("tubelet_size", 2)),
              in_chans=int(cfg.get("num_channels", 3)), embed_dim=d,
              depth=int(cfg.get("num_hidden_layers", 12)), num_heads=int(cfg.get("num_attention_heads", 12)),
              mlp_ratio=mlp_ratio_for(d, int(cfg.get("intermediate_size", 4 * d))),
              qkv_bias=bool(cfg.get("qv_bias", cfg.get("qkv_bias", True))),
              norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), class_token=False, pos_embed_type="sincos_1d",
              attn_type="joint", num_classes=0)
    if use_mp:
        kw.update(use_mean_pooling=True, fc_norm=True)
    else:
        kw.update(use_mean_pooling=not exact_pooling, fc_norm=False)
    return kw


def mae_kwargs_from_hf(cfg: dict) -> dict:
    """MaskedAutoencoder decoder kwargs for a ``VideoMAEConfig`` dict."""
    dd = int(cfg.get("decoder_hidden_size", 384))
    return dict(decoder_embed_dim=dd, decoder_depth=int(cfg.get("decoder_num_hidden_layers", 4)),
                decoder_num_heads=int(cfg.get("decoder_num_attention_heads", 6)),
                decoder_mlp_ratio=mlp_ratio_for(dd, int(cfg.get("decoder_intermediate_size", 4 * dd)),
                                                "decoder_intermediate_size"),
                norm_pix_loss=bool(cfg.get("norm_pix_loss", True)))


# ------------------------------------------------------------------------------------------------
# transformer blocks: tubelet "blocks.i.*" <-> HF "layer.i.*"

_BLOCK_RENAMES = [  # (tubelet suffix, HF suffix), besides qkv
    ("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
]


def _blocks_to_hf(sd: dict, src: str, dst: str, dim: int, out: dict, used: set) -> None:
    """Move ``{src}{i}.*`` (tubelet block) to ``{dst}{i}.*`` (HF layer), splitting qkv."""
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(src) + r"(\d+)\.", k))})
    for i in idx:
        s, d = f"{src}{i}.", f"{dst}{i}."
        w = sd[s + "attn.qkv.weight"]
        used.add(s + "attn.qkv.weight")
        for j, name in enumerate(("query", "key", "value")):
            out[f"{d}attention.attention.{name}.weight"] = w[j * dim:(j + 1) * dim].clone()
        if s + "attn.qkv.bias" in sd:
            b = sd[s + "attn.qkv.bias"]
            used.add(s + "attn.qkv.bias")
            out[f"{d}attention.attention.query.bias"] = b[:dim].clone()
            out[f"{d}attention.attention.value.bias"] = b[2 * dim:].clone()  # k bias: softmax-invariant
        for ours, theirs in _BLOCK_RENAMES:
            for p in ("weight", "bias"):
                out[f"{d}{theirs}.{p}"] = sd[f"{s}{ours}.{p}"]
                used.add(f"{s}{ours}.{p}")


def _blocks_from_hf(sd: dict, src: str, dst: str, qkv_bias: bool, out: dict, used: set) -> None:
    """Inverse of :func:`_blocks_to_hf`; accepts old HF ``q_bias``/``v_bias`` names too."""
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(src) + r"(\d+)\.", k))})
    for i in idx:
        s, d = f"{src}{i}.attention.attention.", f"{dst}{i}."
        ws = [sd[f"{s}{n}.weight"] for n in ("query", "key", "value")]
        used.update(f"{s}{n}.weight" for n in ("query", "key", "value"))
        out[d + "attn.qkv.weight"] = torch.cat(ws, 0)
        qb = next((k for k in (s + "query.bias", s + "q_bias") if k in sd), None)
        vb = next((k for k in (s + "value.bias", s + "v_bias") if k in sd), None)
        if (qb is None) != (vb is None):
            raise HFConversionError(f"{s}: has only one of the query/value biases")
        if qb is not None:
            used.update((qb, vb))
            out[d + "attn.qkv.bias"] = torch.cat([sd[qb], torch.zeros_like(sd[qb]), sd[vb]])
        elif qkv_bias:  # HF qv_bias=False but our block has a bias: zero is the same function
            out[d + "attn.qkv.bias"] = torch.zeros(3 * ws[0].shape[0], dtype=ws[0].dtype)
        for ours, theirs in _BLOCK_RENAMES:
            for p in ("weight", "bias"):
                out[f"{d}{ours}.{p}"] = sd[f"{src}{i}.{theirs}.{p}"]
                used.add(f"{src}{i}.{theirs}.{p}")


def _move(sd: dict, pairs: list, out: dict, used: set, optional: bool = False) -> None:
    for a, b in pairs:
        if a in sd:
            out[b] = sd[a]
            used.add(a)
        elif not optional:
            raise HFConversionError(f"expected key {a!r} is missing")


def _check_all_used(sd: dict, used: set, what: str, ignore: tuple = ()) -> None:
    left = sorted(k for k in sd if k not in used and not any(re.fullmatch(p, k) for p in ignore))
    if left:
        raise HFConversionError(f"{what}: {len(left)} keys have no tubelet counterpart: {left[:8]}"
                                f"{' ...' if len(left) > 8 else ''}")


# ------------------------------------------------------------------------------------------------
# encoder / pretrainer / classifier state dicts


def vit_to_hf(sd: dict, dim: int, prefix: str = "videomae.") -> dict:
    """VideoViT state dict -> HF ``VideoMAEModel`` keys under ``prefix`` (``""`` for a bare model).

    ``head.*`` / ``fc_norm.*`` (classification) come out as ``classifier.*`` / ``fc_norm.*``.
    """
    out, used = {}, set()
    _move(sd, [("patch_embed.proj.weight", prefix + "embeddings.patch_embeddings.projection.weight"),
               ("patch_embed.proj.bias", prefix + "embeddings.patch_embeddings.projection.bias")], out, used)
    _blocks_to_hf(sd, "blocks.", prefix + "encoder.layer.", dim, out, used)
    _move(sd, [("norm.weight", prefix + "layernorm.weight"), ("norm.bias", prefix + "layernorm.bias"),
               ("fc_norm.weight", "fc_norm.weight"), ("fc_norm.bias", "fc_norm.bias"),
               ("head.weight", "classifier.weight"), ("head.bias", "classifier.bias")], out, used, optional=True)
    _check_all_used(sd, used, "tubelet encoder")
    return out


def detect_hf_prefix(sd: dict) -> str:
    """``"videomae."`` for the task models, ``""`` for a bare ``VideoMAEModel`` checkpoint."""
    if any(k.startswith("videomae.embeddings.") for k in sd):
        return "videomae."
    if any(k.startswith("embeddings.") for k in sd):
        return ""
    raise HFConversionError("not a VideoMAE checkpoint: no '[videomae.]embeddings.patch_embeddings' keys")


def vit_from_hf(sd: dict, qkv_bias: bool = True, with_head: bool = False) -> tuple[dict, set]:
    """HF VideoMAE keys -> VideoViT state dict. Returns ``(state_dict, hf_keys_used)``."""
    prefix = detect_hf_prefix(sd)
    out, used = {}, set()
    _move(sd, [(prefix + "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
               (prefix + "embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias")], out, used)
    _blocks_from_hf(sd, prefix + "encoder.layer.", "blocks.", qkv_bias, out, used)
    _move(sd, [(prefix + "layernorm.weight", "norm.weight"), (prefix + "layernorm.bias", "norm.bias")],
          out, used, optional=True)
    if with_head:
        _move(sd, [("fc_norm.weight", "fc_norm.weight"), ("fc_norm.bias", "fc_norm.bias"),
                   ("classifier.weight", "head.weight"), ("classifier.bias", "head.bias")], out, used, optional=True)
    return out, used


def head_rows_to_videomae(sd: dict, channels: int = 3) -> dict:
    """``decoder.head`` rows from tubelet's ``(C, kt, kh, kw)`` order to VideoMAE's ``(kt, kh, kw, C)``."""
    out = dict(sd)
    w, b = sd["decoder.head.weight"], sd["decoder.head.bias"]
    out["decoder.head.weight"] = w.reshape(channels, -1, w.shape[1]).transpose(0, 1).reshape(w.shape).contiguous()
    out["decoder.head.bias"] = b.reshape(channels, -1).t().reshape(-1).contiguous()
    return out


def pixels_to_videomae(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Predictions / targets ``(..., P)`` from tubelet's ``(C, kt, kh, kw)`` to VideoMAE's order."""
    return x.reshape(*x.shape[:-1], channels, -1).transpose(-1, -2).reshape(x.shape)


def head_rows_from_videomae(sd: dict, channels: int = 3) -> dict:
    """Inverse of :func:`head_rows_to_videomae` (VideoMAE / HF pixel order -> tubelet's)."""
    out = dict(sd)
    w, b = sd["decoder.head.weight"], sd["decoder.head.bias"]
    out["decoder.head.weight"] = w.reshape(-1, channels, w.shape[1]).transpose(0, 1).reshape(w.shape).contiguous()
    out["decoder.head.bias"] = b.reshape(-1, channels).t().reshape(-1).contiguous()
    return out


def mae_to_hf(sd: dict, dim: int, decoder_dim: int, channels: int = 3) -> dict:
    """MaskedAutoencoder state dict -> HF ``VideoMAEForPreTraining`` keys (head rows reordered)."""
    sd = head_rows_to_videomae(sd, channels)
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    out = vit_to_hf(enc, dim)
    rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    used: set = set()
    _move(rest, [("encoder_to_decoder.weight", "encoder_to_decoder.weight"), ("mask_token", "mask_token"),
                 ("decoder.norm.weight", "decoder.norm.weight"), ("decoder.norm.bias", "decoder.norm.bias"),
                 ("decoder.head.weight", "decoder.head.weight"), ("decoder.head.bias", "decoder.head.bias")],
          out, used)
    _blocks_to_hf(rest, "decoder.blocks.", "decoder.decoder_layers.", decoder_dim, out, used)
    _check_all_used(rest, used, "tubelet pretrainer")
    return out


def mae_from_hf(sd: dict, qkv_bias: bool = True, channels: int = 3) -> dict:
    """HF ``VideoMAEForPreTraining`` keys -> MaskedAutoencoder state dict (every key used)."""
    enc, used = vit_from_hf(sd, qkv_bias)
    out = {f"encoder.{k}": v for k, v in enc.items()}
    _move(sd, [("encoder_to_decoder.weight", "encoder_to_decoder.weight"), ("mask_token", "mask_token"),
               ("decoder.norm.weight", "decoder.norm.weight"), ("decoder.norm.bias", "decoder.norm.bias"),
               ("decoder.head.weight", "decoder.head.weight"), ("decoder.head.bias", "decoder.head.bias")],
          out, used)
    _blocks_from_hf(sd, "decoder.decoder_layers.", "decoder.blocks.", qkv_bias, out, used)
    _check_all_used(sd, used, "HF VideoMAEForPreTraining checkpoint")
    return head_rows_from_videomae(out, channels)



# ------------------------------------------------------------------------------------------------
# whole models


def _is_pretrainer(model: nn.Module) -> bool:
    return hasattr(model, "decoder_config") and isinstance(getattr(model, "encoder", None), nn.Module)


def _decoder_bias_droppable(mae: nn.Module) -> bool:
    """True when the encoder has no qkv bias, so HF (one ``qv_bias`` switch for encoder and decoder)
    has no decoder biases either: the decoder's must then be absent or zero."""
    if mae.encoder.model_config.get("qkv_bias", True):
        return False
    dec_bias = mae.decoder.blocks[0].attn.qkv.bias
    if dec_bias is not None and bool(dec_bias.any()):
        raise HFConversionError("HF VideoMAE has one qv_bias switch for encoder and decoder: this encoder has "
                                "no qkv bias but the decoder's are non-zero")
    return True


def hf_config_kwargs(model: nn.Module) -> dict:
    """``VideoMAEConfig(**kwargs)`` for a VideoViT, or a MaskedAutoencoder (decoder sizes and
    ``norm_pix_loss`` too); :class:`HFConversionError` for what HF cannot express."""
    if not _is_pretrainer(model):
        return hf_config_from_vit(model.model_config)
    kw = hf_config_from_vit(model.encoder.model_config)
    _decoder_bias_droppable(model)
    dc = model.decoder_config
    kw.update(decoder_hidden_size=dc["decoder_embed_dim"], decoder_num_hidden_layers=dc["decoder_depth"],
              decoder_num_attention_heads=dc["decoder_num_heads"],
              decoder_intermediate_size=int(dc["decoder_embed_dim"] * dc["decoder_mlp_ratio"]),
              norm_pix_loss=bool(model.norm_pix_loss))
    return kw


def hf_state_dict(model: nn.Module, prefix: str = "") -> dict:
    """HF-named tensors: ``VideoMAEForPreTraining``'s for a MaskedAutoencoder (decoder head rows
    in VideoMAE's order), ``VideoMAEModel``'s under ``prefix`` for a VideoViT (``"videomae."`` in a
    task model; a classifier ``head`` is left out)."""
    if not _is_pretrainer(model):
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        return vit_to_hf(sd, model.model_config["embed_dim"], prefix=prefix)
    enc = model.encoder
    sd = dict(model.state_dict())
    if _decoder_bias_droppable(model):
        sd = {k: v for k, v in sd.items() if not (k.startswith("decoder.blocks.") and k.endswith("attn.qkv.bias"))}
    return mae_to_hf(sd, enc.embed_dim, model.decoder_config["decoder_embed_dim"], enc.patch_embed.in_chans)


# ------------------------------------------------------------------------------------------------
# tubelet models for VideoMAE weights (HF and original .pth)


def build_vit(kwargs: dict) -> nn.Module:
    from pretrain.models import VideoViT

    return VideoViT(**kwargs)


def build_mae(enc_kw: dict, mae_kw: dict) -> tuple:
    """``(registered name, kwargs, MaskedAutoencoder)`` for converted encoder + decoder kwargs."""
    from pretrain.models import create_model

    kwargs = {**enc_kw, **mae_kw}
    name = size_name(enc_kw, "videomae") or "videomae_base"  # sizes not in the table: all overridden
    kwargs.pop("num_classes", None)
    return name, kwargs, create_model(name, **kwargs)


def fresh_fc_norm(model: nn.Module, sd: dict) -> tuple:
    """The source has no pooled-feature norm (HF ``VideoMAEModel`` with mean pooling, VideoMAE's
    pretraining encoder): our ``fc_norm`` keeps its init (weight 1, bias 0), as when fine-tuning."""
    if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm) and "fc_norm.weight" not in sd:
        return ("fc_norm.weight", "fc_norm.bias")
    return ()


def geometry(kw: dict) -> dict:
    """``{num_frames, img_size}`` of converted encoder kwargs (a :attr:`Source.data`)."""
    img = kw.get("img_size", 224)
    return {"num_frames": kw.get("num_frames", 16), "img_size": img[0] if isinstance(img, (list, tuple)) else img}


# ------------------------------------------------------------------------------------------------
# import: a transformers VideoMAE directory -> Source


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


def is_hf_dir(path: str | Path) -> bool:
    """A directory whose config.json says ``model_type: videomae``."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("model_type") == "videomae"
    except json.JSONDecodeError:
        return False


def import_hf(path: str | Path, kind: str = "auto") -> Source:
    """A ``transformers`` VideoMAE directory (config.json + weights) -> :class:`Source` holding a
    VideoViT (kinds ``model`` / ``classification``, with ``head``) or a MaskedAutoencoder
    (``pretraining``); every tensor accounted for."""
    d = Path(path)
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("model_type") != "videomae":
        raise HFConversionError(f"{d}/config.json: model_type is {cfg.get('model_type')!r}, not 'videomae'")
    sd = _hf_weights(d)
    found = _hf_kind(cfg, sd)
    kind = found if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
    if kind == "pretraining" and found != "pretraining":
        raise HFConversionError(f"{d}: kind=pretraining but the checkpoint has no decoder ({found})")
    if kind == "classification" and found != "classification":
        raise HFConversionError(f"{d}: kind=classification but the checkpoint has no classifier ({found})")
    enc_kw = vit_kwargs_from_hf(cfg, exact_pooling=(kind == "classification"))
    mean, std = _hf_norm_stats(d)
    origin = f"Hugging Face {d}"
    labels = None
    if cfg.get("id2label"):
        id2 = {int(k): v for k, v in cfg["id2label"].items()}
        labels = [id2[i] for i in sorted(id2)]
    if kind == "pretraining":
        msd = mae_from_hf(sd, enc_kw["qkv_bias"], enc_kw["in_chans"])
        name, kwargs, model = build_mae(enc_kw, mae_kwargs_from_hf(cfg))
        report = load_exact(model, msd, f"{d} (VideoMAEForPreTraining)")
        return Source(model, origin, name, kwargs, mean=mean, std=std, data=geometry(kwargs), report=report)
    esd, used = vit_from_hf(sd, enc_kw["qkv_bias"], with_head=True)
    head = None
    if kind == "classification" and "head.weight" in esd:
        head = {"weight": esd["head.weight"], "bias": esd["head.bias"]}
    esd = {k: v for k, v in esd.items() if not k.startswith("head.")}
    # what the encoder does not take is named by pattern, never silently dropped
    ignore: tuple = ()
    if kind == "model":
        ignore = (r"classifier\..*",)
        if found == "pretraining":
            ignore += (r"decoder\..*", r"encoder_to_decoder\..*", r"mask_token")
    _check_all_used(sd, used, f"{d}", ignore=ignore)
    model = build_vit(enc_kw)
    arch = (cfg.get("architectures") or ["VideoMAE"])[0]
    report = load_exact(model, esd, f"{d} ({arch})", fresh=fresh_fc_norm(model, esd))
    return Source(model, origin, size_name(enc_kw, "vit"), enc_kw, head=head, labels=labels, mean=mean, std=std,
                  data=geometry(enc_kw), report=report)


# ------------------------------------------------------------------------------------------------
# transformers: write + verify exports, verify imports


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - in the test extra
        raise RuntimeError("--format hf needs the 'transformers' package (pip install 'tubelet[hf]')") from e
    return transformers


@contextlib.contextmanager
def _quiet(tf):
    """transformers' load reports and progress bars off while we load for verification
    (loading a task checkpoint into ``VideoMAEModel`` lists the task keys as unexpected, by design)."""
    level = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    try:
        yield
    finally:
        tf.logging.set_verbosity(level)
        tf.logging.enable_progress_bar()


def _require_videovit(enc: nn.Module) -> None:
    mc = getattr(enc, "model_config", None)
    if not isinstance(mc, dict) or "attn_type" not in mc or not hasattr(enc, "blocks"):
        raise HFConversionError(f"cannot express {type(enc).__name__} as HF VideoMAE: only VideoViT encoders "
                                "(plain ViT over tubelets) have a VideoMAE counterpart")


def export_hf(enc: nn.Module, out_dir: str | Path, *, head: Optional[dict] = None, labels: Optional[list] = None,
              mean=IMAGENET_MEAN, std=IMAGENET_STD, atol: float = 1e-4, pooled_atol: float = 1e-3,
              log: Callable[[str], None] = print) -> dict:
    """Write a ``transformers`` VideoMAE directory for a VideoViT and verify it.

    Architecture: ``VideoMAEModel`` when the encoder normalises its tokens (no ``fc_norm``);
    ``VideoMAEForVideoClassification`` when it has an ``fc_norm`` (mean pooling) or a ``head``
    is given, so the trained ``fc_norm`` survives (``num_labels=0`` without a head: HF's logits
    are then our pooled features). ``VideoMAEModel.from_pretrained`` loads either.

    Verification: reloaded with ``from_pretrained``, every tensor must come back bit-identical
    (catches q/v biases silently loaded as zeros); ``VideoMAEModel``'s ``last_hidden_state`` must
    match ``forward_features`` within ``atol``, and HF's pooled features / logits ours within
    ``pooled_atol`` (HF's ``fc_norm`` has LayerNorm eps 1e-5 fixed, ours ``norm_eps``).
    Raises :class:`HFConversionError` for encoders HF cannot express.
    """
    tf = _require_transformers()
    _require_videovit(enc)
    cfg_kw = hf_config_kwargs(enc)
    enc = enc.eval()
    with_fc_norm = isinstance(getattr(enc, "fc_norm", None), nn.LayerNorm)
    task = head is not None or with_fc_norm
    sd = hf_state_dict(enc, prefix="videomae." if task else "")
    if not task:
        arch, cls = "VideoMAEModel", tf.VideoMAEModel
    else:
        arch, cls = "VideoMAEForVideoClassification", tf.VideoMAEForVideoClassification
        k = 0 if head is None else int(head["weight"].shape[0])
        if head is not None:
            sd["classifier.weight"], sd["classifier.bias"] = head["weight"], head["bias"]
            names = labels or [f"class_{i}" for i in range(k)]
            cfg_kw.update(id2label={i: n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
        cfg_kw["num_labels"] = k
        if not with_fc_norm and enc.global_pool == "avg":
            raise HFConversionError("HF VideoMAEForVideoClassification pools the first token when there is "
                                    "no fc_norm, but this classifier mean-pools normed tokens (fc_norm=False); "
                                    "export the encoder alone (tubelet export ... --no-head)")
    config = tf.VideoMAEConfig(**cfg_kw, architectures=[arch])
    hf_model = cls(config).eval()
    load_exact(hf_model, sd, f"HF {arch}")
    out = Path(out_dir)
    with _quiet(tf):
        hf_model.save_pretrained(str(out))
    try:
        img = cfg_kw["image_size"]
        size = img if isinstance(img, int) else min(img)
        tf.VideoMAEImageProcessor(image_mean=list(mean), image_std=list(std), size={"shortest_edge": size},
                                  crop_size={"height": size, "width": size}).save_pretrained(str(out))
    except Exception as e:  # noqa: BLE001 - the processor is a convenience; weights + config are the export
        log(f"hf: note: no preprocessor_config.json written ({type(e).__name__}: {e})")

    # verify: reload, compare every tensor bitwise, compare outputs
    with _quiet(tf):
        back = cls.from_pretrained(str(out)).eval()
        base = tf.VideoMAEModel.from_pretrained(str(out)).eval() if task else back
    got = back.state_dict()
    bad = [k for k, v in sd.items() if k not in got or not torch.equal(got[k].to(v.dtype), v.detach().cpu())]
    if bad:
        raise RuntimeError(f"HF export {out}: transformers {tf.__version__} loaded {len(bad)} tensors differently "
                           f"from what was written (e.g. {bad[:4]}); refusing to call this export good")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*clip_shape(enc, 2), generator=gen)
    with torch.no_grad():
        tokens = enc.forward_features(x)
        diff = float((tokens - base(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state).abs().max())
        report = {"path": str(out), "architecture": arch, "max_abs_diff": diff, "atol": atol,
                  "transformers": tf.__version__}
        if task:
            ref = enc.forward_head(tokens, pre_logits=True)
            if head is not None:
                ref = ref @ head["weight"].t() + head["bias"]
            logits = back(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
            report["pooled_max_abs_diff"] = float((ref - logits).abs().max())
    log(f"hf: {arch} in {out}: max |last_hidden_state - forward_features| = {diff:.3e}"
        + (f"; max |HF logits - ours| = {report['pooled_max_abs_diff']:.3e}" if task else ""))
    if not diff <= atol:
        raise RuntimeError(f"HF export {out}: last_hidden_state differs from forward_features by {diff:.3e} > {atol:g}")
    if task and not report["pooled_max_abs_diff"] <= pooled_atol:
        raise RuntimeError(f"HF export {out}: HF logits differ from ours by {report['pooled_max_abs_diff']:.3e} "
                           f"> {pooled_atol:g}")
    return report


def masks_from_bool(mask: torch.Tensor):
    """``mask: (B, N)`` bool (True = hidden, same count per row) -> :class:`pretrain.masking.MaskIndices`."""
    from pretrain.masking import MaskIndices

    ids_keep = torch.stack([torch.nonzero(~m).flatten() for m in mask])
    ids_masked = torch.stack([torch.nonzero(m).flatten() for m in mask])
    ids_restore = torch.argsort(torch.cat([ids_keep, ids_masked], 1), dim=1)
    return MaskIndices(ids_keep, ids_masked, ids_restore, mask)


def check_hf_import(hf_dir: str | Path, src: Source, atol: float = 1e-4, pooled_atol: float = 1e-3,
                    log: Callable[[str], None] = print) -> dict:
    """Run the HF model of ``hf_dir`` and the imported tubelet model on the same random input.

    Compares ``last_hidden_state`` with ``forward_features`` (``<= atol``); classification: logits
    (``<= pooled_atol``, HF's fc_norm eps is 1e-5); pretraining: loss and predictions on the
    same tube mask (``<= atol``; HF's decoder norm eps is 1e-5, ours 1e-6). ``RuntimeError`` if above.
    """
    tf = _require_transformers()
    kind = src.kind
    cls = {"model": tf.VideoMAEModel, "classification": tf.VideoMAEForVideoClassification,
           "pretraining": tf.VideoMAEForPreTraining}[kind]
    if kind == "model":  # an encoder taken from a task checkpoint: load it as what it is
        arch = (json.loads((Path(hf_dir) / "config.json").read_text()).get("architectures") or [""])[0]
        cls = getattr(tf, arch) if arch.startswith("VideoMAE") and hasattr(tf, arch) else cls
    with _quiet(tf):
        theirs = cls.from_pretrained(str(hf_dir)).eval()
    ours = src.model.eval()
    enc = src.encoder
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*clip_shape(enc, 2), generator=gen)
    px = x.permute(0, 2, 1, 3, 4)
    out: dict = {}
    with torch.no_grad():
        base = theirs if isinstance(theirs, tf.VideoMAEModel) else theirs.videomae
        out["max_abs_diff"] = float((enc.forward_features(x) - base(pixel_values=px).last_hidden_state).abs().max())
        if kind == "classification":
            ref = enc.forward_head(enc.forward_features(x), pre_logits=True) @ src.head["weight"].t() + src.head["bias"]
            out["logits_max_abs_diff"] = float((ref - theirs(pixel_values=px).logits).abs().max())
        if kind == "pretraining":
            t, h, w = enc.grid_size
            hidden = int(0.75 * h * w)
            spatial = torch.stack([torch.randperm(h * w, generator=gen) < hidden for _ in range(2)])  # (B, H'W')
            mask = spatial.repeat(1, t)  # tube mask, time-major
            m = masks_from_bool(mask)
            # the three steps with every hidden tubelet reconstructed (HF has no decoder masking)
            pred = ours.forward_decoder(ours.forward_encoder(x, m.ids_keep), m.ids_keep, m.ids_masked, (t, h, w))
            loss, _ = ours.forward_loss(x, pred, m.ids_masked)
            res = theirs(pixel_values=px, bool_masked_pos=mask)
            out.update(loss=float(loss), hf_loss=float(res.loss), loss_abs_diff=abs(float(loss) - float(res.loss)),
                       pred_max_abs_diff=float((pixels_to_videomae(pred, enc.patch_embed.in_chans)
                                                - res.logits).abs().max()))
    log("import check vs transformers: " + ", ".join(f"{k} {v:.3e}" for k, v in out.items()))
    limits = {"max_abs_diff": atol, "logits_max_abs_diff": pooled_atol, "loss_abs_diff": atol,
              "pred_max_abs_diff": atol}
    if kind == "pretraining" and not getattr(ours, "norm_pix_loss", True):
        # without per-tubelet normalisation HF's targets are [0, 1] pixels (un-normalised with ImageNet
        # statistics) and ours normalised ones: the losses differ by design; predictions still must match
        limits.pop("loss_abs_diff")
    over = {k: v for k, v in out.items() if k in limits and not v <= limits[k]}
    if over:
        raise RuntimeError(f"import of {hf_dir}: outputs differ from transformers beyond tolerance: {over}")
    return out


def export_hf_pretraining(mae: nn.Module, out_dir: str | Path, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          atol: float = 1e-4, log: Callable[[str], None] = print) -> dict:
    """Write a VideoMAE pretrainer (encoder + decoder) as ``VideoMAEForPreTraining`` and verify it:
    tensors bit-identical after ``from_pretrained``, same loss and predictions on a tube mask.

    HF recomputes its targets from ImageNet-normalised pixels; with ``norm_pix_loss`` (per-tubelet
    normalisation makes any per-channel affine map irrelevant up to eps) the losses match for any
    normalisation; without it only the predictions are compared.
    """
    tf = _require_transformers()
    if not _is_pretrainer(mae):
        raise HFConversionError(f"cannot express {type(mae).__name__} as HF VideoMAEForPreTraining: only VideoMAE "
                                "pretrainers (MaskedAutoencoder) have that counterpart")
    _require_videovit(mae.encoder)
    cfg_kw = hf_config_kwargs(mae)
    hf_sd = hf_state_dict(mae)
    config = tf.VideoMAEConfig(**cfg_kw, architectures=["VideoMAEForPreTraining"])
    model = tf.VideoMAEForPreTraining(config).eval()
    load_exact(model, hf_sd, "HF VideoMAEForPreTraining")
    out = Path(out_dir)
    with _quiet(tf):
        model.save_pretrained(str(out))
        back = tf.VideoMAEForPreTraining.from_pretrained(str(out)).eval()
    got = back.state_dict()
    bad = [k for k, v in hf_sd.items() if not torch.equal(got[k], v.detach().cpu())]
    if bad:
        raise RuntimeError(f"HF export {out}: transformers loaded {len(bad)} tensors differently (e.g. {bad[:4]})")
    src = Source(mae.eval(), f"pretrainer {type(mae).__name__}", mean=tuple(mean), std=tuple(std))
    report = check_hf_import(out, src, atol=atol, log=lambda m: log("hf: " + m.replace("import check", "export check")))
    log(f"hf: VideoMAEForPreTraining in {out}")
    return {"path": str(out), "architecture": "VideoMAEForPreTraining", **report}
