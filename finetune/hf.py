"""Hugging Face ``VideoMAE`` and original VideoMAE / VideoMAE V2 layouts <-> tubelet names.

Pure functions over state dicts and config dicts; nothing here touches the disk or imports
``transformers``. Three layouts meet here:

* tubelet (``pretrain.models``): ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}``, ``norm`` / ``fc_norm``, ``head``; the pretrainer adds ``encoder.``,
  ``encoder_to_decoder``, ``mask_token``, ``decoder.{blocks.i.*, norm, head}``.
* Hugging Face: ``videomae.embeddings.patch_embeddings.projection``,
  ``videomae.encoder.layer.i.attention.attention.{query, key, value}`` (separate q/k/v, bias on q
  and v only), ``…attention.output.dense``, ``layernorm_before/after``, ``intermediate.dense``,
  ``output.dense``, ``videomae.layernorm``; ``fc_norm`` + ``classifier`` (classification);
  ``encoder_to_decoder``, ``mask_token``, ``decoder.decoder_layers.i.*``, ``decoder.norm``,
  ``decoder.head`` (pretraining). A bare ``VideoMAEModel`` is saved without ``videomae.``.
* original VideoMAE / V2 ``.pth``: tubelet names, except attention keeps ``qkv.weight`` without a
  bias and separate ``q_bias`` / ``v_bias``.

The decoder predicts tubelet pixels: VideoMAE / HF order its head's rows ``(kt, kh, kw, C)``,
tubelet ``(C, kt, kh, kw)``; the head weight and bias rows are permuted on the way.

Why dropping a k bias is exact: for one query ``q``, a key bias ``b`` adds the same ``q . b`` to
every logit of that query's row, and softmax is invariant to a per-row constant.
"""

from __future__ import annotations

import re

import torch

HF_ARCHS = ("VideoMAEModel", "VideoMAEForPreTraining", "VideoMAEForVideoClassification")


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
# original VideoMAE / VideoMAE V2 .pth


def fold_qv_bias(sd: dict) -> dict:
    """``…attn.q_bias`` + ``…attn.v_bias`` -> ``…attn.qkv.bias = [q, 0, v]``; ``gamma_1/2`` -> LayerScale."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn.v_bias"):
            continue
        if k.endswith(".attn.q_bias"):
            base = k[: -len("q_bias")]
            if base + "v_bias" not in sd:
                raise HFConversionError(f"{k}: no matching {base}v_bias")
            out[base + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), sd[base + "v_bias"]])
        elif k.endswith(".attn.scale") or k.endswith(".temporal_attn.scale"):
            raise HFConversionError(f"{k}: cosine attention (VideoMAE V2 cos_attn) is not supported")
        elif re.search(r"\.gamma_[12]$", k):
            out[k[: -len("gamma_1")] + ("ls1.gamma" if k.endswith("1") else "ls2.gamma")] = v
        else:
            out[k] = v
    return out


def split_original(sd: dict) -> tuple[dict, dict]:
    """Original checkpoint -> ``(encoder_sd, rest)``: ``encoder.`` / ``backbone.`` prefixes stripped
    from the encoder; ``rest`` holds decoder-side keys (``decoder.*``, ``encoder_to_decoder``, ``mask_token``)."""
    enc, rest = {}, {}
    dec_like = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed")
    pretrain_layout = any(k.startswith("encoder.") for k in sd)
    for k, v in sd.items():
        if k.startswith(dec_like):
            rest[k] = v
        elif k.startswith("encoder."):
            enc[k[len("encoder."):]] = v
        elif k.startswith("backbone."):
            enc[k[len("backbone."):]] = v
        elif pretrain_layout and k == "pos_embed":
            rest[k] = v  # the pretrainer's fixed decoder-side table, when saved
        else:
            enc[k] = v
    return fold_qv_bias(enc), fold_qv_bias(rest)
