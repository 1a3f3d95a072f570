"""Multi-view evaluation: K clips × C crops per video, softmax scores averaged per video.

    tubelet evaluate --model runs/ft_vit --shards data/synth/test --num-clips 4 --num-crops 3
    accelerate launch --num_processes 2 -m launch evaluate --model runs/ft_vit --shards data/synth/test

Every test video is counted exactly once across processes and loader workers (the loader's eval mode
splits samples; the gathered per-video records are checked for duplicates and view counts).

Two accuracies are reported, as VideoMAE does: *per view* (each clip x crop scored alone;
``view_top1`` / ``view_top5`` over ``num_views``) and *per video* (the softmax scores of a video's
views averaged, then ranked; ``top1`` / ``top5`` over ``num_videos``). ``protocol`` says how the views
were taken ("5 clips x 3 crops, softmax average").
Writes ``eval.json`` (both accuracies, per-class accuracy, confusion matrix, counts, protocol),
``confusion.png`` and the per-video scores: ``scores.npy`` (float32, videos x classes, the views'
mean softmax, rows in sorted key order) with ``scores_keys.json`` (``keys``, ``labels``,
``class_names``, ``protocol``); ``scores.npy[i].argmax()`` is video ``keys[i]``'s top-1 prediction.
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

    Returns ``{key: {"scores": float64 (num_classes,) sum over views, "views": int, "label": int,
    "view_top1": int, "view_top5": int}}`` (the last two: views whose own softmax ranks the label
    first / in the top 5).
    ``forward(model, batch, video)`` may replace ``model(video)`` (e.g. two-stream models needing flow).
    """
    from pretrain.data.transforms import normalize_on_device

    from pretrain.probe import ViewSums

    was_training = model.training
    model.eval()
    sums = ViewSums("evaluate", error=EvalError)
    for batch in loader:
        video = normalize_on_device(batch["video"].to(device, non_blocking=True), mean, std)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = forward(model, batch, video) if forward is not None else model(video)
        probs = logits.float().softmax(-1).double().cpu().numpy()
        views = batch["view"].tolist() if "view" in batch else [None] * len(probs)
        for key, label, view, p in zip(batch["key"], batch["label"].tolist(), views, probs):
            order = np.argsort(-p, kind="stable")
            sums.add(key, label, view, scores=p, view_top1=int(order[0] == label), view_top5=int(label in order[:5]))
        if progress is not None:
            progress.update(len(batch["key"]))
        if max_videos and len(sums.records) >= max_videos:
            break
    model.train(was_training)
    return sums.records


def gather_records(records: dict[str, dict]) -> dict[str, dict]:
    """Merge per-rank records on every rank; a key seen on two ranks is an error (exact-once)."""
    from pretrain.probe import gather_by_key

    return gather_by_key(records, error=EvalError)


def summarize(records: dict[str, dict], num_classes: int, expected_views: int | None = None,
              class_names: list[str] | None = None) -> dict:
    """Per-video top-1 / top-5 (views' softmax averaged), per-view top-1 / top-5 (each view alone),
    per-class accuracy and confusion matrix from per-video score sums."""
    if expected_views is not None:
        bad = {k: r["views"] for k, r in records.items() if r["views"] != expected_views}
        if bad:
            sample = dict(list(bad.items())[:5])
            raise EvalError(f"{len(bad)} videos have a view count != {expected_views}: {sample}")
    labeled = {k: r for k, r in records.items() if r["label"] >= 0}
    n = len(labeled)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    top1 = top5 = 0
    views = sum(r["views"] for r in labeled.values())
    view1 = sum(r.get("view_top1", 0) for r in labeled.values())
    view5 = sum(r.get("view_top5", 0) for r in labeled.values())
    for r in labeled.values():
        # ranked as written to scores.npy (float32 mean), so its argmax is exactly this prediction
        order = np.argsort(-(r["scores"] / r["views"]).astype(np.float32), kind="stable")
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
        "num_views": int(views),
        "view_top1": float(view1 / views) if views else float("nan"),
        "view_top5": float(view5 / views) if views else float("nan"),
    }


def view_protocol(data_cfg, num_clips: int, num_crops: int) -> str:
    """How the test views were taken, in words ("5 clips x 3 crops, softmax average")."""
    clips = f"{num_clips} clip{'s' if num_clips != 1 else ''}"
    if getattr(data_cfg, "sampling", "stride") == "segment":
        from fractions import Fraction

        offs = ", ".join(str(Fraction(2 * k + 1, 2 * num_clips)) for k in range(num_clips))
        clips += f" ({data_cfg.num_frames} segments, frame at {offs} of each)"
    else:
        clips += f" ({data_cfg.num_frames} frames, uniformly spread)"
    crops = "1 centre crop" if num_crops == 1 else f"{num_crops} crops along the long side"
    return f"{clips} x {crops}, softmax average"


def write_scores(records: dict[str, dict], out_dir: str | Path, class_names=None, protocol: str = "") -> tuple[Path, Path]:
    """Per-video scores: ``scores.npy`` (float32, videos x classes, mean softmax over the views, rows
    in sorted key order) and ``scores_keys.json`` (``keys``, ``labels``, ``views``, ``class_names``,
    ``protocol``)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    keys = sorted(records)
    if keys:
        scores = np.stack([records[k]["scores"] / max(1, records[k]["views"]) for k in keys]).astype(np.float32)
    else:
        scores = np.zeros((0, len(class_names or [])), dtype=np.float32)
    np.save(d / "scores.npy", scores)
    meta = {"keys": keys, "labels": [int(records[k]["label"]) for k in keys],
            "views": [int(records[k]["views"]) for k in keys], "class_names": class_names, "protocol": protocol,
            "scores": "scores.npy: float32 (videos, classes), mean softmax over each video's views"}
    (d / "scores_keys.json").write_text(json.dumps(meta))
    return d / "scores.npy", d / "scores_keys.json"


def report_lines(summary: dict) -> list[str]:
    """The evaluation in words: protocol, per-view and per-video top-1 / top-5."""
    lines = []
    if summary.get("protocol"):
        lines.append(f"views: {summary['protocol']}")
    lines.append(f"per view:  top-1 {100 * summary['view_top1']:.2f}%  top-5 {100 * summary['view_top5']:.2f}%  "
                 f"({summary['num_views']} views, each scored alone)")
    lines.append(f"per video: top-1 {100 * summary['top1']:.2f}%  top-5 {100 * summary['top5']:.2f}%  "
                 f"({summary['num_videos']} videos, views' softmax averaged)")
    return lines


def save_confusion_png(summary: dict, path: str | Path, title: str = "") -> None:
    """Confusion matrix heat map (rows: true class, columns: predicted), counts in the cells; returns
    the title it drew."""
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
    text = f"{title} top-1 {100 * t1:.1f}% (n={summary['num_videos']})".strip() if not math.isnan(t1) else title
    ax.set_title(text, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return text


def evaluate_model(model, data_cfg, shards: str, num_classes: int, *, num_clips: int, num_crops: int,
                   rank: int = 0, world_size: int = 1, device="cpu", autocast_dtype=None,
                   class_names=None, progress: bool = True, max_videos: int = 0, forward=None,
                   seed: int = 0, scores_dir: str | Path | None = None) -> dict:
    """Build the eval loader over ``shards``, score every video, gather across ranks, summarise;
    with ``scores_dir`` rank 0 also writes ``scores.npy`` + ``scores_keys.json`` there."""
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
    summary["protocol"] = view_protocol(data_cfg, num_clips, num_crops)
    summary["num_clips"], summary["num_crops"] = num_clips, num_crops
    stats = loader.stats()
    summary["skipped"] = int(stats.get("skipped", 0))
    if scores_dir is not None and rank == 0:
        write_scores(records, scores_dir, class_names=class_names, protocol=summary["protocol"])
        summary["scores_file"] = "scores.npy"
    return summary


# ------------------------------------------------------------------------------------------------
# command line


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="fine-tune run directory (or its final/ directory); with --probe "
                   "any encoder source: pretraining run, checkpoint, exported encoder, HF dir, VideoMAE .pth")
    p.add_argument("--shards", default="", help="test shards (default: the run's data.val_shards)")
    p.add_argument("--num-clips", type=int, default=None, help="clips per video (default: data.test_num_clips)")
    p.add_argument("--num-crops", type=int, default=None, choices=(1, 3), help="crops per clip (default: data.test_num_crops)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per forward pass (default: the run's)")
    p.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: the run's)")
    p.add_argument("--out", default="", help="output directory (default: the model's run directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--probe", nargs="+", choices=("knn", "linear", "attentive"), default=None, metavar="KIND",
                   help="frozen-encoder probe(s) instead of evaluating a classifier: knn (DINO weighted k-NN, "
                        "k=20, T=0.07), linear (BatchNorm + linear, as MAE), attentive (one learned query)")
    p.add_argument("--train-shards", default="", help="--probe: labeled shards the probe is fitted on "
                   "(default: --shards split by video key, 20%% scored)")
    p.add_argument("--probe-steps", type=int, default=200, help="--probe: AdamW steps fitting linear/attentive")
    p.add_argument("--sampling-rate", type=int, default=None, help="--probe: frame stride (default: the encoder's)")


def run_probe_cli(args) -> int:
    """``tubelet evaluate --probe ...``: probe any encoder source, print and write ``probe.json``."""

    from finetune.extract import source_data_config
    from finetune.interop.sources import open_source_arg
    from pretrain.config import UsageError
    from pretrain.data.shard_writer import read_classes
    from pretrain.probe import ProbeError, probe_encoder
    from pretrain.train.runtime import process_state

    if not args.shards:
        raise UsageError("--probe needs --shards (labeled test shards)")
    src = open_source_arg(args.model, "--model")
    enc = src.encoder
    cfg = source_data_config(src, batch_size=args.batch_size or 8,
                             num_workers=2 if args.workers is None else args.workers, sampling_rate=args.sampling_rate)
    classes = None
    for d in (args.train_shards, args.shards):
        if d and Path(d).is_dir():
            classes = classes or read_classes(d)
    if not classes:
        raise UsageError("--probe needs labeled shards with a classes.json")
    state = process_state()
    rank, world, device = state.process_index, state.num_processes, state.device
    try:
        res = probe_encoder(enc.to(device), cfg, args.probe, len(classes), shards=args.shards,
                            fit_shards=args.train_shards or None, rank=rank, world_size=world, device=device,
                            steps=args.probe_steps, progress=not args.no_progress)
    except ProbeError as e:
        raise UsageError(f"--shards: {e}") from e
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
    from finetune.classifier import classifier_forward, load_finetuned
    from pretrain.train.runtime import process_state

    state = process_state()  # joins the group under accelerate launch
    rank, world, device = state.process_index, state.num_processes, state.device
    model, cfg, meta = load_finetuned(args.model, device=device)
    if args.batch_size:
        cfg.data.batch_size = args.batch_size
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    shards = args.shards or cfg.data.val_shards
    if not shards:
        from pretrain.config import UsageError

        raise UsageError("--shards: not given, and the run has no data.val_shards")
    k = args.num_clips or cfg.data.test_num_clips
    c = args.num_crops or cfg.data.test_num_crops
    out = Path(args.out or meta["run_dir"])
    summary = evaluate_model(model, cfg.data, shards, meta["num_classes"], num_clips=k, num_crops=c,
                             rank=rank, world_size=world, device=device, class_names=meta.get("classes"),
                             progress=not args.no_progress, forward=classifier_forward, scores_dir=out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        summary["shards"] = shards
        (out / "eval.json").write_text(json.dumps(summary, indent=1))
        save_confusion_png(summary, out / "confusion.png", title=confusion_title(meta))
        for line in report_lines(summary):
            print(line)
        print(f"videos {summary['num_videos']} (x{k} clips x{c} crops)  top-1 {100 * summary['top1']:.2f}%  "
              f"top-5 {100 * summary['top5']:.2f}%  skipped {summary['skipped']}")
        print(f"wrote {out / 'eval.json'}, {out / 'confusion.png'}, {out / 'scores.npy'} and {out / 'scores_keys.json'}")
    return 0


def confusion_title(meta: dict) -> str:
    """Title of ``tubelet evaluate``'s confusion matrix: the model and the run it came from.

    (``final/config.json`` names the model under ``model``; the title used to read a ``name`` key
    that is never written, so it was always blank.)"""
    model = meta.get("model") or ""
    run = Path(meta["run_dir"]).name if meta.get("run_dir") else ""
    init = meta.get("init") or ""
    init = "pretrained" if init.startswith("loaded") else init
    parts = [model + (f" ({init})" if init else ""), run if run and run != model else ""]
    return " - ".join(p for p in parts if p)
