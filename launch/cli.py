"""The ``tubelet`` command line (also ``python -m launch``).

Each command lives in the module that implements it; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's module is imported,
so ``tubelet --help`` stays fast.

    tubelet synth --out data/synth
    tubelet pretrain --config configs/pretrain/synth_tiny.yaml data.shards=data/synth/pretrain
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pretrain.data.synth", "write the procedural motion dataset (pretrain/train/val/test shards)"),
    "shard": ("pretrain.data.make_shards", "turn videos (CSV, list or class folders) into WebDataset shards"),
    "verify": ("pretrain.data.verify", "decode every sample of a shard directory; non-zero exit on any bad one"),
    "preview": ("pretrain.data.preview", "save a PNG grid of clips sampled through the loader"),
    "pretrain": ("pretrain.main", "pretrain a masked autoencoder (VideoMAE / MaskFeat-MViTv2)"),
    "finetune": ("finetune.main", "fine-tune or probe an encoder, or train a baseline, on labeled clips"),
    "evaluate": ("finetune.evaluate", "multi-view (K clips x C crops) evaluation of a classifier"),
    "export": ("finetune.interop.export_cli", "export an encoder: native safetensors, ONNX or Hugging Face VideoMAE"),
    "import": ("finetune.interop.import_cli", "import Hugging Face VideoMAE or original VideoMAE .pth checkpoints"),
    "extract": ("finetune.extract", "one embedding per video (K-clip average) to .npy or safetensors"),
    "compare": ("finetune.compare", "Markdown report comparing fine-tuned models and baselines"),
    "config": ("launch.config_cmd", "print a merged config with every key's documentation (the key reference)"),
    "demo": ("launch.demo", "run the whole pipeline on the embedded synthetic benchmark"),
    "bench": ("launch.bench", "run the speed benchmarks (see benchmarks/)"),
}


def _top_help() -> str:
    lines = ["usage: tubelet COMMAND [--help] [args...]", "", "Self-supervised video pretraining.", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("Run 'tubelet COMMAND --help' for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("tubelet"))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"tubelet: unknown command {cmd!r}\n", file=sys.stderr)
        print(_top_help(), file=sys.stderr)
        return 2
    module_name, text = COMMANDS[cmd]
    from pretrain.cli_util import run_command

    return run_command(importlib.import_module(module_name), rest, f"tubelet {cmd}", text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
