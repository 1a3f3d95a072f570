"""Pretraining levers: does VideoMAE pretraining of the demo ViT beat the same ViT from scratch?

One run = one *lever* configuration (named below, several joined with ``+``):

1. render (once, cached to ``--cache``) ``--n-pretrain`` unlabeled videos (split ``pretrain``),
   1000 labeled (split ``train``, labels ``i % 10``) and 500 test videos (split ``test``) with the
   benchmark's own renderer (``render_video``, ``easy``, 16 x 32 x 32, no H.264 round trip);
2. build ``videomae_test`` widened to 128 / 4 heads, patch 8, tubelet 2, tubelet embedding
   initialised as a temporal difference (``embed_init="temporal_diff"``, gain 4, share 1), pixel
   targets (``norm_pix_loss=False``), tube mask 0.75; pretrain it ``--pretrain-steps`` steps of 16
   (AdamW betas (0.9, 0.95), LR 4e-3, wd 0.05, 10 % linear warmup + cosine; no augmentation: a flip
   would change the motion classes);
3. frozen encoder probes on mean-pooled tokens: kNN (k=20, cosine on L2-normalised features,
   DINO votes ``exp(sim / 0.07)``; fit on the 1000 labeled, score on test), raw and after a
   per-feature standardisation, and a linear probe (standardised features, full-batch AdamW);
4. VideoMAE transfer: ``VideoViT(**encoder.model_config | {"fc_norm": None})`` (mean pooling, fresh
   ``fc_norm``, ``norm`` = Identity), encoder weights loaded except ``norm.*``, linear head
   (``VideoClassifier``, ``init_scale`` 1e-3), AdamW (LR 1e-3, wd 0.05, betas (0.9, 0.999)), 10 %
   warmup + cosine, label smoothing 0.1, 1500 steps of 16 on the 1000 labeled; test top-1 and the
   final train accuracy (eval mode, all 1000);
5. the *scratch* arm is the same code path with 0 pretraining steps (the MAE is built with the
   same seed, its encoder at init is transferred): architecture, init, head and fine-tune recipe
   are identical, pretraining is the only difference;
6. diagnostics of the encoder (at transfer, and after fine-tuning): tubelet-embedding temporal
   cosine ``cos(w[:, :, 0], -w[:, :, 1])`` (+1 = a temporal-difference filter, -1 = a temporal
   average), mean pairwise token cosine within a video, Frobenius norms of ``qkv`` / ``fc1`` per
   block, attention entropy per block (nats; uniform over 128 tokens = 4.85).

Levers (one change each vs ``default``; join with ``+``, e.g. ``scratch+qk_norm``):
``default``, ``scratch``; model ``poolstem`` (``stem="conv_maxpool"``, random init); pretraining ``pt_lr1e-3``, ``pt_lr5e-4``, ``pt_wd0.1``, ``pt_wd0.3``,
``qk_norm``, ``embed_lr0.1``, ``mask0.9``, ``random0.75``, ``dec4``, ``diff_target``,
``diff_only``, ``norm_pix`` (VideoMAE's per-tubelet normalised pixels), ``motion_hide``, ``motion_keep``; fine-tune ``ft_lr5e-4``, ``ft_lr2e-3``,
``ft_ld0.75``, ``ft_warm30``, ``ft_head1`` (head init_scale 1), ``ft_nosmooth``, ``ft_motion``
(``vit_motion.py``'s recipe: LR 5e-4, head init 1, no smoothing); ``--set key=value`` overrides any config entry (see ``DEFAULT``).

    OMP_NUM_THREADS=1 python benchmarks/pretrain_levers.py --lever default --seed 0 \\
        --pretrain-steps 3000 --json /tmp/expA/default_s0.json
    OMP_NUM_THREADS=1 python benchmarks/pretrain_levers.py --lever scratch --seed 0 --json /tmp/expA/scratch_s0.json

Note: with the default head ``init_scale=1e-3`` neither arm fits the 1000 labels in 1500 steps; add
``+ft_head1`` (head init 1) to both arms for a meaningful comparison (``benchmarks/RESULTS_levers.md``).

Single-threaded by default (``--threads 1``); results of a session are in ``benchmarks/RESULTS_levers.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from pretrain.data.synth import render_video, video_rng  # noqa: E402

MEAN, STD = 0.45, 0.225
SIZE, FRAMES = 32, 16

DEFAULT = dict(
    # model
    embed_dim=128, num_heads=4, patch_size=8, tubelet_size=2, embed_init="temporal_diff", embed_init_gain=4.0,
    embed_init_share=1.0, qk_norm=False, decoder_depth=None, stem="linear", stem_width=16,
    # pretraining
    pt_lr=4e-3, pt_wd=0.05, pt_b2=0.95, pt_warm=0.1, embed_lr_mult=1.0, mask_type="tube", mask_ratio=0.75,
    motion_mask=0.0,          # >0: hide high-motion tubes preferentially (strength); <0: keep them visible
    pix_weight=1.0, diff_weight=0.0, norm_pix=False,   # reconstruction targets: pixels and/or 4 * frame differences
    pt_clip=0.0,
    # fine-tune
    ft_steps=1500, ft_lr=1e-3, ft_wd=0.05, ft_warm=0.1, ft_ld=1.0, ft_smooth=0.1, ft_head_init=1e-3,
    ft_drop_path=0.0,
)

LEVERS = {
    "default": {},
    "scratch": {"_scratch": True},
    # the convolutional max-pool tubelet embedding (model.kwargs.stem=conv_maxpool), random init
    "poolstem": {"stem": "conv_maxpool", "embed_init": "default"},
    "pt_lr1e-3": {"pt_lr": 1e-3},
    "pt_lr5e-4": {"pt_lr": 5e-4},
    "pt_lr2e-3": {"pt_lr": 2e-3},
    "pt_wd0.1": {"pt_wd": 0.1},
    "pt_wd0.3": {"pt_wd": 0.3},
    "qk_norm": {"qk_norm": True},
    "embed_lr0.1": {"embed_lr_mult": 0.1},
    "embed_lr0": {"embed_lr_mult": 0.0},
    "mask0.9": {"mask_ratio": 0.9},
    "random0.75": {"mask_type": "random"},
    "dec4": {"decoder_depth": 4},
    "diff_target": {"diff_weight": 1.0},
    "diff_only": {"diff_weight": 1.0, "pix_weight": 0.0},
    "norm_pix": {"norm_pix": True},
    "motion_hide": {"motion_mask": 3.0},
    "motion_keep": {"motion_mask": -3.0},
    "clip1": {"pt_clip": 1.0},
    "ft_lr5e-4": {"ft_lr": 5e-4},
    "ft_lr2e-3": {"ft_lr": 2e-3},
    "ft_ld0.75": {"ft_ld": 0.75},
    "ft_warm30": {"ft_warm": 0.3},
    "ft_head1": {"ft_head_init": 1.0},
    "ft_nosmooth": {"ft_smooth": 0.0},
    "ft_motion": {"ft_lr": 5e-4, "ft_head_init": 1.0, "ft_smooth": 0.0},   # benchmarks/vit_motion.py's recipe
}


# ------------------------------------------------------------------------------------------ data
def render(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    vids = [render_video(i % 10, video_rng(0, split, i), FRAMES, SIZE, "easy") for i in range(n)]
    x = torch.from_numpy(np.stack(vids)).permute(0, 4, 1, 2, 3).contiguous()   # (n, 3, T, H, W) uint8
    return x, torch.arange(n) % 10


def load_data(cache: Path, n_pre: int, n_train: int, n_test: int) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("pretrain", n_pre), ("train", n_train), ("test", n_test)):
        f = cache / f"synth_{split}_{n}.pt"
        if f.exists():
            out[split] = torch.load(f)
        else:
            t0 = time.perf_counter()
            out[split] = render(split, n)
            torch.save(out[split], f)
            print(f"rendered {n} {split} videos in {time.perf_counter() - t0:.0f} s -> {f}", flush=True)
    return out


def norm(u: torch.Tensor) -> torch.Tensor:
    return (u.float() / 255 - MEAN) / STD


# ----------------------------------------------------------------------------------------- model
def apply_qk_norm(vit: nn.Module) -> None:
    """timm ``qk_norm=True``: LayerNorm over head_dim on q and k in every attention block."""
    for blk in vit.blocks:
        a = blk.attn
        a.q_norm = nn.LayerNorm(a.head_dim, eps=1e-6)
        a.k_norm = nn.LayerNorm(a.head_dim, eps=1e-6)


def enc_kwargs(cfg: dict) -> dict:
    return dict(img_size=SIZE, num_frames=FRAMES, patch_size=cfg["patch_size"], tubelet_size=cfg["tubelet_size"],
                embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"], embed_init=cfg["embed_init"],
                embed_init_gain=cfg["embed_init_gain"], embed_init_share=cfg["embed_init_share"],
                stem=cfg["stem"], stem_width=cfg["stem_width"])


def build_mae(cfg: dict):
    from pretrain.models import create_model
    from pretrain.models.vit import init_vit_weights

    kw = dict(enc_kwargs(cfg), norm_pix_loss=False, mask_ratio=cfg["mask_ratio"], mask_type=cfg["mask_type"])
    if cfg["decoder_depth"]:
        kw["decoder_depth"] = cfg["decoder_depth"]
    mae = create_model("videomae_test", **kw)
    if cfg["qk_norm"]:
        apply_qk_norm(mae.encoder)
    p = mae.in_chans * math.prod(mae.tubelet)
    n_out = p * ((cfg["pix_weight"] > 0) + (cfg["diff_weight"] > 0))
    if n_out != mae.decoder.head.out_features:       # pixel + frame-difference targets: a wider head
        mae.decoder.head = nn.Linear(mae.decoder.head.in_features, n_out)
        init_vit_weights(mae.decoder.head)
    return mae


def motion_masks(mae, video: torch.Tensor, strength: float, gen: torch.Generator):
    """Tube masks biased by motion: per spatial position, the mean |frame difference| over the clip
    (standardised per video) shifts the sort noise, so ``strength > 0`` hides moving positions
    preferentially and ``strength < 0`` keeps them visible. Same count as ``tube_masking``."""
    from pretrain.masking import _from_keep_sorted, num_masked

    t, h, w = mae.encoder.grid_size
    kh = mae.tubelet[1]
    with torch.no_grad():
        d = (video[:, :, 1:] - video[:, :, :-1]).abs().mean((1, 2))            # (B, H, W)
        m = F.avg_pool2d(d.unsqueeze(1), kh).flatten(1)                        # (B, h*w)
        m = (m - m.mean(1, keepdim=True)) / (m.std(1, keepdim=True) + 1e-6)
    s = h * w
    s_keep = s - num_masked(s, mae.mask_ratio)
    noise = torch.rand(video.shape[0], s, generator=gen) - strength * m      # low noise = kept
    order = torch.argsort(noise, dim=1)
    keep_s, _ = order[:, :s_keep].sort(dim=1)
    mask_s, _ = order[:, s_keep:].sort(dim=1)
    off = (torch.arange(t) * s).view(1, t, 1)
    return _from_keep_sorted((keep_s.unsqueeze(1) + off).flatten(1), (mask_s.unsqueeze(1) + off).flatten(1), t * s)


def mae_loss(mae, video: torch.Tensor, cfg: dict, gen: torch.Generator):
    from pretrain.models.tubelets import gather_tubelets, normalize_tubelets
    from pretrain.models.vit import rgb_difference
    from pretrain.models.tubelets import tubelet_grid

    grid = tubelet_grid(video.shape, mae.tubelet, "pretrain_levers")
    if cfg["motion_mask"]:
        masks = motion_masks(mae, video, cfg["motion_mask"], gen)
        ids_pred, loss_mask = mae.decoder_positions(masks, grid, gen)
    else:
        masks, ids_pred, loss_mask = mae.sample_masks(video.shape[0], grid, generator=gen)
    latent = mae.forward_encoder(video, masks.ids_keep)
    pred = mae.forward_decoder(latent, masks.ids_keep, ids_pred, grid)
    p = mae.in_chans * math.prod(mae.tubelet)
    losses, i = {}, 0
    with torch.no_grad():
        tgt_pix = gather_tubelets(video, ids_pred, mae.tubelet, layout="cthw") if cfg["pix_weight"] > 0 else None
        if tgt_pix is not None and cfg["norm_pix"]:      # VideoMAE's norm_pix_loss: per-tubelet, per-channel
            tgt_pix = normalize_tubelets(tgt_pix, mae.in_chans)[0]
        tgt_diff = gather_tubelets(rgb_difference(video), ids_pred, mae.tubelet, layout="cthw") \
            if cfg["diff_weight"] > 0 else None
    loss = 0.0
    if tgt_pix is not None:
        losses["pix"] = F.mse_loss(pred[..., i:i + p][loss_mask], tgt_pix[loss_mask])
        loss = loss + cfg["pix_weight"] * losses["pix"]
        i += p
    if tgt_diff is not None:
        losses["diff"] = F.mse_loss(pred[..., i:i + p][loss_mask], tgt_diff[loss_mask])
        loss = loss + cfg["diff_weight"] * losses["diff"]
    return loss, losses


def lr_factor(step: int, total: int, warm_frac: float) -> float:
    warm = max(1, int(round(warm_frac * total)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def param_groups(model: nn.Module, wd: float, lr_scale_of=lambda name: 1.0, no_wd=()) -> list:
    groups = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim <= 1 or n in no_wd or n.endswith("pos_embed") or "token" in n) else wd
        scale = lr_scale_of(n)
        key = (decay, scale)
        groups.setdefault(key, {"params": [], "weight_decay": decay, "lr_scale": scale})["params"].append(p)
    return list(groups.values())


def pretrain(mae, x_pre: torch.Tensor, cfg: dict, steps: int, seed: int, log_every: int = 250,
             probe_every: int = 0, data=None) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    embed_mult = cfg["embed_lr_mult"]
    groups = param_groups(mae, cfg["pt_wd"], lambda n: embed_mult if n.startswith("encoder.patch_embed") else 1.0)
    opt = torch.optim.AdamW(groups, lr=cfg["pt_lr"], betas=(0.9, cfg["pt_b2"]))
    mae.train()
    t0, hist, run = time.perf_counter(), [], {}
    for s in range(steps):
        f = lr_factor(s, steps, cfg["pt_warm"])
        for pg in opt.param_groups:
            pg["lr"] = cfg["pt_lr"] * f * pg["lr_scale"]
        b = torch.randint(0, len(x_pre), (16,), generator=g)
        loss, parts = mae_loss(mae, norm(x_pre[b]), cfg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["pt_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(mae.parameters(), cfg["pt_clip"])
        opt.step()
        for k, v in parts.items():
            run[k] = run.get(k, 0.0) + v.item()
        if (s + 1) % log_every == 0 or s + 1 == steps:
            n = log_every if (s + 1) % log_every == 0 else (s + 1) % log_every
            row = {"step": s + 1, **{k: round(v / n, 5) for k, v in run.items()},
                   "s": round(time.perf_counter() - t0, 1)}
            if probe_every and ((s + 1) % probe_every == 0) and s + 1 < steps:
                vit = transfer(mae, cfg)
                (xtr, ytr), (xte, yte) = data["train"], data["test"]
                row["knn"] = round(knn(features(vit, xtr), ytr, features(vit, xte), yte), 3)
                d = diagnostics(vit, xte[:32])
                row.update(tcos=round(d["embed_tcos"], 3), token_cos=round(d["token_cos"], 3),
                           attn_entropy=d["attn_entropy"])
                mae.train()
            hist.append(row)
            print("  pretrain", row, flush=True)
            run = {}
    return {"pretrain_seconds": round(time.perf_counter() - t0, 1), "pretrain_loss": hist}


def transfer(mae, cfg: dict):
    """VideoMAE transfer: fresh fc_norm on mean(tokens), norm = Identity, weights except norm.*."""
    from pretrain.models.vit import VideoViT

    enc = mae.encoder
    cfg_ft = dict(enc.model_config, fc_norm=None, drop_path_rate=cfg["ft_drop_path"])
    vit = VideoViT(**cfg_ft)
    if cfg["qk_norm"]:
        apply_qk_norm(vit)
    sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("norm.")}
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    assert set(missing) <= {"fc_norm.weight", "fc_norm.bias"} and not unexpected, (missing, unexpected)
    return vit


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def features(vit, x_u8: torch.Tensor, bs: int = 100) -> torch.Tensor:
    vit.eval()
    return torch.cat([vit.forward_features(norm(x_u8[i:i + bs]))[:, vit.num_prefix_tokens:].mean(1)
                      for i in range(0, len(x_u8), bs)])


def knn(ftr, ytr, fte, yte, k: int = 20, temp: float = 0.07) -> float:
    a, b = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    sim = b @ a.T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(fte), 10).scatter_add_(1, ytr[idx], (top / temp).exp())
    return (votes.argmax(1) == yte).float().mean().item()


def linear_probe(ftr, ytr, fte, yte, steps: int = 500, lr: float = 1e-2, wd: float = 1e-3) -> float:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    a, b = (ftr - mu) / sd, (fte - mu) / sd
    torch.manual_seed(0)
    lin = nn.Linear(a.shape[1], 10)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=wd)
    for _ in range(steps):
        loss = F.cross_entropy(lin(a), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (lin(b).argmax(1) == yte).float().mean().item()


def probes(vit, data) -> dict:
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    ftr, fte = features(vit, xtr), features(vit, xte)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    return {"knn": knn(ftr, ytr, fte, yte), "knn_std": knn((ftr - mu) / sd, ytr, (fte - mu) / sd, yte),
            "linear": linear_probe(ftr, ytr, fte, yte)}


@torch.no_grad()
def diagnostics(vit, x_u8: torch.Tensor) -> dict:
    vit.eval()
    w = vit.patch_embed.proj.weight                                       # (D, C, kt, kh, kw)
    if w.ndim != 5:                                                       # stem=conv_maxpool: its 3x3x3 conv
        w = vit.patch_embed.conv.weight
    w0, w1 = w[:, :, 0].flatten(1), -w[:, :, 1].flatten(1)
    out = {"embed_tcos": F.cosine_similarity(w0.flatten(), w1.flatten(), dim=0).item(),
           "embed_tcos_ch": F.cosine_similarity(w0, w1, dim=1).mean().item(),
           "embed_norm": w.norm().item(),
           "qkv_norm": [round(b.attn.qkv.weight.norm().item(), 2) for b in vit.blocks],
           "fc1_norm": [round(b.mlp.fc1.weight.norm().item(), 2) for b in vit.blocks]}
    x = norm(x_u8)
    grid = vit.grid_size
    h = vit.patch_embed(vit.prepare_input(x)) + vit.pos_embed_for(grid)
    ents = []
    for blk in vit.blocks:
        a = blk.attn
        y = blk.norm1(h)
        bsz, n, _ = y.shape
        q, k, _v = a.qkv(y).view(bsz, n, 3, a.num_heads, a.head_dim).unbind(2)
        q, k = a.q_norm(q.transpose(1, 2)), a.k_norm(k.transpose(1, 2))
        att = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
        ents.append(round(-(att * att.clamp_min(1e-12).log()).sum(-1).mean().item(), 3))
        h = blk(h)
    t = F.normalize(h, dim=-1)
    c = t @ t.transpose(1, 2)
    n = c.shape[1]
    out["token_cos"] = ((c.sum((1, 2)) - n) / (n * (n - 1))).mean().item()
    out["attn_entropy"] = ents
    return out


def finetune(vit, data, cfg: dict, seed: int) -> dict:
    from finetune.heads import VideoClassifier

    torch.manual_seed(2000 + seed)
    model = VideoClassifier(vit, 10, init_scale=cfg["ft_head_init"])
    depth = len(vit.blocks)
    ld = cfg["ft_ld"]

    def layer_id(n: str) -> int:
        if n.startswith("encoder.blocks."):
            return int(n.split(".")[2]) + 1
        if n.startswith("encoder.patch_embed") or n.startswith("encoder.cls_token"):
            return 0
        return depth + 1

    groups = param_groups(model, cfg["ft_wd"], lambda n: ld ** (depth + 1 - layer_id(n)))
    opt = torch.optim.AdamW(groups, lr=cfg["ft_lr"])
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    g = torch.Generator().manual_seed(3000 + seed)
    steps, accs, t0 = cfg["ft_steps"], [], time.perf_counter()
    model.train()
    for s in range(steps):
        f = lr_factor(s, steps, cfg["ft_warm"])
        for pg in opt.param_groups:
            pg["lr"] = cfg["ft_lr"] * f * pg["lr_scale"]
        b = torch.randint(0, len(xtr), (16,), generator=g)
        out = model(norm(xtr[b]))
        loss = F.cross_entropy(out, ytr[b], label_smoothing=cfg["ft_smooth"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        accs.append((out.argmax(1) == ytr[b]).float().mean().item())
        if (s + 1) % 500 == 0:
            print(f"  finetune step {s + 1} train acc (last 100) {np.mean(accs[-100:]):.3f} "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()

    @torch.no_grad()
    def acc(x, y):
        return sum((model(norm(x[i:i + 100])).argmax(1) == y[i:i + 100]).sum().item()
                   for i in range(0, len(x), 100)) / len(x)

    return {"ft_test_top1": acc(xte, yte), "ft_train_acc": acc(xtr, ytr),
            "ft_train_acc_last100": float(np.mean(accs[-100:])), "ft_seconds": round(time.perf_counter() - t0, 1)}


def parse_lever(name: str) -> tuple[dict, bool]:
    cfg, scratch = dict(DEFAULT), False
    for part in name.split("+"):
        if part not in LEVERS:
            raise SystemExit(f"unknown lever {part!r}; choose from {sorted(LEVERS)}")
        for k, v in LEVERS[part].items():
            if k == "_scratch":
                scratch = True
            else:
                cfg[k] = v
    return cfg, scratch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lever", default="default", help="lever name(s) joined by '+': " + ", ".join(LEVERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=3000, help="ignored (0) for the scratch lever")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a DEFAULT entry")
    ap.add_argument("--n-pretrain", type=int, default=4000)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--cache", default="/tmp/expA")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    ap.add_argument("--probe-every", type=int, default=0, help="kNN + diagnostics every N pretraining steps")
    ap.add_argument("--save-ckpt", default="", help="save the pretrained MAE state dict here")
    ap.add_argument("--load-ckpt", default="", help="skip pretraining: load this MAE state dict (same model levers)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg, scratch = parse_lever(a.lever)
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in DEFAULT:
            raise SystemExit(f"--set: unknown key {k!r}")
        cfg[k] = type(DEFAULT[k])(v) if DEFAULT[k] is not None and not isinstance(DEFAULT[k], bool) else \
            (v.lower() in ("1", "true", "yes") if isinstance(DEFAULT[k], bool) else int(v))
    steps = 0 if scratch else a.pretrain_steps
    t_all = time.perf_counter()
    data = load_data(Path(a.cache), a.n_pretrain, a.n_train, a.n_test)
    torch.manual_seed(a.seed)
    mae = build_mae(cfg)
    print(f"lever {a.lever} seed {a.seed}: {steps} pretraining steps; cfg "
          f"{ {k: v for k, v in cfg.items() if v != DEFAULT[k]} }", flush=True)
    res = {"lever": a.lever, "seed": a.seed, "pretrain_steps": steps, "cfg": cfg,
           "command": "python benchmarks/pretrain_levers.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if a.load_ckpt:
        ck = torch.load(a.load_ckpt)
        mae.load_state_dict(ck["state"])
        res.update({k: v for k, v in ck["meta"].items()}, pretrain_steps=ck["meta"]["pretrain_steps"],
                   loaded_from=a.load_ckpt)
        steps = ck["meta"]["pretrain_steps"]
    elif steps:
        res.update(pretrain(mae, data["pretrain"][0], cfg, steps, a.seed, probe_every=a.probe_every, data=data))
    if a.save_ckpt:
        torch.save({"state": mae.state_dict(), "meta": {k: res[k] for k in ("pretrain_steps", "pretrain_seconds",
                    "pretrain_loss") if k in res}}, a.save_ckpt)
    vit = transfer(mae, cfg)
    res["diag_pre"] = diagnostics(vit, data["test"][0][:64])
    res["probe"] = probes(vit, data)
    print("  diagnostics", res["diag_pre"], "\n  probes", res["probe"], flush=True)
    if cfg["ft_steps"] > 0:
        res.update(finetune(vit, data, cfg, a.seed))
        res["diag_ft"] = diagnostics(vit, data["test"][0][:64])
    else:
        res.update(ft_test_top1=float("nan"), ft_train_acc=float("nan"))
        res["diag_ft"] = res["diag_pre"]
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(f"RESULT lever={a.lever} seed={a.seed} steps={steps} knn={res['probe']['knn']:.3f} "
          f"knn_std={res['probe']['knn_std']:.3f} linear={res['probe']['linear']:.3f} "
          f"ft_top1={res['ft_test_top1']:.3f} ft_train={res['ft_train_acc']:.3f} "
          f"tcos={res['diag_pre']['embed_tcos']:.2f} tokcos={res['diag_pre']['token_cos']:.2f} "
          f"total {res['total_seconds']:.0f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
