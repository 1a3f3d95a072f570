"""Diagnostic: can a small video ViT learn the synthetic benchmark's motion classes at all?

The demo's headline claim (a VideoMAE-pretrained ViT beats the same ViT from scratch by >= 15
points) needs the ViT to *be able* to learn motion. This script measures the ceiling that
supervision alone gives, with plenty of labels, and compares it with a 3D CNN on the same data:

* ``raw``:  ViT on the normalised frames (what fine-tuning sees),
* ``diffinit``: the same ViT on the frames, its tubelet embedding initialised as a temporal
  difference (``embed_init="temporal_diff"``: ``w[:, :, 1] = -w[:, :, 0]``, gain 4),
* ``diff``: the same ViT on frame differences ``x[t+1] - x[t]`` (a hand-made motion input),
* ``cnn3d``: the baseline zoo's small 3D CNN on the normalised frames.

Videos are rendered in memory by the benchmark's own renderer (``render_video``; no H.264 round
trip, so this isolates the model from the data path), labels ``i % 10``. Training: AdamW, cosine
with warmup, batch 16, no augmentation, top-1 on 500 held-out videos.

    python benchmarks/vit_motion.py                      # 8000 labeled videos, 1000 steps each (~3 min)
    python benchmarks/vit_motion.py --inputs raw diffinit --gains 1 2 4 8 --shares 0.5 1
    python benchmarks/vit_motion.py --train 1000 --steps 300 --inputs raw cnn3d
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from pretrain.data.synth import render_video, video_rng  # noqa: E402

MEAN, STD = 0.45, 0.225


def _render(job):
    split, i, size = job
    return render_video(i % 10, video_rng(0, split, i), 16, size, "easy")


def render(split: str, n: int, size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` videos -> uint8 ``(n, 3, 16, S, S)`` and labels ``i % 10``."""
    with Pool(workers) as pool:
        vids = pool.map(_render, [(split, i, size) for i in range(n)], chunksize=64)
    x = torch.from_numpy(np.stack(vids)).permute(0, 4, 1, 2, 3).contiguous()
    return x, torch.arange(n) % 10


def prepare(u: torch.Tensor, mode: str) -> torch.Tensor:
    x = (u.float() / 255 - MEAN) / STD
    if mode == "diff":
        d = x[:, :, 1:] - x[:, :, :-1]
        x = torch.cat([d, d[:, :, -1:]], 2) * 4      # keep T (the tubelet grid) and a similar scale
    return x


def build(mode: str, size: int, patch: int, gain: float = 4.0, share: float = 1.0):
    from finetune.baselines import create_baseline
    from finetune.heads import VideoClassifier
    from pretrain.models import create_model

    if mode == "cnn3d":
        return create_baseline("cnn3d", num_classes=10, num_frames=16, img_size=size)
    extra = dict(embed_init="temporal_diff", embed_init_gain=gain, embed_init_share=share) if mode == "diffinit" else {}
    enc = create_model("vit_test", img_size=size, num_frames=16, patch_size=patch, tubelet_size=2,
                       embed_dim=128, num_heads=4, **extra)
    return VideoClassifier(enc, 10, init_scale=1.0)


def train_eval(mode, xtr, ytr, xte, yte, steps, lr, size, patch, seed=0, gain=4.0, share=1.0) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build(mode, size, patch, gain, share)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm, t0, accs = max(1, steps // 10), time.perf_counter(), []
    for s in range(steps):
        f = min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))
        for pg in opt.param_groups:
            pg["lr"] = lr * f
        b = torch.randint(0, len(xtr), (16,), generator=g)
        out = model(prepare(xtr[b], mode))
        loss = F.cross_entropy(out, ytr[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((out.argmax(1) == ytr[b]).float().mean().item())
    model.eval()
    with torch.no_grad():
        correct = sum((model(prepare(xte[i:i + 100], mode)).argmax(1) == yte[i:i + 100]).sum().item()
                      for i in range(0, len(xte), 100))
    return {"input": mode, "gain": gain if mode == "diffinit" else None,
            "share": share if mode == "diffinit" else None, "test_top1": correct / len(xte), "train_acc_last100": float(np.mean(accs[-100:])),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=8000, help="labeled training videos (labels i %% 10)")
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--inputs", nargs="+", default=["raw", "diff", "cnn3d"], choices=["raw", "diffinit", "diff", "cnn3d"])
    ap.add_argument("--gains", type=float, nargs="+", default=[4.0], help="diffinit: embedding gains to try")
    ap.add_argument("--shares", type=float, nargs="+", default=[1.0], help="diffinit: shares of channels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    xtr, ytr = render("pretrain", a.train, a.size, a.threads)
    xte, yte = render("test", a.test, a.size, a.threads)
    print(f"{a.train} train / {a.test} test videos 16x{a.size}x{a.size}; ViT 128 wide, 2 blocks, patch {a.patch}, "
          f"tubelet 2; {a.steps} steps of 16, lr {a.lr} (chance 10%)", flush=True)
    rows = []
    runs = [(m, g, s) for m in a.inputs for g in (a.gains if m == "diffinit" else [4.0])
            for s in (a.shares if m == "diffinit" else [1.0])]
    for mode, gain, share in runs:
        r = train_eval(mode, xtr, ytr, xte, yte, a.steps, a.lr, a.size, a.patch, gain=gain, share=share)
        rows.append(r)
        name = "cnn3d (frames)" if mode == "cnn3d" else (
            f"ViT (diffinit x{gain:g}, {share:g})" if mode == "diffinit" else f"ViT ({mode})")
        print(f"  {name:<24} test top-1 {100 * r['test_top1']:5.1f}%   train acc (last 100 steps) "
              f"{100 * r['train_acc_last100']:5.1f}%   {r['seconds']:.0f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
