"""Original VideoMAE / VideoMAE V2 checkpoints (``.pth``, also ``.pt`` / ``.bin`` / ``.safetensors``)
-> tubelet models.

The layout is tubelet's names, except that attention keeps ``qkv.weight`` without a bias and
separate ``q_bias`` / ``v_bias`` (the k bias becomes zero: exact, see :mod:`finetune.interop.hf`),
VideoMAE V2's LayerScale is ``gamma_1`` / ``gamma_2``, the encoder may sit under ``encoder.`` /
``backbone.``, and the decoder head's rows are in VideoMAE's ``(kt, kh, kw, C)`` pixel order.
The clip geometry (``num_frames``, ``img_size``) and head counts are not stored in these files.
Nothing is unpickled: the file is read with :func:`finetune.interop.safe_load.torch_load`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from finetune.interop.hf import (HFConversionError, build_mae, build_vit, geometry, head_rows_from_videomae,
                                 mlp_ratio_for)
from finetune.interop.native import size_name
from finetune.interop.safe_load import read_state_dict, torch_load, unwrap_state_dict
from finetune.interop.weights import KINDS, Source
from pretrain.models.state_dict import load_exact

# VideoMAE's head counts by width (not recoverable from tensor shapes); otherwise 64-wide heads
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DECODER_HEADS = {96: 3, 192: 3, 384: 6, 512: 8, 640: 8}


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


def _infer_vit_kwargs(sd: dict, num_frames: int, img_size: int, num_heads: Optional[int]) -> dict:
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        raise HFConversionError("not a VideoMAE checkpoint: no 5-D patch_embed.proj.weight "
                                f"(first keys: {sorted(sd)[:6]})")
    d, c, kt, kh, kw = w.shape
    if kh != kw:
        raise HFConversionError(f"patch_embed.proj.weight {tuple(w.shape)}: non-square patches")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    use_mp = "fc_norm.weight" in sd
    kwargs = dict(img_size=img_size, patch_size=kh, num_frames=num_frames, tubelet_size=kt, in_chans=c,
                  embed_dim=d, depth=depth, num_heads=num_heads or ENCODER_HEADS.get(d, max(1, d // 64)),
                  mlp_ratio=mlp_ratio_for(d, hidden, "mlp hidden size"),
                  qkv_bias="blocks.0.attn.qkv.bias" in sd, norm_eps=1e-6, class_token=False,
                  pos_embed_type="sincos_1d", attn_type="joint", num_classes=0,
                  use_mean_pooling=True, fc_norm=use_mp)
    if "blocks.0.ls1.gamma" in sd:
        kwargs["init_values"] = 1e-5  # LayerScale on; the value is overwritten by the checkpoint
    return kwargs


def import_original(path: str | Path, kind: str = "auto", num_frames: int = 16, img_size: int = 224,
                    num_heads: Optional[int] = None, decoder_num_heads: Optional[int] = None) -> Source:
    """An original VideoMAE / VideoMAE V2 checkpoint -> :class:`Source` (a VideoViT, with the
    classifier ``head`` for kind ``classification``, or a MaskedAutoencoder for ``pretraining``).

    Handles nested ``model`` / ``module`` dicts, ``encoder.`` / ``backbone.`` prefixes, split
    ``q_bias`` / ``v_bias`` (k bias becomes zero) and V2's LayerScale ``gamma_1/2``.
    """
    p = Path(path)
    raw = torch_load(p) if p.suffix != ".safetensors" else read_state_dict(p)
    sd = unwrap_state_dict(raw, p)
    enc, rest = split_original(sd)
    if "pos_embed" in enc:
        n = enc["pos_embed"].shape[-2]
        raise HFConversionError(f"{p}: has a learned pos_embed ({n} positions); tubelet's VideoViT uses the "
                                "fixed sine-cosine table, so these weights would not reproduce the model")
    has_dec = any(k.startswith("decoder.") for k in rest)
    found = "pretraining" if has_dec else ("classification" if "head.weight" in enc else "model")
    kind = found if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
    if kind != "model" and kind != found:
        raise HFConversionError(f"{p}: kind={kind} but the checkpoint looks like {found}")
    head = {"weight": enc["head.weight"], "bias": enc["head.bias"]} if "head.weight" in enc else None
    enc = {k: v for k, v in enc.items() if not k.startswith("head.")}
    enc_kw = _infer_vit_kwargs(enc, num_frames, img_size, num_heads)
    origin = f"VideoMAE checkpoint {p}"
    if kind == "pretraining":
        dd = rest["decoder.blocks.0.norm1.weight"].shape[0] if "decoder.blocks.0.norm1.weight" in rest else None
        if dd is None:
            raise HFConversionError(f"{p}: decoder without blocks")
        dec_depth = 1 + max(int(m.group(1)) for k in rest if (m := re.match(r"decoder\.blocks\.(\d+)\.", k)))
        mae_kw = dict(decoder_embed_dim=dd, decoder_depth=dec_depth,
                      decoder_num_heads=decoder_num_heads or DECODER_HEADS.get(dd, max(1, dd // 64)),
                      decoder_mlp_ratio=mlp_ratio_for(dd, rest["decoder.blocks.0.mlp.fc1.weight"].shape[0]))
        rest.pop("pos_embed", None)
        rest.pop("decoder_pos_embed", None)
        name, kwargs, model = build_mae(enc_kw, mae_kw)
        msd = head_rows_from_videomae({**{f"encoder.{k}": v for k, v in enc.items()}, **rest}, enc_kw["in_chans"])
        report = load_exact(model, msd, f"{p} (VideoMAE pretraining layout)")
        return Source(model, origin, name, kwargs, data=geometry(kwargs), report=report)
    if kind == "model":
        rest = {}
    elif rest:
        raise HFConversionError(f"{p}: unexpected keys {sorted(rest)[:8]}")
    if kind == "classification" and not enc_kw["fc_norm"]:
        enc_kw["use_mean_pooling"] = False  # VideoMAE then classifies the first (normed) token
    model = build_vit(enc_kw)
    report = load_exact(model, enc, f"{p} (VideoMAE encoder layout)")
    return Source(model, origin, size_name(enc_kw, "vit"), enc_kw, head=head if kind == "classification" else None,
                  data=geometry(enc_kw), report=report)
