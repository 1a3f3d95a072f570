"""Name mapping between our VideoMAE models and Hugging Face ``transformers`` VideoMAE.

Pure tensor renaming (no ``transformers`` import): :func:`hf_config_kwargs` gives the
``VideoMAEConfig`` keyword arguments and :func:`hf_state_dict` the state dict of
``VideoMAEForPreTraining`` (for a :class:`MaskedAutoencoder`) or ``VideoMAEModel`` (for a
:class:`VideoViT`, keys without the ``videomae.`` prefix).

HF has no k bias (VideoMAE's ``q_bias``/``v_bias``): ours is dropped, which is exact whatever
its value, since a key bias adds the same ``q . b_k`` to every score of a query and softmax
ignores that. Decoder head rows are permuted from our ``(C, kt, kh, kw)`` to VideoMAE's
``(kt, kh, kw, C)``. Requires ``pos_embed_type="sincos_1d"``, joint attention, no class
token, no layer scale and square frames (HF's layout).
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from .mae import MaskedAutoencoder
from .vit import VideoViT


def _check(enc: VideoViT) -> None:
    c = enc.model_config
    if (enc.pos_embed_type != "sincos_1d" or enc.attn_type != "joint" or enc.num_prefix_tokens
            or c["init_values"] is not None or c["img_size"][0] != c["img_size"][1]):
        raise ValueError("HF VideoMAE needs pos_embed_type='sincos_1d', attn_type='joint', no class token, "
                         "no layer scale (init_values=None) and a square img_size")


def hf_config_kwargs(model: nn.Module) -> dict:
    """``VideoMAEConfig(**kwargs)`` arguments describing ``model`` (VideoViT or MaskedAutoencoder)."""
    enc = model.encoder if isinstance(model, MaskedAutoencoder) else model
    _check(enc)
    c = enc.model_config
    kw = dict(image_size=c["img_size"][0], patch_size=c["patch_size"], num_channels=c["in_chans"],
              num_frames=c["num_frames"], tubelet_size=c["tubelet_size"], hidden_size=c["embed_dim"],
              num_hidden_layers=c["depth"], num_attention_heads=c["num_heads"],
              intermediate_size=int(c["embed_dim"] * c["mlp_ratio"]), hidden_act="gelu",
              qv_bias=c["qkv_bias"], layer_norm_eps=c["norm_eps"], use_mean_pooling=isinstance(enc.norm, nn.Identity))
    if isinstance(model, MaskedAutoencoder):
        d = model.decoder_config
        kw.update(decoder_hidden_size=d["decoder_embed_dim"], decoder_num_hidden_layers=d["decoder_depth"],
                  decoder_num_attention_heads=d["decoder_num_heads"],
                  decoder_intermediate_size=int(d["decoder_embed_dim"] * d["decoder_mlp_ratio"]),
                  norm_pix_loss=model.norm_pix_loss)
    return kw


def _blocks(sd: Dict[str, torch.Tensor], src: str, dst: str, depth: int, dim: int, out: dict) -> None:
    for i in range(depth):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        w, b = sd[f"{s}.attn.qkv.weight"], sd.get(f"{s}.attn.qkv.bias")
        a = f"{d}.attention.attention"
        out[f"{a}.query.weight"], out[f"{a}.key.weight"], out[f"{a}.value.weight"] = w[:dim], w[dim:2 * dim], w[2 * dim:]
        if b is not None:
            out[f"{a}.query.bias"], out[f"{a}.value.bias"] = b[:dim], b[2 * dim:]
        for ours, theirs in (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
                             ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense")):
            out[f"{d}.{theirs}.weight"] = sd[f"{s}.{ours}.weight"]
            out[f"{d}.{theirs}.bias"] = sd[f"{s}.{ours}.bias"]


def hf_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """HF-named tensors for ``model`` (see module docstring)."""
    is_mae = isinstance(model, MaskedAutoencoder)
    enc = model.encoder if is_mae else model
    _check(enc)
    sd = {k: v.detach() for k, v in enc.state_dict().items()}
    pre = "videomae." if is_mae else ""
    out = {f"{pre}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           f"{pre}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"]}
    _blocks(sd, "blocks", f"{pre}encoder.layer", len(enc.blocks), enc.embed_dim, out)
    if isinstance(enc.norm, nn.LayerNorm):
        out[f"{pre}layernorm.weight"], out[f"{pre}layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if is_mae:
        msd = {k: v.detach() for k, v in model.state_dict().items()}
        out["encoder_to_decoder.weight"] = msd["encoder_to_decoder.weight"]
        out["mask_token"] = msd["mask_token"]
        _blocks(msd, "decoder.blocks", "decoder.decoder_layers", len(model.decoder.blocks),
                model.decoder_config["decoder_embed_dim"], out)
        for k in ("norm.weight", "norm.bias"):
            out[f"decoder.{k}"] = msd[f"decoder.{k}"]
        # head rows: ours (C, kt, kh, kw), VideoMAE's (kt, kh, kw, C)
        c = model.in_chans
        w, b = msd["decoder.head.weight"], msd["decoder.head.bias"]
        out["decoder.head.weight"] = w.view(c, -1, w.shape[1]).transpose(0, 1).reshape(w.shape)
        out["decoder.head.bias"] = b.view(c, -1).t().reshape(-1)
    return out
