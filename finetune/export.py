"""The encoder leaves tubelet: native safetensors, ONNX, Hugging Face VideoMAE; and comes back.

    enc = load_encoder("runs/x")                  # run dir, checkpoint, encoder dir, HF dir, .pth
    save_encoder(enc, "out/enc", mean=..., std=...)   # config.json + model.safetensors, no pickle
    export_onnx(enc, "out/enc.onnx")              # dynamic batch; checked against onnxruntime
    export_hf(enc, "out/hf")                      # transformers.VideoMAEModel.from_pretrained(...)

Native encoder directory: ``model.safetensors`` (the encoder's state dict, nothing else) and
``config.json``::

    {"format": "tubelet-encoder", "format_version": 1, "tubelet_version": "0.1.0",
     "class": "pretrain.models.vit:VideoViT", "model": "vit_small", "model_kwargs": {...},
     "num_frames": 16, "img_size": 224, "embed_dim": 384, "mean": [...], "std": [...],
     "data": {"num_frames": 16, "img_size": 224, "sampling_rate": 4}, "head": null, "source": "..."}

``load_encoder`` rebuilds ``class(**model_kwargs)`` and loads the tensors with the exact key set
asserted; a classification import also holds ``head.safetensors`` (``weight``, ``bias``), which
:func:`load_classifier` puts on a :class:`finetune.heads.VideoClassifier`.

A pretrainer directory (imported ``VideoMAEForPreTraining`` / original pretraining ``.pth``)
has the layout of a run's ``final/``: ``model.safetensors`` (full pretrainer state dict, tubelet
names) + ``config.json`` ``{"model": NAME, "model_kwargs": {...}}``; see
:func:`load_pretrainer_init`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from finetune.importers import IMAGENET_MEAN, IMAGENET_STD, Imported, load_exact
from finetune.sources import ENCODER_FORMAT, Source, open_source

__all__ = ["save_encoder", "load_encoder", "load_classifier", "load_pretrainer_init", "export_onnx", "export_hf",
           "export_hf_pretraining", "write_imported", "save_source", "encoder_config", "pooled"]

FORMAT_VERSION = 1
PRETRAINER_FORMAT = "tubelet-pretrainer"


def _version() -> str:
    from pretrain import __version__

    return __version__


def _contiguous(sd: dict) -> dict:
    """Detached, contiguous, storage-unshared copies (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for k, v in sd.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone().contiguous() if key in seen else v.contiguous()
        if key is not None:
            seen.add(key)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def pooled(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features ``(B, D)`` of ``x: (B, 3, T, H, W)``, skipping any classifier head."""
    if hasattr(enc, "forward_head"):
        return enc.forward_head(enc.forward_features(x), pre_logits=True)
    return enc(x)


# ------------------------------------------------------------------------------------------------
# native


def encoder_config(enc: nn.Module, *, name: Optional[str] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   data: Optional[dict] = None, source: str = "", head: Optional[dict] = None,
                   labels: Optional[list] = None) -> dict:
    """The ``config.json`` of a native encoder directory (see module docstring)."""
    mc = getattr(enc, "model_config", None)
    if not isinstance(mc, dict):
        raise TypeError(f"{type(enc).__name__} has no model_config dict; cannot describe it for rebuilding")
    json.dumps(mc)  # raises if the constructor kwargs are not JSON-serialisable
    cls = type(enc)
    img = mc.get("img_size", 224)
    geom = {"num_frames": mc.get("num_frames"), "img_size": img[0] if isinstance(img, (list, tuple)) else img}
    return {"format": ENCODER_FORMAT, "format_version": FORMAT_VERSION, "tubelet_version": _version(),
            "class": f"{cls.__module__}:{cls.__qualname__}", "model": name, "model_kwargs": mc,
            **geom, "embed_dim": getattr(enc, "embed_dim", None), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "data": {**geom, **(data or {})},
            "head": None if head is None else {"num_classes": int(head["weight"].shape[0]), "labels": labels},
            "source": source}


def save_encoder(enc: nn.Module, out_dir: str | Path, *, name: Optional[str] = None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, data: Optional[dict] = None, source: str = "",
                 head: Optional[dict] = None, labels: Optional[list] = None) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}`` (+ ``head.safetensors`` with ``head``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = encoder_config(enc, name=name, mean=mean, std=std, data=data, source=source, head=head, labels=labels)
    save_file(_contiguous(enc.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    if head is not None:
        save_file(_contiguous({"weight": head["weight"], "bias": head["bias"]}), str(out / "head.safetensors"),
                  metadata={"format": "pt"})
    _write_json(out / "config.json", cfg)
    return out


def save_source(src: Source, out_dir: str | Path) -> Path:
    """Native encoder directory for whatever :func:`open_source` read (pretrainer: its encoder)."""
    return save_encoder(src.encoder, out_dir, name=_encoder_name(src), mean=src.mean, std=src.std,
                        data=src.data, source=src.origin, head=src.head, labels=src.labels)


def _encoder_name(src: Source) -> Optional[str]:
    """The registered encoder size the weights have (``vit_small``...), None for custom sizes."""
    from finetune.importers import _size_name

    mc = getattr(src.encoder, "model_config", None) or {}
    if src.encoder is src.model and src.name and not src.name.startswith("vit_"):
        return src.name  # another family (e.g. mvitv2_*): keep its registered name
    return _size_name(mc, "vit")


def load_encoder(path: str | Path, device: str | torch.device = "cpu", **import_kw) -> nn.Module:
    """The encoder held by ``path`` (exported encoder dir, run dir, checkpoint, HF dir, ``.pth``),
    in eval mode on ``device``. No pickle is ever executed."""
    return open_source(path, **import_kw).encoder.eval().to(device)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Encoder + imported head as a :class:`finetune.heads.VideoClassifier` (eval mode)."""
    from finetune.heads import VideoClassifier

    src = open_source(path)
    if src.head is None:
        raise ValueError(f"{path}: has no classifier head (import a classification checkpoint)")
    clf = VideoClassifier(src.encoder, num_classes=int(src.head["weight"].shape[0]))
    load_exact(clf.head, src.head, f"{path} head")
    return clf.eval().to(device)


def load_pretrainer_init(path: str | Path, mae: nn.Module) -> dict:
    """Load the pretrainer weights of ``path`` (imported pretrainer dir, run, checkpoint, HF
    ``VideoMAEForPreTraining`` dir, original pretraining ``.pth``) into ``mae``, asserting the
    exact key set and shapes. Returns a report ``{"tensors", "parameters", "source"}``."""
    src = open_source(path)
    if src.model is src.encoder:
        raise ValueError(f"{path}: holds an encoder only; a pretrainer init needs the decoder too")
    ours = getattr(mae, "encoder", None)
    theirs = src.model.encoder
    if ours is not None and getattr(ours, "model_config", None) and ours.model_config.get("num_frames") is not None:
        for k in ("num_frames", "img_size", "patch_size", "tubelet_size", "pos_embed_type", "attn_type"):
            if ours.model_config.get(k) != theirs.model_config.get(k):
                raise ValueError(f"{path}: encoder {k}={theirs.model_config.get(k)!r} but the model being "
                                 f"trained has {ours.model_config.get(k)!r}")
    report = load_exact(mae, src.model.state_dict(), str(path))
    return {**report, "source": src.origin}


def write_imported(imp: Imported, out_dir: str | Path, origin: str = "") -> Path:
    """Save an :class:`Imported`: encoder dir (model / classification) or pretrainer dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if imp.kind != "pretraining":
        return save_encoder(imp.model, out, name=imp.name, mean=imp.mean, std=imp.std, source=origin,
                            head=imp.head, labels=imp.labels)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(imp.model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    mc = imp.model.encoder.model_config
    _write_json(out / "config.json", {
        "format": PRETRAINER_FORMAT, "format_version": FORMAT_VERSION, "tubelet_version": _version(),
        "model": imp.name, "model_kwargs": imp.model_kwargs, "mean": list(imp.mean), "std": list(imp.std),
        "data": {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0]}, "source": origin})
    _write_pretrain_preset(out, imp)
    return out


def _write_pretrain_preset(out: Path, imp: Imported) -> None:
    """``pretrain.yaml``: the ``model`` / ``data`` settings under which ``tubelet pretrain`` builds
    exactly this architecture (use it as a ``base:`` of a run config)."""
    import yaml

    mc = imp.model.encoder.model_config
    kwargs = {k: v for k, v in imp.model_kwargs.items() if k not in ("num_frames", "img_size")}
    doc = {"model": {"name": imp.name, "kwargs": kwargs},
           "data": {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0],
                    "mean": [float(v) for v in imp.mean], "std": [float(v) for v in imp.std]}}
    for key in ("mask_type", "mask_ratio", "decoder_mask_ratio"):
        if key in kwargs:
            doc["model"][key] = kwargs.pop(key)
    header = (f"# Architecture of {out} (written by `tubelet import`). Use as a base of a pretraining config:\n"
              f"#   base: [{out / 'pretrain.yaml'}]\n")
    (out / "pretrain.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))


# ------------------------------------------------------------------------------------------------
# ONNX


class _OnnxWrapper(nn.Module):
    def __init__(self, enc: nn.Module):
        super().__init__()
        self.enc = enc

    def forward(self, video: torch.Tensor):
        tokens = self.enc.forward_features(video)
        feats = self.enc.forward_head(tokens, pre_logits=True) if hasattr(self.enc, "forward_head") else self.enc(video)
        return tokens, feats


def _input_shape(enc: nn.Module, batch: int) -> tuple:
    mc = enc.model_config
    img = mc["img_size"]
    h, w = img if isinstance(img, (list, tuple)) else (img, img)
    return batch, mc.get("in_chans", 3), mc["num_frames"], h, w


def export_onnx(enc: nn.Module, out_path: str | Path, *, batch_sizes=(2, 3), atol: float = 1e-4,
                opset: int = 18, log: Callable[[str], None] = print) -> dict:
    """ONNX graph ``video (B, 3, T, H, W) -> tokens (B, N, D), features (B, D)`` with dynamic ``B``.

    Exported with the dynamo exporter (falls back to the TorchScript one), then run in
    onnxruntime on random input at each of ``batch_sizes``; the max abs difference to PyTorch is
    printed and must be ``<= atol`` (else ``RuntimeError``). Returns ``{"max_abs_diff": {...}, ...}``.
    """
    import onnxruntime as ort

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _OnnxWrapper(enc).eval().float()
    example = torch.randn(*_input_shape(enc, batch_sizes[0]))
    exporter = "dynamo"
    with torch.no_grad():
        try:
            torch.onnx.export(model, (example,), str(out), dynamo=True, opset_version=opset,
                              external_data=sum(p.numel() for p in model.parameters()) * 4 > 1.5e9,
                              input_names=["video"], output_names=["tokens", "features"],
                              dynamic_shapes={"video": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              verbose=False)
        except Exception as e:  # noqa: BLE001 - the legacy exporter handles some graphs dynamo cannot
            log(f"onnx: dynamo exporter failed ({type(e).__name__}: {str(e)[:200]}); using the TorchScript exporter")
            exporter = "torchscript"
            torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=max(17, min(opset, 20)),
                              input_names=["video"], output_names=["tokens", "features"],
                              dynamic_axes={"video": {0: "batch"}, "tokens": {0: "batch"}, "features": {0: "batch"}})
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(*_input_shape(enc, b), generator=gen)
        with torch.no_grad():
            ref_tok, ref_feat = model(x)
        tok, feat = sess.run(None, {"video": x.numpy()})
        diffs[b] = max(float((torch.from_numpy(tok) - ref_tok).abs().max()),
                       float((torch.from_numpy(feat) - ref_feat).abs().max()))
        log(f"onnx: batch {b}: max |onnxruntime - torch| = {diffs[b]:.3e} (tokens {tuple(tok.shape)}, "
            f"features {tuple(feat.shape)})")
    worst = max(diffs.values())
    if not worst <= atol:
        raise RuntimeError(f"ONNX export {out}: onnxruntime differs from PyTorch by {worst:.3e} > {atol:g}")
    log(f"onnx: OK, {out} ({exporter} exporter, opset {opset}), max abs diff {worst:.3e} <= {atol:g}")
    return {"path": str(out), "exporter": exporter, "max_abs_diff": diffs, "atol": atol}


from finetune.hf_io import export_hf, export_hf_pretraining  # noqa: E402  (public API lives here too)
