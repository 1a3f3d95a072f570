"""Export an encoder: native safetensors + config.json, ONNX, or a Hugging Face VideoMAE directory.

    tubelet export --from runs/pt --out exports/enc --format native
    tubelet export --from runs/pt/checkpoints/step_00001000 --out exports/onnx --format onnx
    tubelet export --from exports/enc --out exports/hf --format hf
    tubelet export --from runs/pt --out exports/hf_pt --format hf --with-decoder

--from takes a pretraining run directory (its final/ model, else its newest complete checkpoint,
DeepSpeed ZeRO shards included), one checkpoint directory, a fine-tuning run, an exported encoder
directory, a Hugging Face VideoMAE directory or an original VideoMAE .pth. ONNX and HF exports
check themselves (onnxruntime / transformers against PyTorch) and print the measured difference;
the command fails when it is above --atol.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMATS = ("native", "onnx", "hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="run dir, checkpoint dir, encoder dir, HF VideoMAE dir or VideoMAE .pth")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (onnx: DIR/encoder.onnx, "
                   "or a path ending in .onnx)")
    p.add_argument("--format", choices=FORMATS, default="native")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by the self-checks")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--no-head", action="store_true",
                   help="hf/native: leave out a classifier head (encoder only, VideoMAEModel)")
    p.add_argument("--with-decoder", action="store_true",
                   help="hf: export the whole pretrainer as VideoMAEForPreTraining (source must hold a decoder)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 3],
                   help="batch sizes the ONNX check runs (the graph's batch axis is dynamic)")
    g = p.add_argument_group("original VideoMAE .pth sources (geometry is not stored in them)")
    g.add_argument("--num-frames", type=int, default=16)
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--num-heads", type=int, default=None, help="encoder heads (default: VideoMAE's for the width)")


def run(args: argparse.Namespace) -> int:
    """Bad input (missing or unreadable --from, a model HF cannot express) raises UsageError (one
    line, exit 2, from :func:`pretrain.cli_util.run_command`); a failed self-check RuntimeError (exit 1)."""
    from finetune.interop.hf import HFConversionError, export_hf, export_hf_pretraining
    from finetune.interop.native import save_source
    from finetune.interop.onnx import export_onnx, onnx_sidecar
    from finetune.interop.sources import open_source_arg
    from pretrain.config import ConfigError, UsageError

    if args.opset < 17:
        raise UsageError(f"--opset must be >= 17, got {args.opset}")
    kw = dict(num_frames=args.num_frames, img_size=args.img_size, num_heads=args.num_heads) \
        if Path(args.source).is_file() else {}
    src = open_source_arg(args.source, "--from", **kw)
    enc = src.encoder.eval()
    if args.no_head:
        src.head = None
    n_params = sum(p.numel() for p in enc.parameters())
    print(f"export: {src.origin}: {type(enc).__name__} ({n_params / 1e6:.2f}M parameters, "
          f"{src.report.get('tensors', '?')} tensors loaded)")
    out = Path(args.out)
    try:
        if args.format == "native":
            path = save_source(src, out)
            print(f"export: wrote {path}/config.json and model.safetensors")
        elif args.format == "onnx":
            path = out if out.suffix == ".onnx" else out / "encoder.onnx"
            export_onnx(enc, path, batch_sizes=tuple(args.batch_sizes), atol=args.atol, opset=args.opset)
            path.with_suffix(".json").write_text(json.dumps(onnx_sidecar(enc, src.mean, src.std, src.origin),
                                                            indent=1) + "\n")
        elif args.with_decoder:
            if src.kind != "pretraining":
                raise UsageError(f"--with-decoder: {src.origin} holds no decoder")
            export_hf_pretraining(src.model, out, mean=src.mean, std=src.std, atol=args.atol)
        else:
            export_hf(enc, out, head=src.head, labels=src.labels, mean=src.mean, std=src.std, atol=args.atol)
    except HFConversionError as e:
        raise ConfigError(str(e)) from e
    return 0

