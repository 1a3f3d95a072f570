"""Import Hugging Face VideoMAE directories or original VideoMAE / VideoMAE V2 .pth checkpoints.

    tubelet import --from hf/videomae-base --out imported/base-pt            # VideoMAEForPreTraining
    tubelet import --from hf/videomae-base-finetuned-kinetics --out imported/k400
    tubelet import --from vit_b_k710_dl_from_giant.pth --out imported/v2b --num-frames 16 --img-size 224

Kinds (--kind auto picks from the checkpoint): ``model`` (encoder only) and ``classification``
(encoder + fc_norm + linear head) write an encoder directory (config.json + model.safetensors
[+ head.safetensors]) that ``tubelet finetune --init DIR``, ``tubelet extract --encoder DIR`` and
``finetune.export.load_encoder(DIR)`` read; ``pretraining`` (encoder + decoder) writes a
pretrainer directory laid out like a run's final/ (config.json with model/model_kwargs +
model.safetensors) to continue pretraining from. Every tensor is accounted for (exact key sets);
q/v biases become the qkv bias with a zero k bias. HF imports are checked against transformers
(when installed) and the measured differences printed. .pth files are read with
torch.load(weights_only=True) only: a file that needs more is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="Hugging Face VideoMAE directory, or a VideoMAE / VideoMAE V2 .pth / .pt / .safetensors")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--kind", choices=("auto", "model", "pretraining", "classification"), default="auto")
    p.add_argument("--no-check", action="store_true", help="skip the comparison against transformers (HF sources)")
    p.add_argument("--atol", type=float, default=1e-4)
    g = p.add_argument_group(".pth sources (not stored in VideoMAE checkpoints)")
    g.add_argument("--num-frames", type=int, default=16, help="clip length the model was trained on")
    g.add_argument("--img-size", type=int, default=224, help="input size the model was trained on")
    g.add_argument("--num-heads", type=int, default=None, help="encoder heads (default: VideoMAE's for the width)")
    g.add_argument("--decoder-num-heads", type=int, default=None,
                   help="decoder heads (default: VideoMAE's for the decoder width)")


def run(args: argparse.Namespace) -> int:
    from finetune.export import write_imported
    from finetune.hf import HFConversionError
    from finetune.importers import import_hf, import_original, is_hf_dir
    from finetune.safe_load import UnsafeCheckpointError

    src = Path(args.source)
    try:
        if src.is_dir():
            if not is_hf_dir(src):
                print(f"tubelet import: {src}: not a Hugging Face VideoMAE directory (config.json with "
                      "model_type 'videomae')", file=sys.stderr)
                return 2
            imp = import_hf(src, kind=args.kind)
        elif src.is_file():
            imp = import_original(src, kind=args.kind, num_frames=args.num_frames, img_size=args.img_size,
                                  num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads)
        else:
            print(f"tubelet import: {src}: does not exist", file=sys.stderr)
            return 2
    except (UnsafeCheckpointError, HFConversionError, FileNotFoundError, ValueError) as e:
        print(f"tubelet import: {e}", file=sys.stderr)
        return 2
    r = imp.report
    print(f"import: {src} -> {imp.kind}: {type(imp.model).__name__} ({imp.name or 'custom size'}), "
          f"{r['tensors']} tensors / {r['parameters'] / 1e6:.2f}M values loaded"
          + (f", initialised fresh: {', '.join(r['initialised_fresh'])}" if r.get("initialised_fresh") else "")
          + (f", head: {tuple(imp.head['weight'].shape)}" if imp.head is not None else ""))
    if src.is_dir() and not args.no_check:
        import importlib.util

        try:
            if importlib.util.find_spec("transformers") is None:
                print("import: transformers not installed; skipping the parity check")
            else:
                from finetune.hf_io import check_hf_import

                check_hf_import(src, imp, atol=args.atol)
        except RuntimeError as e:
            print(f"tubelet import: FAILED: {e}", file=sys.stderr)
            return 1
    out = write_imported(imp, args.out, origin=str(src))
    print(f"import: wrote {out}")
    return 0
