"""One embedding per video: the average of the encoder's pooled features over K uniformly spaced clips.

    tubelet extract --model exports/enc --shards data/synth/test --out feats/test.npy --num-clips 4
    tubelet extract --model runs/pt --shards data/synth/test --out feats/test.safetensors

Every video of the shards is read exactly once (the loader's eval mode: no shuffling, no
resampling, each sample to one rank/worker; videos that fail to decode are skipped and counted).
Clips are centre-cropped, normalised with the encoder's mean/std and fed in eval mode.
Outputs: ``FILE.npy`` (float32 ``(num_videos, D)``) + ``FILE.keys.json`` (keys and labels in
row order), or ``FILE.safetensors`` with ``embeddings``, ``labels`` and the keys in its metadata.
Rows are sorted by key, so the result does not depend on worker or process counts.
Multi-process: ``torchrun --nproc-per-node N -m launch extract ...`` — each rank embeds its share
and rank 0 writes the merged file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pretrain.cli_util import add_alias

    add_alias(p, p.add_argument("--model", required=True, metavar="PATH",
                                help="the encoder: exported encoder dir, run dir, checkpoint, HF VideoMAE dir "
                                     "or VideoMAE .pth"), "--encoder")
    p.add_argument("--shards", required=True, help="shard directory, glob or brace list")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.npy or FILE.safetensors")
    p.add_argument("--num-clips", type=int, default=4, help="uniformly spaced clips averaged per video (K)")
    p.add_argument("--format", choices=("npy", "safetensors"), default=None,
                   help="default: from the --out suffix (npy otherwise)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    add_alias(p, p.add_argument("--workers", type=int, default=2, help="decoding worker processes"), "--num-workers")
    p.add_argument("--backend", choices=("decord", "pyav"), default="decord", help="video decoder")
    p.add_argument("--sampling-rate", type=int, default=None, help="frame stride (default: the encoder's, else 4)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--tokens", action="store_true", help="use the plain mean of the output tokens instead of the "
                   "encoder's pooled features (which may include an fc_norm)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def data_config(meta: dict, *, batch_size: int, num_workers: int, backend: str,
                sampling_rate: Optional[int] = None):
    """The loader's DataConfig for an encoder: its clip geometry and normalisation."""
    from pretrain.config import DataConfig

    return DataConfig(num_frames=int(meta["num_frames"]), img_size=int(meta["img_size"]),
                      sampling_rate=int(sampling_rate or meta.get("sampling_rate") or 4), batch_size=batch_size,
                      num_workers=num_workers, backend=backend, mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                      test_num_crops=1)


def source_data_config(src, *, batch_size: int, num_workers: int, backend: str = "decord",
                       sampling_rate: Optional[int] = None):
    """:func:`data_config` for a :class:`finetune.interop.weights.Source`: the encoder's clip geometry
    (its ``model_config``, else what the source recorded) and the source's normalisation."""
    mc = getattr(src.encoder, "model_config", {})
    img = mc.get("img_size", src.data.get("img_size"))
    meta = {"num_frames": mc.get("num_frames", src.data.get("num_frames")),
            "img_size": img[0] if isinstance(img, (list, tuple)) else img,
            "sampling_rate": src.data.get("sampling_rate"), "mean": src.mean, "std": src.std}
    return data_config(meta, batch_size=batch_size, num_workers=num_workers, backend=backend,
                       sampling_rate=sampling_rate)


@torch.no_grad()
def extract_embeddings(encoder: nn.Module, cfg, shards: str, *, num_clips: int, rank: int = 0, world_size: int = 1,
                       device: str | torch.device = "cpu", progress: bool = True, tokens: bool = False) -> dict:
    """This rank's share of the videos in ``shards``: ``{key: (sum of K clip features (D,), views seen,
    label)}`` plus ``"_stats"`` (loader counters). Raises if a (video, clip) pair arrives twice."""
    from tqdm import tqdm

    from pretrain.data.loader import build_loader
    from pretrain.data.transforms import normalize_on_device
    from pretrain.probe import ViewSums

    encoder = encoder.eval().to(device)
    loader = build_loader(cfg, "eval", shards=shards, rank=rank, world_size=world_size,
                          num_clips=num_clips, num_crops=1)
    total = None
    if loader.num_samples is not None:
        total = -(-loader.num_samples * num_clips // world_size)
    sums = ViewSums("extract", error=RuntimeError)
    bar = tqdm(total=total, unit="clip", desc="extract", disable=not progress or rank != 0, file=sys.stderr)
    for batch in loader:
        x = normalize_on_device(batch["video"].to(device, non_blocking=True), cfg.mean, cfg.std)
        if tokens:
            feats = encoder.forward_features(x).mean(1)
        elif hasattr(encoder, "forward_head"):  # pooled features, never a classifier's logits
            feats = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
        else:
            feats = encoder(x)
        feats = feats.float().cpu()
        for i, key in enumerate(batch["key"]):
            sums.add(key, int(batch["label"][i]), int(batch["view"][i]), feat=feats[i])
        bar.update(len(batch["key"]))
    bar.close()
    return {**sums.records, "_stats": loader.stats()}


def merge(parts: list[dict], num_clips: int) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Rank results -> ``(keys sorted, embeddings (N, D) float32, labels (N,), stats)``."""
    from pretrain.probe import merge_by_key

    stats = {"decoded": 0, "skipped": 0, "skipped_by_reason": {}}
    for part in parts:
        s = part.get("_stats", {})
        stats["decoded"] += s.get("decoded", 0)
        stats["skipped"] += s.get("skipped", 0)
        for r, n in s.get("skipped_by_reason", {}).items():
            stats["skipped_by_reason"][r] = stats["skipped_by_reason"].get(r, 0) + n
    merged = merge_by_key([{k: v for k, v in part.items() if k != "_stats"} for part in parts], error=RuntimeError)
    keys = sorted(merged)
    incomplete = [k for k in keys if merged[k]["views"] != num_clips]
    if incomplete:
        raise RuntimeError(f"extract: {len(incomplete)} videos got a number of clips other than {num_clips} "
                           f"(e.g. {incomplete[:3]})")
    if not keys:
        return [], np.zeros((0, 0), np.float32), np.zeros((0,), np.int64), stats
    emb = torch.stack([merged[k]["feat"] / num_clips for k in keys]).numpy().astype(np.float32)
    labels = np.array([merged[k]["label"] for k in keys], dtype=np.int64)
    return keys, emb, labels, stats


def write(out: str | Path, keys: list[str], emb: np.ndarray, labels: np.ndarray, fmt: Optional[str] = None,
          meta: Optional[dict] = None) -> list[Path]:
    """Write ``.npy`` + ``.keys.json``, or one ``.safetensors``; returns the files written."""
    out = Path(out)
    fmt = fmt or ("safetensors" if out.suffix == ".safetensors" else "npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"keys": keys, "labels": labels.tolist(), **(meta or {})}
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({"embeddings": emb, "labels": labels}, str(out),
                  metadata={"keys": json.dumps(keys), "info": json.dumps(meta or {})})
        return [out]
    path = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    np.save(path, emb)
    side = path.with_suffix(".keys.json")
    side.write_text(json.dumps(info) + "\n")
    return [path, side]


def run(args: argparse.Namespace) -> int:
    from finetune.interop.sources import open_source_arg
    from pretrain.config import UsageError

    if args.num_clips < 1:
        raise UsageError(f"--num-clips must be >= 1, got {args.num_clips}")
    src = open_source_arg(args.model, "--model")
    enc = src.encoder
    cfg = source_data_config(src, batch_size=args.batch_size, num_workers=args.workers, backend=args.backend,
                             sampling_rate=args.sampling_rate)
    from pretrain.train.runtime import process_state

    state = process_state()
    rank, world = state.process_index, state.num_processes
    device = args.device or state.device
    part = extract_embeddings(enc, cfg, args.shards, num_clips=args.num_clips, rank=rank, world_size=world,
                              device=device, progress=not args.no_progress, tokens=args.tokens)
    parts = [part]
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, part)
    if rank == 0:
        keys, emb, labels, stats = merge(parts, args.num_clips)
        files = write(args.out, keys, emb, labels, args.format,
                      meta={"encoder": src.origin, "num_clips": args.num_clips, "num_frames": cfg.num_frames,
                            "img_size": cfg.img_size, "sampling_rate": cfg.sampling_rate, "stats": stats})
        print(f"extract: {len(keys)} videos x {emb.shape[1] if emb.size else 0} dims ({args.num_clips} clips each); "
              f"skipped {stats['skipped']} {stats['skipped_by_reason'] or ''} -> {', '.join(map(str, files))}")
    state.wait_for_everyone()
    return 0
