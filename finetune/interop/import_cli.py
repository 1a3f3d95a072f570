"""Import Hugging Face VideoMAE directories or original VideoMAE / VideoMAE V2 .pth checkpoints.

    tubelet import --from hf/videomae-base --out imported/base-pt            # VideoMAEForPreTraining
    tubelet import --from hf/videomae-base-finetuned-kinetics --out imported/k400
    tubelet import --from vit_b_k710_dl_from_giant.pth --out imported/v2b --num-frames 16 --img-size 224

Kinds (--kind auto picks from the checkpoint): ``model`` (encoder only) and ``classification``
(encoder + fc_norm + linear head) write an encoder directory (config.json + model.safetensors
[+ head.safetensors]) that ``tubelet finetune --init DIR``, ``tubelet extract --model DIR`` and
``tubelet.load_encoder(DIR)`` read; ``pretraining`` (encoder + decoder) writes a pretrainer
directory laid out like a run's final/ (config.json with model/model_kwargs + model.safetensors
+ pretrain.yaml) to continue pretraining from (``model.init=DIR``). Every tensor is accounted for
(exact key sets); q/v biases become the qkv bias with a zero k bias. HF imports are checked
against transformers (when installed) and the measured differences printed. .pth files are read
with torch.load(weights_only=True) only: a file that needs more is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune.interop.weights import KINDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="Hugging Face VideoMAE directory, or a VideoMAE / VideoMAE V2 .pth / .pt / .safetensors")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--kind", choices=("auto",) + KINDS, default="auto")
    p.add_argument("--no-check", action="store_true", help="skip the comparison against transformers (HF sources)")
    p.add_argument("--atol", type=float, default=1e-4)
    g = p.add_argument_group(".pth sources (not stored in VideoMAE checkpoints)")
    g.add_argument("--num-frames", type=int, default=16, help="clip length the model was trained on")
    g.add_argument("--img-size", type=int, default=224, help="input size the model was trained on")
    g.add_argument("--num-heads", type=int, default=None, help="encoder heads (default: VideoMAE's for the width)")
    g.add_argument("--decoder-num-heads", type=int, default=None,
                   help="decoder heads (default: VideoMAE's for the decoder width)")


def run(args: argparse.Namespace) -> int:
    """Bad input (missing --from, a directory that is not HF VideoMAE, a refused or unconvertible
    checkpoint) raises UsageError (one line, exit 2, from :func:`pretrain.cli_util.run_command`);
    a failed check against transformers RuntimeError (exit 1)."""
    from finetune.interop.hf import check_hf_import, import_hf, is_hf_dir
    from finetune.interop.native import save_pretrainer, save_source
    from finetune.interop.pth import import_original
    from finetune.interop.sources import UNREADABLE
    from pretrain.config import UsageError

    src_path = Path(args.source)
    if not src_path.exists():
        raise UsageError(f"--from: {src_path}: does not exist")
    if src_path.is_dir() and not is_hf_dir(src_path):
        raise UsageError(f"--from: {src_path}: not a Hugging Face VideoMAE directory (config.json with model_type "
                          f"'videomae'){_tubelet_hint(src_path)}")
    try:
        if src_path.is_dir():
            src = import_hf(src_path, kind=args.kind)
        else:
            src = import_original(src_path, kind=args.kind, num_frames=args.num_frames, img_size=args.img_size,
                                  num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads)
    except UNREADABLE as e:
        raise UsageError(f"--from: {e}") from e
    r = src.report
    print(f"import: {src_path} -> {src.kind}: {type(src.model).__name__} ({src.name or 'custom size'}), "
          f"{r['tensors']} tensors / {r['parameters'] / 1e6:.2f}M values loaded"
          + (f", initialised fresh: {', '.join(r['initialised_fresh'])}" if r.get("initialised_fresh") else "")
          + (f", head: {tuple(src.head['weight'].shape)}" if src.head is not None else ""))
    if src_path.is_dir() and not args.no_check:
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            print("import: transformers not installed; skipping the parity check")
        else:
            check_hf_import(src_path, src, atol=args.atol)
    if src.kind == "pretraining":
        out = save_pretrainer(src, args.out, source=str(src_path))
    else:
        out = save_source(src, args.out, source=str(src_path))
    print(f"import: wrote {out}")
    return 0


def _tubelet_hint(d: Path) -> str:
    """What a tubelet directory given to import is, and where it goes instead."""
    if (d / "final").is_dir() or (d / "checkpoints").is_dir() or (d / "config.yaml").is_file() \
            or (d / "config.json").is_file():
        return ("; tubelet runs, checkpoints and exports need no import: give them to `tubelet export --from`, "
                "`tubelet finetune --init` or `tubelet.load_encoder` directly")
    return ""
