"""Ablation: which differences between the small 3D CNN and the small video ViT matter on the
embedded motion benchmark? (``benchmarks/RESULTS_ablation.md``)

``benchmarks/vit_motion.py`` found, with 8000 labels and 1000 steps, the baseline zoo's ``cnn3d`` at
95 % and the 128-wide 2-block ViT (patch 8, tubelet 2) at chance (9.8 %). This script walks from
one model to the other one change at a time, on the same in-memory renders and the same training
protocol (imported from ``vit_motion``: ``render``, ``prepare``; AdamW wd 0.05, 10 % warmup +
cosine, batch 16, no augmentation, top-1 on held-out videos). Every arm is built here from torch /
timm pieces and the library's modules; no library file is changed.

Arms (``--arms``; see ``ARMS`` for the exact one-line description of each):

* CNN side: ``cnn3d`` (the zoo's model as is), ``cnn_nonorm`` / ``cnn_ln`` (BatchNorm removed /
  replaced by a per-position LayerNorm over channels), ``cnn_avgpool`` (max-pools -> average
  pools), ``cnn_patch`` (conv1 + pool1 + pool2 replaced by the ViT's non-overlapping tubelet
  embedding, kernel = stride = (2, 8, 8), 128 channels, then BN-ReLU and the remaining convs on the
  8x4x4 grid), ``cnn_patch_lin`` (the same with the stem linear, as in the ViT), ``cnn_patch_ln``
  (``cnn_patch_lin`` with LayerNorm instead of BN and GELU instead of ReLU after the other convs).
* ViT side: ``vit`` (``create_model("vit_test", ..., embed_dim=128, num_heads=4)`` in
  ``VideoClassifier``, exactly as ``vit_motion``), ``vit_convstem`` (a 3x3x3 stride-1 Conv3d-BN-ReLU,
  16 channels, before the tubelet embedding), ``vit_convstem_nobn``, ``vit_t1`` / ``vit_t4``
  (tubelet 1 / 4), ``vit_p4`` (patch 4), ``vit_diff{1,4,8}`` (temporal-difference init, gain),
  ``vit_diff4_frozen`` (that init, the embedding frozen), ``vit_lr2e-3``, ``vit_bnembed``
  (BatchNorm3d on the tubelet-embedding output), ...

    python benchmarks/vit_cnn_ablation.py --arms cnn3d vit --steps 800           # two arms
    python benchmarks/vit_cnn_ablation.py --arms cnn_patch --seeds 0 1 2 --jsonl /tmp/x.jsonl
    python benchmarks/vit_cnn_ablation.py --list

Results are appended as JSON lines to ``--jsonl`` (arms already there with the same seed, steps,
train size are skipped, so an interrupted chain resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import vit_motion  # noqa: E402  (render / prepare: the protocol this ablation reuses)

from finetune.baselines import create_baseline  # noqa: E402
from finetune.baselines.cnn3d import SafeMaxPool3d, _init_conv3d  # noqa: E402
from finetune.heads import VideoClassifier  # noqa: E402
from pretrain.models import create_model  # noqa: E402

SIZE, FRAMES, CLASSES = 32, 16, 10


# ------------------------------------------------------------------------------------------
# CNN-side building blocks


class ChannelLN(nn.Module):
    """LayerNorm over the channels at every (t, h, w) position (what a ViT's LN does per token)."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.ln(x.movedim(1, -1)).movedim(-1, 1)


def _norm(kind: str, c: int) -> nn.Module:
    return {"bn": lambda: nn.BatchNorm3d(c), "ln": lambda: ChannelLN(c), "none": nn.Identity}[kind]()


def conv_block(cin, cout, norm="bn", act="relu"):
    """cnn3d's block (3x3x3 conv, padding 1 -> norm -> act); the conv has a bias iff no BN."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=norm != "bn"), _norm(norm, cout),
                         nn.ReLU(inplace=True) if act == "relu" else nn.GELU())


class AvgPool(nn.Module):
    def __init__(self, kernel):
        super().__init__()
        self.kernel = tuple(kernel)

    def forward(self, x):
        k = tuple(min(k, s) for k, s in zip(self.kernel, x.shape[2:]))
        return F.avg_pool3d(x, k, k)


class CNNVariant(nn.Module):
    """``cnn3d`` rebuilt with switches. With the defaults it has the same modules, created in the same
    order with the same init as ``create_baseline("cnn3d")`` (checked in ``--selfcheck``).

    stem="conv": stages 16 | 32 | 64,64 | 128,128 of 3x3x3 conv blocks, pools 1x2x2, 2x2x2, 2x2x2.
    stem="patch": conv1 + pool1 + pool2 become one Conv3d(3, 128, k=s=(2, 8, 8)) (the ViT's tubelet
    embedding: 16x32x32 -> 8x4x4 grid), followed by norm + act unless ``stem_linear``; then
    32 | 64,64 | pool (2,1,1) -> 4x4x4 (the grid cnn3d's last stage sees) | 128,128.
    """

    def __init__(self, norm="bn", act="relu", pool="max", stem="conv", stem_linear=False, stem_width=128,
                 stem_kernel=(2, 8, 8), stem_stride=None, stem_pad=(0, 0, 0), conv1=False):
        super().__init__()
        P = SafeMaxPool3d if pool == "max" else AvgPool
        self.stages, self.pools = nn.ModuleList(), nn.ModuleList()
        if stem == "conv":
            self.stem = nn.Identity()
            spec, cin = [(16, 1, (1, 2, 2)), (32, 1, (2, 2, 2)), (64, 2, (2, 2, 2)), (128, 2, None)], 3
        elif stem in ("maxpool", "avgpool"):  # conv1, then all the stem's downsampling as one pool
            self.stem = nn.Sequential(conv_block(3, 16, norm, act),
                                      (SafeMaxPool3d if stem == "maxpool" else AvgPool)(tuple(stem_kernel)))
            spec, cin = [(32, 1, None), (64, 2, (2, 1, 1)), (128, 2, None)], 16
        else:
            stride = tuple(stem_stride or stem_kernel)
            layers = [conv_block(3, 16, norm, act)] if conv1 else []   # cnn3d's conv1 kept before the stem
            layers.append(nn.Conv3d(16 if conv1 else 3, stem_width, tuple(stem_kernel), stride=stride,
                                    padding=tuple(stem_pad)))
            if not stem_linear:
                layers += [_norm(norm, stem_width), nn.ReLU(inplace=True) if act == "relu" else nn.GELU()]
            self.stem = nn.Sequential(*layers)
            g = [(n + 2 * p - k) // st + 1 for n, k, st, p in zip((FRAMES, SIZE, SIZE), stem_kernel, stride, stem_pad)]
            pk = tuple(max(1, v // 4) for v in g)           # bring the grid to cnn3d's last-stage 4x4x4
            spec, cin = [(32, 1, None), (64, 2, None if pk == (1, 1, 1) else pk), (128, 2, None)], stem_width
        for c, d, pk in spec:
            self.stages.append(nn.Sequential(*[conv_block(cin if j == 0 else c, c, norm, act) for j in range(d)]))
            cin = c
            self.pools.append(nn.Identity() if pk is None else P(pk))
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(cin, CLASSES)
        _init_conv3d(self)

    def forward(self, x):
        x = self.stem(x)
        for stage, pool in zip(self.stages, self.pools):
            x = pool(stage(x))
        return self.head(self.drop(x.mean((2, 3, 4))))


# ------------------------------------------------------------------------------------------
# ViT side


def vit(patch=8, tubelet=2, in_chans=3, **extra):
    """The ViT of ``vit_motion.build`` (128 wide, 2 blocks, 4 heads, mean pool + fc_norm, head init 1.0)."""
    enc = create_model("vit_test", img_size=SIZE, num_frames=FRAMES, patch_size=patch, tubelet_size=tubelet,
                       embed_dim=128, num_heads=4, in_chans=in_chans, **extra)
    return VideoClassifier(enc, CLASSES, init_scale=1.0)


class ConvStemViT(nn.Module):
    """A small overlapping 3x3x3 stride-1 conv stem (cnn3d's conv1: 3 -> 16, [BN], ReLU) before the
    ViT's tubelet embedding (which then embeds 16-channel tubelets)."""

    def __init__(self, bn=True, width=16, **vit_kw):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, width, 3, padding=1, bias=not bn),
                                  nn.BatchNorm3d(width) if bn else nn.Identity(), nn.ReLU(inplace=True))
        _init_conv3d(self.stem)
        self.vit = vit(in_chans=width, **vit_kw)

    def forward(self, x):
        return self.vit(self.stem(x))


class PoolStemViT(nn.Module):
    """cnn3d's conv1 (3x3x3 stride 1, 3 -> 16, BN, ReLU) and a max-pool (2, 8, 8) in place of the ViT's
    tubelet embedding's patchify: the pooled 8x4x4 grid of 16-d vectors is embedded by a 1x1x1
    linear (16 -> 128), so the transformer sees the same 128-token grid (and position table)."""

    def __init__(self, pool="max", width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, width, 3, padding=1, bias=False), nn.BatchNorm3d(width),
                                  nn.ReLU(inplace=True))
        _init_conv3d(self.stem)
        self.pool = SafeMaxPool3d((2, 8, 8)) if pool == "max" else AvgPool((2, 8, 8))
        enc = create_model("vit_test", img_size=SIZE // 8, num_frames=FRAMES // 2, patch_size=1, tubelet_size=1,
                           embed_dim=128, num_heads=4, in_chans=width)
        self.vit = VideoClassifier(enc, CLASSES, init_scale=1.0)

    def forward(self, x):
        return self.vit(self.pool(self.stem(x)))


class BNEmbedViT(nn.Module):
    """The ViT with a BatchNorm3d on the tubelet embedding's output (before the position embedding)."""

    def __init__(self, **vit_kw):
        super().__init__()
        self.m = vit(**vit_kw)
        enc = self.m.encoder
        proj = enc.patch_embed.proj
        bn = nn.BatchNorm3d(proj.out_channels)
        enc.patch_embed.proj = nn.Sequential(proj, bn)  # PatchEmbed3d.forward(x) calls proj(x) (ids=None)

    def forward(self, x):
        return self.m(x)


def _frozen_diff(gain):
    m = vit(embed_init="temporal_diff", embed_init_gain=gain)
    m.encoder.patch_embed.proj.requires_grad_(False)
    return m


# name -> (builder, one-line description, extra train kwargs); PREV: the arm each one differs from
ARMS = {
    "cnn3d": (lambda: create_baseline("cnn3d", num_classes=10, num_frames=FRAMES, img_size=SIZE),
              "zoo cnn3d as is (3x3x3 convs, BN, ReLU, max-pools, 16-32-64-128)", {}),
    "cnn_rebuilt": (lambda: CNNVariant(), "cnn3d rebuilt by this script (identity check)", {}),
    "cnn_nonorm": (lambda: CNNVariant(norm="none"), "BatchNorm removed (conv bias instead)", {}),
    "cnn_ln": (lambda: CNNVariant(norm="ln"), "BatchNorm -> per-position LayerNorm over channels", {}),
    "cnn_avgpool": (lambda: CNNVariant(pool="avg"), "max-pools -> average pools", {}),
    "cnn_patch": (lambda: CNNVariant(stem="patch"),
                  "conv1 removed: the patchify Conv3d(3,128,k=s=(2,8,8)) + BN + ReLU sees the pixels "
                  "(= the ViT's tubelet embedding); rest on 8x4x4", {}),
    "cnn_patch_p4": (lambda: CNNVariant(stem="patch", stem_kernel=(2, 4, 4)),
                     "patchify stem spatial 8x8 -> 4x4 (k=s=(2,4,4), 8x8x8 grid, then pool 2x2x2)", {}),
    "cnn_patch_t1": (lambda: CNNVariant(stem="patch", stem_kernel=(1, 8, 8)),
                     "patchify stem temporal 2 -> 1 (k=s=(1,8,8), 16x4x4 grid, then pool 4x1x1)", {}),
    "cnn_patch_ovl": (lambda: CNNVariant(stem="patch", stem_kernel=(4, 16, 16), stem_stride=(2, 8, 8),
                                         stem_pad=(1, 4, 4)),
                      "patchify stem overlapping: kernel (4,16,16), same stride (2,8,8), same 8x4x4 grid", {}),
    "cnn_conv1_patch": (lambda: CNNVariant(stem="patch", conv1=True),
                        "max-pool (2,8,8) -> learned linear patchify Conv3d(16,128,k=s=(2,8,8)) + BN + ReLU", {}),
    "cnn_conv1_maxpool": (lambda: CNNVariant(stem="maxpool"),
                          "cnn3d's pools regrouped: one max-pool (2,8,8) right after conv1 (cnn3d: 1x2x2 after conv1, 2x2x2 "
                          "after conv2, 2x2x2 after conv3b; here 2x1x1 after conv3b); same parameters, same 8x4x4 grid as the ViT", {}),
    "cnn_conv1_avgpool": (lambda: CNNVariant(stem="avgpool"), "max-pool (2,8,8) -> average pool (2,8,8)", {}),
    "cnn_patch_lin": (lambda: CNNVariant(stem="patch", stem_linear=True),
                      "patchify stem linear (no BN/ReLU after it, as the ViT's tubelet embedding)", {}),
    "cnn_patch_ln": (lambda: CNNVariant(stem="patch", stem_linear=True, norm="ln", act="gelu"),
                     "BN -> LayerNorm, ReLU -> GELU in the conv blocks", {}),
    "cnn_patch_ln_avg": (lambda: CNNVariant(stem="patch", stem_linear=True, norm="ln", act="gelu", pool="avg"),
                         "max-pool -> avg-pool", {}),
    "vit": (lambda: vit(), "the ViT of vit_motion (endpoint; vs cnn_patch: stem linear, the 5 BN-ReLU convs + max-pool "
                           "-> sincos pos + 2 transformer blocks + LN + mean pool)", {}),
    "vit_convstem": (lambda: ConvStemViT(bn=True),
                     "3x3x3 stride-1 Conv3d(3,16)+BN+ReLU before the tubelet embedding", {}),
    "vit_convstem_nobn": (lambda: ConvStemViT(bn=False), "conv stem without BN (Conv3d+ReLU)", {}),
    "vit_convstem_lin": (lambda: nn.Sequential(nn.Conv3d(3, 16, 3, padding=1), vit(in_chans=16)),
                         "conv stem linear (Conv3d only, no norm, no ReLU)", {}),
    "vit_poolstem": (lambda: PoolStemViT("max"),
                     "the linear (2,8,8) patchify after the conv stem -> max-pool (2,8,8) + 1x1x1 linear 16 -> 128 (same 8x4x4 tokens)", {}),
    "vit_avgpoolstem": (lambda: PoolStemViT("avg"), "the stem's max-pool -> average pool", {}),
    "vit_bnembed": (lambda: BNEmbedViT(), "BatchNorm3d on the tubelet-embedding output", {}),
    "vit_t1": (lambda: vit(tubelet=1), "tubelet 1 (256 tokens)", {}),
    "vit_t4": (lambda: vit(tubelet=4), "tubelet 4 (64 tokens)", {}),
    "vit_p4": (lambda: vit(patch=4), "patch 4 (512 tokens)", {}),
    "vit_diff1": (lambda: vit(embed_init="temporal_diff", embed_init_gain=1.0), "temporal-difference init, gain 1", {}),
    "vit_diff4": (lambda: vit(embed_init="temporal_diff", embed_init_gain=4.0), "temporal-difference init, gain 4", {}),
    "vit_diff8": (lambda: vit(embed_init="temporal_diff", embed_init_gain=8.0), "temporal-difference init, gain 8", {}),
    "vit_diff4_frozen": (lambda: _frozen_diff(4.0), "temporal-difference init gain 4, embedding frozen", {}),
    "vit_lr2e-3": (lambda: vit(), "LR 5e-4 -> 2e-3", {"lr": 2e-3}),
    "cnn3d_lr2e-3": (lambda: create_baseline("cnn3d", num_classes=10, num_frames=FRAMES, img_size=SIZE),
                     "cnn3d, LR 5e-4 -> 2e-3", {"lr": 2e-3}),
}


PREV = {"cnn_rebuilt": "cnn3d", "cnn_nonorm": "cnn3d", "cnn_ln": "cnn3d", "cnn_avgpool": "cnn3d",
        "cnn_conv1_maxpool": "cnn3d", "cnn_conv1_avgpool": "cnn_conv1_maxpool", "cnn_conv1_patch": "cnn_conv1_maxpool",
        "cnn_patch": "cnn_conv1_patch", "cnn_patch_p4": "cnn_patch", "cnn_patch_t1": "cnn_patch",
        "cnn_patch_ovl": "cnn_patch", "cnn_patch_lin": "cnn_patch", "cnn_patch_ln": "cnn_patch_lin",
        "cnn_patch_ln_avg": "cnn_patch_ln", "vit": "cnn_patch", "vit_convstem": "vit",
        "vit_convstem_nobn": "vit_convstem", "vit_convstem_lin": "vit_convstem_nobn", "vit_bnembed": "vit",
        "vit_poolstem": "vit_convstem", "vit_avgpoolstem": "vit_poolstem",
        "vit_t1": "vit", "vit_t4": "vit", "vit_p4": "vit", "vit_diff1": "vit", "vit_diff4": "vit",
        "vit_diff8": "vit", "vit_diff4_frozen": "vit_diff4", "vit_lr2e-3": "vit", "cnn3d_lr2e-3": "cnn3d"}


# ------------------------------------------------------------------------------------------
# Protocol: vit_motion.train_eval with a model factory (same seeds, schedule, batches)


def train_eval(arm, xtr, ytr, xte, yte, steps, lr, seed=0, log_every=0):
    build, desc, kw = ARMS[arm]
    lr = kw.get("lr", lr)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warm, t0, accs, losses = max(1, steps // 10), time.perf_counter(), [], []
    model.train()
    for s in range(steps):
        f = min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))
        for pg in opt.param_groups:
            pg["lr"] = lr * f
        b = torch.randint(0, len(xtr), (16,), generator=g)
        out = model(vit_motion.prepare(xtr[b], "raw"))
        loss = F.cross_entropy(out, ytr[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((out.argmax(1) == ytr[b]).float().mean().item())
        losses.append(loss.item())
        if log_every and (s + 1) % log_every == 0:
            print(f"    [{arm} s{seed}] step {s + 1}/{steps} loss {np.mean(losses[-log_every:]):.3f} "
                  f"acc {100 * np.mean(accs[-log_every:]):.1f}%  {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        correct = sum((model(vit_motion.prepare(xte[i:i + 100], "raw")).argmax(1) == yte[i:i + 100]).sum().item()
                      for i in range(0, len(xte), 100))
    return {"arm": arm, "change": desc, "seed": seed, "lr": lr, "steps": steps, "train": len(xtr),
            "params": sum(p.numel() for p in model.parameters()),
            "test_top1": correct / len(xte), "train_acc_last100": float(np.mean(accs[-100:])),
            "loss_last100": float(np.mean(losses[-100:])), "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": round(train_s, 1)}


def load_data(n_train, n_test, cache_dir):
    path = Path(cache_dir) / f"renders_{n_train}_{n_test}.pt" if cache_dir else None
    if path is not None and path.exists():
        return torch.load(path)
    xtr, ytr = vit_motion.render("pretrain", n_train, SIZE, 1)
    xte, yte = vit_motion.render("test", n_test, SIZE, 1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save((xtr, ytr, xte, yte), path)
    return xtr, ytr, xte, yte


def selfcheck() -> None:
    """The rebuilt CNN equals the zoo's cnn3d (same parameters at the same seed, same output)."""
    torch.manual_seed(0)
    a = create_baseline("cnn3d", num_classes=10, num_frames=FRAMES, img_size=SIZE).eval()
    torch.manual_seed(0)
    b = CNNVariant().eval()
    pa, pb = list(a.parameters()), list(b.parameters())
    assert [p.shape for p in pa] == [p.shape for p in pb]
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    x = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    for name, (build, _, _) in ARMS.items():
        torch.manual_seed(0)
        m = build()
        out = m(x)
        assert out.shape == (2, CLASSES), (name, out.shape)
        print(f"  {name:<20} {sum(p.numel() for p in m.parameters()):>9,} params  ok")
    print("selfcheck ok: CNNVariant() == cnn3d")


def table(jsonl: str, order=None) -> str:
    """Markdown rows from the results file: one per arm, seeds pooled (mean +- half range)."""
    rows = {}
    for line in open(jsonl):
        r = json.loads(line)
        rows.setdefault(r["arm"], []).append(r)
    out = ["| arm | vs | the one change | seeds | test top-1 | train acc (last 100 steps) | seconds (train+eval, per seed) |",
           "|---|---|---|---|---|---|---|"]

    def fmt(v):
        v = 100 * np.asarray(v)
        return f"{v[0]:.1f} %" if len(v) == 1 else f"{v.mean():.1f} ± {(v.max() - v.min()) / 2:.1f} %"

    for arm in (order or list(rows)):
        rs = sorted(rows.get(arm, []), key=lambda r: r["seed"])
        if not rs:
            continue
        secs = ", ".join(f"{r['seconds']:.0f}" for r in rs)
        prev = f"`{PREV[arm]}`" if arm in PREV else "–"
        out.append(f"| `{arm}` | {prev} | {ARMS[arm][1] if arm in ARMS else rs[0]['change']} | {','.join(str(r['seed']) for r in rs)} | "
                   f"{fmt([r['test_top1'] for r in rs])} | {fmt([r['train_acc_last100'] for r in rs])} | {secs} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", default=["cnn3d", "vit"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="", help="directory to cache the rendered tensors in")
    ap.add_argument("--jsonl", default="", help="append results here; skip arms already in it")
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--selfcheck", action="store_true")
    ap.add_argument("--table", action="store_true", help="print --jsonl as a markdown table (mean +- half range over seeds)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.list:
        for k, (_, d, kw) in ARMS.items():
            print(f"{k:<20} {d}" + (f"  {kw}" if kw else ""))
        return 0
    if a.selfcheck:
        selfcheck()
        return 0
    if a.table:
        print(table(a.jsonl, a.arms if a.arms != ap.get_default("arms") else None))
        return 0
    bad = [x for x in a.arms if x not in ARMS]
    if bad:
        ap.error(f"unknown arms {bad}; --list shows them")
    done = set()
    if a.jsonl and os.path.exists(a.jsonl):
        for line in open(a.jsonl):
            r = json.loads(line)
            done.add((r["arm"], r["seed"], r["steps"], r["train"]))
    xtr, ytr, xte, yte = load_data(a.train, a.test, a.cache)
    print(f"{len(xtr)} train / {len(xte)} test videos 16x{SIZE}x{SIZE}; {a.steps} steps of 16, lr {a.lr}, "
          f"{a.threads} thread(s) (chance 10%)", flush=True)
    for seed in a.seeds:
        for arm in a.arms:
            if (arm, seed, a.steps, a.train) in done:
                print(f"  {arm} seed {seed}: already in {a.jsonl}, skipped", flush=True)
                continue
            r = train_eval(arm, xtr, ytr, xte, yte, a.steps, a.lr, seed, a.log_every)
            print(f"  {arm:<20} seed {seed}  test top-1 {100 * r['test_top1']:5.1f}%   train acc (last 100) "
                  f"{100 * r['train_acc_last100']:5.1f}%   loss {r['loss_last100']:.3f}   {r['seconds']:.0f} s",
                  flush=True)
            if a.jsonl:
                with open(a.jsonl, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
