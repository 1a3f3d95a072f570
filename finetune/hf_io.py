"""Hugging Face ``transformers`` side of the interop: write + verify exports, verify imports.

Needs ``transformers`` (the ``hf`` extra); the key/config mapping itself is in :mod:`finetune.hf`.
HF VideoMAE takes ``pixel_values: (B, T, C, H, W)``; tubelet ``(B, C, T, H, W)``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from finetune.hf import pixels_to_videomae
from finetune.importers import IMAGENET_MEAN, IMAGENET_STD, Imported, load_exact


def _input_shape(enc: nn.Module, batch: int) -> tuple:
    from finetune.export import _input_shape as shape

    return shape(enc, batch)


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
    Raises :class:`finetune.hf.HFConversionError` for encoders HF cannot express.
    """
    from finetune import hf

    tf = _require_transformers()
    mc = getattr(enc, "model_config", None)
    if not isinstance(mc, dict) or "attn_type" not in mc or not hasattr(enc, "blocks"):
        raise hf.HFConversionError(f"cannot express {type(enc).__name__} as HF VideoMAE: only VideoViT encoders "
                                   "(plain ViT over tubelets) have a VideoMAE counterpart")
    cfg_kw = hf.hf_config_from_vit(mc)
    enc = enc.eval()
    with_fc_norm = isinstance(getattr(enc, "fc_norm", None), nn.LayerNorm)
    task = head is not None or with_fc_norm
    sd = hf.vit_to_hf({k: v for k, v in enc.state_dict().items() if not k.startswith("head.")},
                      mc["embed_dim"], prefix="videomae." if task else "")
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
            raise hf.HFConversionError("HF VideoMAEForVideoClassification pools the first token when there is "
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
    x = torch.randn(*_input_shape(enc, 2), generator=gen)
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


def _masks_from_bool(mask: torch.Tensor):
    """``mask: (B, N)`` bool (True = hidden, same count per row) -> :class:`pretrain.masking.MaskIndices`."""
    from pretrain.masking import MaskIndices

    ids_keep = torch.stack([torch.nonzero(~m).flatten() for m in mask])
    ids_masked = torch.stack([torch.nonzero(m).flatten() for m in mask])
    ids_restore = torch.argsort(torch.cat([ids_keep, ids_masked], 1), dim=1)
    return MaskIndices(ids_keep, ids_masked, ids_restore, mask)


def check_hf_import(hf_dir: str | Path, imp: Imported, atol: float = 1e-4, pooled_atol: float = 1e-3,
                    log: Callable[[str], None] = print) -> dict:
    """Run the HF model of ``hf_dir`` and the imported tubelet model on the same random input.

    Compares ``last_hidden_state`` with ``forward_features`` (``<= atol``); classification: logits
    (``<= pooled_atol``, HF's fc_norm eps is 1e-5); pretraining: loss and predictions on the
    same tube mask (``<= atol``; HF's decoder norm eps is 1e-5, ours 1e-6). ``RuntimeError`` if above.
    """
    tf = _require_transformers()
    cls = {"model": tf.VideoMAEModel, "classification": tf.VideoMAEForVideoClassification,
           "pretraining": tf.VideoMAEForPreTraining}[imp.kind]
    if imp.kind == "model":  # an encoder taken from a task checkpoint: load it as what it is
        import json

        arch = (json.loads((Path(hf_dir) / "config.json").read_text()).get("architectures") or [""])[0]
        cls = getattr(tf, arch) if arch.startswith("VideoMAE") and hasattr(tf, arch) else cls
    with _quiet(tf):
        theirs = cls.from_pretrained(str(hf_dir)).eval()
    ours = imp.model.eval()
    enc = ours.encoder if imp.kind == "pretraining" else ours
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*_input_shape(enc, 2), generator=gen)
    px = x.permute(0, 2, 1, 3, 4)
    out: dict = {}
    with torch.no_grad():
        base = theirs if isinstance(theirs, tf.VideoMAEModel) else theirs.videomae
        out["max_abs_diff"] = float((enc.forward_features(x) - base(pixel_values=px).last_hidden_state).abs().max())
        if imp.kind == "classification" and imp.head is not None:
            ref = enc.forward_head(enc.forward_features(x), pre_logits=True) @ imp.head["weight"].t() + imp.head["bias"]
            out["logits_max_abs_diff"] = float((ref - theirs(pixel_values=px).logits).abs().max())
        if imp.kind == "pretraining":
            t, h, w = enc.grid_size
            hidden = int(0.75 * h * w)
            spatial = torch.stack([torch.randperm(h * w, generator=gen) < hidden for _ in range(2)])  # (B, H'W')
            mask = spatial.repeat(1, t)  # tube mask, time-major
            m = _masks_from_bool(mask)
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
    if imp.kind == "pretraining" and not getattr(ours, "norm_pix_loss", True):
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
    from finetune import hf

    tf = _require_transformers()
    enc = mae.encoder
    cfg_kw = hf.hf_config_from_vit(enc.model_config)
    dc = mae.decoder_config
    dec_bias = mae.decoder.blocks[0].attn.qkv.bias
    if not cfg_kw["qv_bias"] and dec_bias is not None and bool(dec_bias.any()):
        raise hf.HFConversionError("HF VideoMAE has one qv_bias switch for encoder and decoder: this encoder has "
                                   "no qkv bias but the decoder's are non-zero")
    cfg_kw.update(decoder_hidden_size=dc["decoder_embed_dim"], decoder_num_hidden_layers=dc["decoder_depth"],
                  decoder_num_attention_heads=dc["decoder_num_heads"],
                  decoder_intermediate_size=int(dc["decoder_embed_dim"] * dc["decoder_mlp_ratio"]),
                  norm_pix_loss=bool(mae.norm_pix_loss))
    sd = {k: v for k, v in mae.state_dict().items()}
    if not cfg_kw["qv_bias"]:
        sd = {k: v for k, v in sd.items() if not (k.startswith("decoder.blocks.") and k.endswith("attn.qkv.bias"))}
    hf_sd = hf.mae_to_hf(sd, enc.embed_dim, dc["decoder_embed_dim"], enc.patch_embed.in_chans)
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
    imp = Imported("pretraining", mae.eval(), None, {}, mean=tuple(mean), std=tuple(std))
    report = check_hf_import(out, imp, atol=atol, log=lambda m: log("hf: " + m.replace("import check", "export check")))
    log(f"hf: VideoMAEForPreTraining in {out}")
    return {"path": str(out), "architecture": "VideoMAEForPreTraining", **report}
