"""Multi-view evaluation: K clips × C crops per video, softmax scores averaged per video.

    tubelet evaluate --model runs/ft_vit --shards data/synth/test --num-clips 4 --num-crops 3
    accelerate launch --num_processes 2 -m launch evaluate --model runs/ft_vit --shards data/synth/test

Every test video is counted exactly once across processes and loader workers (the loader's eval mode
splits samples; the gathered per-video records are checked for duplicates and view counts).
Writes ``eval.json`` (top-1, top-5, per-class accuracy, confusion matrix, counts) and ``confusion.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


class EvalError(RuntimeError):
    """The evaluation's bookkeeping is inconsistent (a video counted twice or with missing views)."""


@torch.no_grad()
def collect_scores(model, loader, mean, std, device="cpu", autocast_dtype=None, progress=None,
                   max_videos: int = 0, forward=None) -> dict[str, dict]:
    """Run ``model`` over an eval loader and sum softmax scores per video key.

    Returns ``{key: {"scores": float64 (num_classes,) sum over views, "views": int, "label": int}}``.
    ``forward(model, batch, video)`` may replace ``model(video)`` (e.g. two-stream models needing flow).
    """
    from pretrain.data.transforms import normalize_on_device

    was_training = model.training
    model.eval()
    out: dict[str, dict] = {}
    for batch in loader:
        video = normalize_on_device(batch["video"].to(device, non_blocking=True), mean, std)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = forward(model, batch, video) if forward is not None else model(video)
        probs = logits.float().softmax(-1).double().cpu().numpy()
        for key, label, p in zip(batch["key"], batch["label"].tolist(), probs):
            rec = out.get(key)
            if rec is None:
                out[key] = {"scores": p.copy(), "views": 1, "label": int(label)}
            else:
                rec["scores"] += p
                rec["views"] += 1
        if progress is not None:
            progress.update(len(batch["key"]))
        if max_videos and len(out) >= max_videos:
            break
    model.train(was_training)
    return out


def gather_records(records: dict[str, dict]) -> dict[str, dict]:
    """Merge per-rank records on every rank; a key seen on two ranks is an error (exact-once)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    world = torch.distributed.get_world_size()
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, records)
    merged: dict[str, dict] = {}
    for rank, part in enumerate(parts):
        for k, v in part.items():
            if k in merged:
                raise EvalError(f"video {k!r} was evaluated on two ranks (exact-once violated)")
            merged[k] = v
    return merged


def summarize(records: dict[str, dict], num_classes: int, expected_views: int | None = None,
              class_names: list[str] | None = None) -> dict:
    """Top-1 / top-5 / per-class accuracy and confusion matrix from per-video score sums."""
    if expected_views is not None:
        bad = {k: r["views"] for k, r in records.items() if r["views"] != expected_views}
        if bad:
            sample = dict(list(bad.items())[:5])
            raise EvalError(f"{len(bad)} videos have a view count != {expected_views}: {sample}")
    labeled = {k: r for k, r in records.items() if r["label"] >= 0}
    n = len(labeled)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    top1 = top5 = 0
    for r in labeled.values():
        order = np.argsort(-r["scores"])
        pred = int(order[0])
        top1 += pred == r["label"]
        top5 += r["label"] in order[:5]
        conf[r["label"], pred] += 1
    per_class = {}
    for c in range(num_classes):
        tot = conf[c].sum()
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        per_class[name] = float(conf[c, c] / tot) if tot else float("nan")
    return {
        "num_videos": n,
        "views_per_video": expected_views,
        "top1": float(top1 / n) if n else float("nan"),
        "top5": float(top5 / n) if n else float("nan"),
        "per_class": per_class,
        "mean_class_accuracy": float(np.nanmean([v for v in per_class.values()])) if n else float("nan"),
        "confusion": conf.tolist(),
        "class_names": class_names,
    }


def save_confusion_png(summary: dict, path: str | Path, title: str = "") -> None:
    """Confusion matrix heat map (rows: true class, columns: predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(summary["confusion"])
    names = summary.get("class_names") or [str(i) for i in range(len(conf))]
    k = len(conf)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 1.0 + 0.5 * k))
    ax.imshow(conf, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    t1 = summary.get("top1", float("nan"))
    ax.set_title(f"{title} top-1 {100 * t1:.1f}% (n={summary['num_videos']})" if not math.isnan(t1) else title,
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_model(model, data_cfg, shards: str, num_classes: int, *, num_clips: int, num_crops: int,
                   rank: int = 0, world_size: int = 1, device="cpu", autocast_dtype=None,
                   class_names=None, progress: bool = True, max_videos: int = 0, forward=None,
                   seed: int = 0) -> dict:
    """Build the eval loader over ``shards``, score every video, gather across ranks, summarise."""
    from pretrain.data.loader import build_loader

    loader = build_loader(data_cfg, "eval", shards=shards, rank=rank, world_size=world_size, seed=seed,
                          num_clips=num_clips, num_crops=num_crops)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(desc="evaluate", unit="view", leave=False)
    records = collect_scores(model, loader, data_cfg.mean, data_cfg.std, device=device,
                             autocast_dtype=autocast_dtype, progress=bar, max_videos=max_videos, forward=forward)
    if bar is not None:
        bar.close()
    records = gather_records(records)
    summary = summarize(records, num_classes, expected_views=None if max_videos else num_clips * num_crops,
                        class_names=class_names)
    stats = loader.stats()
    summary["skipped"] = int(stats.get("skipped", 0))
    return summary


# ------------------------------------------------------------------------------------------------
# command line


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="fine-tune run directory (or its final/ directory); with --probe "
                   "any encoder source: pretraining run, checkpoint, exported encoder, HF dir, VideoMAE .pth")
    p.add_argument("--shards", default="", help="test shards (default: the run's data.val_shards)")
    p.add_argument("--num-clips", type=int, default=None, help="clips per video (default: data.test_num_clips)")
    p.add_argument("--num-crops", type=int, default=None, choices=(1, 3), help="crops per clip (default: data.test_num_crops)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default="", help="output directory (default: the model's run directory)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--probe", nargs="+", choices=("knn", "linear", "attentive"), default=None, metavar="KIND",
                   help="frozen-encoder probe(s) instead of evaluating a classifier: knn (DINO weighted k-NN, "
                        "k=20, T=0.07), linear (BatchNorm + linear, as MAE), attentive (one learned query)")
    p.add_argument("--train-shards", default="", help="--probe: labeled shards the probe is fitted on "
                   "(default: --shards split by video key, 20%% scored)")
    p.add_argument("--probe-steps", type=int, default=200, help="--probe: AdamW steps fitting linear/attentive")
    p.add_argument("--sampling-rate", type=int, default=None, help="--probe: frame stride (default: the encoder's)")


def run_probe_cli(args) -> int:
    """``tubelet evaluate --probe ...``: probe any encoder source, print and write ``probe.json``."""
    import sys

    from finetune.extract import _dist, data_config
    from finetune.safe_load import UnsafeCheckpointError
    from finetune.sources import open_source
    from pretrain.data.shards import read_classes
    from pretrain.probe import ProbeError, probe_encoder

    if not args.shards:
        print("tubelet evaluate: --probe needs --shards (labeled test shards)", file=sys.stderr)
        return 2
    try:
        src = open_source(args.model)
    except (UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        print(f"tubelet evaluate: {e}", file=sys.stderr)
        return 2
    enc = src.encoder
    mc = getattr(enc, "model_config", {})
    img = mc.get("img_size", src.data.get("img_size"))
    meta = {"num_frames": mc.get("num_frames", src.data.get("num_frames")),
            "img_size": img[0] if isinstance(img, (list, tuple)) else img,
            "sampling_rate": src.data.get("sampling_rate"), "mean": src.mean, "std": src.std}
    cfg = data_config(meta, batch_size=args.batch_size or 8, num_workers=2 if args.workers is None else args.workers,
                      backend="decord", sampling_rate=args.sampling_rate)
    classes = None
    for d in (args.train_shards, args.shards):
        if d and Path(d).is_dir():
            classes = classes or read_classes(d)
    if not classes:
        print("tubelet evaluate: --probe needs labeled shards with a classes.json", file=sys.stderr)
        return 2
    rank, world = _dist()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        res = probe_encoder(enc.to(device), cfg, args.probe, len(classes), shards=args.shards,
                            fit_shards=args.train_shards or None, rank=rank, world_size=world, device=device,
                            steps=args.probe_steps)
    except ProbeError as e:
        print(f"tubelet evaluate: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        for kind, r in res.items():
            print(f"probe {kind}: top-1 {100 * r['top1']:.2f}% (fit on {r['n_fit']} videos, scored on {r['n_score']})")
        out = Path(args.out) if args.out else (Path(args.model) if Path(args.model).is_dir() else Path("."))
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps({"model": str(args.model), "shards": args.shards,
                                                    "train_shards": args.train_shards or None,
                                                    "results": res}, indent=1))
        print(f"wrote {out / 'probe.json'}")
    return 0


def run(args) -> int:
    if args.probe:
        return run_probe_cli(args)
    from accelerate import PartialState

    from finetune.engine import classifier_forward, load_finetuned

    state = PartialState(cpu=not torch.cuda.is_available())  # joins the group under accelerate launch
    rank, world, device = state.process_index, state.num_processes, state.device
    model, cfg, meta = load_finetuned(args.model, device=device)
    if args.batch_size:
        cfg.data.batch_size = args.batch_size
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    shards = args.shards or cfg.data.val_shards
    if not shards:
        print("tubelet evaluate: no --shards given and the run has no data.val_shards")
        return 2
    k = args.num_clips or cfg.data.test_num_clips
    c = args.num_crops or cfg.data.test_num_crops
    summary = evaluate_model(model, cfg.data, shards, meta["num_classes"], num_clips=k, num_crops=c,
                             rank=rank, world_size=world, device=device, class_names=meta.get("classes"),
                             progress=not args.no_progress, forward=classifier_forward)
    if rank == 0:
        out = Path(args.out or meta["run_dir"])
        out.mkdir(parents=True, exist_ok=True)
        summary["shards"] = shards
        (out / "eval.json").write_text(json.dumps(summary, indent=1))
        save_confusion_png(summary, out / "confusion.png", title=meta.get("name", ""))
        print(f"videos {summary['num_videos']} (x{k} clips x{c} crops)  top-1 {100 * summary['top1']:.2f}%  "
              f"top-5 {100 * summary['top5']:.2f}%  skipped {summary['skipped']}")
        print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return 0
