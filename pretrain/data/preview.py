"""Save a PNG grid of clips sampled through the loader (one row per clip, key and label on the left).

Shows exactly what training sees: decode, clip sampling, crop, flip and repeats of the real loader.

    tubelet preview --shards data/synth/train --out preview.png --num 8
    tubelet preview --config configs/pretrain/synth_tiny.yaml --mode eval data.test_num_crops=3
"""

from __future__ import annotations

import argparse
import dataclasses
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from pretrain.config import DataConfig, apply_overrides, from_dict, load_yaml_layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", help="shard directory, glob, brace list or pipe: URL "
                                         "(default: data.shards for train, data.val_shards for eval)")
    parser.add_argument("--config", help="YAML preset whose data: section configures the loader")
    parser.add_argument("--mode", choices=["train", "eval"], default="train",
                        help="train: augmented random clips; eval: the deterministic test views")
    parser.add_argument("--num", type=int, default=8, help="clips to show (rows)")
    parser.add_argument("--frames", type=int, default=8, help="frames shown per clip, evenly spaced")
    parser.add_argument("--seed", type=int, default=0, help="loader seed (train mode)")
    parser.add_argument("--out", default="preview.png", help="output PNG path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="data config overrides, e.g. data.hflip=false data.num_frames=8")


def data_config(config: str | None, overrides: list[str]) -> DataConfig:
    """The ``data`` section of a (pretrain or finetune) YAML preset plus ``data.key=value`` overrides."""
    doc = load_yaml_layers(config) if config else {}
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in overrides]
    doc = apply_overrides(doc, overrides)
    return from_dict(DataConfig, doc.get("data") or {}, prefix="data")


def save_clip_grid(videos: torch.Tensor, labels: list[str], path: str | Path, frames: int = 8) -> Path:
    """videos: (N, 3, T, H, W) uint8 -> PNG with N rows of ``frames`` evenly spaced frames each,
    ``labels[i]`` written left of row i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.visualize import save_figure

    n, _, t = videos.shape[:3]
    cols = max(1, min(frames, t))
    pick = np.round(np.linspace(0, t - 1, cols)).astype(int)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols + 1.6, 1.3 * n), squeeze=False)
    for i in range(n):
        for j, f in enumerate(pick):
            ax = axes[i][j]
            ax.imshow(videos[i, :, f].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={f}", fontsize=7)
        axes[i][0].set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    from pretrain.data.loader import build_loader

    if args.num < 1 or args.frames < 1:
        raise SystemExit("tubelet preview: --num and --frames must be >= 1")
    cfg = data_config(args.config, args.overrides)
    cfg = dataclasses.replace(cfg, num_workers=0, batch_size=min(args.num, 16))
    loader = build_loader(cfg, args.mode, shards=args.shards, seed=args.seed)
    videos, texts = [], []
    for batch in islice(loader, 10_000):
        for v, label, key, view in zip(batch["video"], batch["label"].tolist(), batch["key"], batch["view"].tolist()):
            name = loader.classes[label] if loader.classes and 0 <= label < len(loader.classes) else str(label)
            texts.append(f"{key}\n{name}" + (f"\nview {view}" if args.mode == "eval" else ""))
            videos.append(v)
        if len(videos) >= args.num:
            break
    if not videos:
        print(f"tubelet preview: no clips could be read; loader stats {loader.stats()}")
        return 1
    path = save_clip_grid(torch.stack(videos[: args.num]), texts[: args.num], args.out, args.frames)
    st = loader.stats()
    print(f"wrote {path} ({min(len(videos), args.num)} clips of {cfg.num_frames}x{cfg.img_size}x{cfg.img_size}; "
          f"decoded {st['decoded']}, skipped {st['skipped']}" + (f" {st['skipped_by_reason']}" if st["skipped"] else "") + ")")
    return 0
