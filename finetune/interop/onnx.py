"""ONNX export of an encoder, checked against onnxruntime.

    export_onnx(enc, "out/enc.onnx")    # video (B, 3, T, H, W) -> tokens (B, N, D), features (B, D)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from finetune.interop.weights import clip_shape

INPUT_NAMES, OUTPUT_NAMES = ["video"], ["tokens", "features"]


class _OnnxWrapper(nn.Module):
    def __init__(self, enc: nn.Module):
        super().__init__()
        self.enc = enc

    def forward(self, video: torch.Tensor):
        tokens = self.enc.forward_features(video)
        feats = self.enc.forward_head(tokens, pre_logits=True) if hasattr(self.enc, "forward_head") else self.enc(video)
        return tokens, feats


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
    example = torch.randn(*clip_shape(enc, batch_sizes[0]))
    exporter = "dynamo"
    with torch.no_grad():
        try:
            torch.onnx.export(model, (example,), str(out), dynamo=True, opset_version=opset,
                              external_data=sum(p.numel() for p in model.parameters()) * 4 > 1.5e9,
                              input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              dynamic_shapes={"video": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              verbose=False)
        except Exception as e:  # noqa: BLE001 - the legacy exporter handles some graphs dynamo cannot
            log(f"onnx: dynamo exporter failed ({type(e).__name__}: {str(e)[:200]}); using the TorchScript exporter")
            exporter = "torchscript"
            torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=max(17, min(opset, 20)),
                              input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              dynamic_axes={"video": {0: "batch"}, "tokens": {0: "batch"}, "features": {0: "batch"}})
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(*clip_shape(enc, b), generator=gen)
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


def onnx_sidecar(enc: nn.Module, mean, std, source: str) -> dict:
    """The ``.json`` written next to an ONNX export: what the graph takes and gives."""
    mc = enc.model_config
    return {"input": "video (B, 3, T, H, W) float32, (x / 255 - mean) / std",
            "outputs": {"tokens": "(B, N, D)", "features": "(B, D) pooled"},
            "mean": list(mean), "std": list(std), "num_frames": mc.get("num_frames"), "img_size": mc.get("img_size"),
            "source": source}
