"""Markdown comparison report of fine-tuned models and baselines.

    tubelet compare runs/demo/ft_* --out runs/demo/REPORT.md

Reads each run's ``results.json`` (written by ``tubelet finetune``): model, init (scratch /
pretrained), params, GFLOPs per clip, train clips/s, top-1, top-5, labels per class, seed. Runs that
share (model, init, labels per class) are grouped: with several seeds the report gives mean ± spread
(half the min–max range) and n. The report links each run's PNGs (confusion matrix, curves).
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from collections import OrderedDict
from pathlib import Path


def load_results(paths: list[str]) -> list[dict]:
    """``results.json`` of every run directory named (globs allowed); runs without one are listed as missing."""
    out = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for m in matches:
            p = Path(m)
            f = p / "results.json" if p.is_dir() else p
            if f.is_file():
                r = json.loads(f.read_text())
                r.setdefault("run_dir", str(f.parent))
                out.append(r)
    return out


def _fmt_pct(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{100 * mean:.1f}"
    spread = (max(vals) - min(vals)) / 2
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def _fmt_num(v, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def group_results(results: list[dict]) -> "OrderedDict[tuple, list[dict]]":
    groups: OrderedDict[tuple, list[dict]] = OrderedDict()
    for r in results:
        key = (r.get("model", "?"), r.get("init", "scratch"), r.get("head", "finetune"), r.get("labels_per_class"))
        groups.setdefault(key, []).append(r)
    return groups


def render_markdown(results: list[dict], title: str = "tubelet comparison", rel_to: str | Path | None = None,
                    chance: float | None = None) -> str:
    """One table row per (model, init, head, labels/class) group, then the per-run PNG links."""
    lines = [f"# {title}", ""]
    if chance is not None:
        lines += [f"Chance level: {100 * chance:.1f}% top-1.", ""]
    lines += ["| model | init | head | labels/class | seeds | params (M) | GFLOPs/clip | train clips/s | top-1 % | top-5 % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, init, head, lpc), runs in group_results(results).items():
        r0 = runs[0]
        cps = [r.get("train_clips_per_s") for r in runs if r.get("train_clips_per_s")]
        lines.append(
            f"| {model} | {init} | {head} | {lpc if lpc is not None else 'all'} | {len(runs)} | "
            f"{_fmt_num((r0.get('params') or 0) / 1e6, '.2f')} | {_fmt_num(r0.get('gflops_per_clip'), '.3f')} | "
            f"{_fmt_num(sum(cps) / len(cps) if cps else None, '.1f')} | "
            f"{_fmt_pct([r.get('top1') for r in runs])} | {_fmt_pct([r.get('top5') for r in runs])} |")
    lines += ["", "Top-1/top-5: multi-view evaluation (clips × crops averaged per video) on the test split; "
              "with several seeds, mean ± half the min–max range.", ""]
    pngs = []
    for r in results:
        d = Path(r["run_dir"])
        for name in ("confusion.png", "loss.png", "curves.png"):
            if (d / name).is_file():
                target = os.path.relpath(d / name, rel_to) if rel_to else str(d / name)
                pngs.append(f"- {r.get('name', d.name)} — [{name}]({target})")
    if pngs:
        lines += ["## Pictures", "", *pngs, ""]
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", help="fine-tune run directories or globs (each with results.json)")
    p.add_argument("--out", default="", help="write the Markdown report here (also printed)")
    p.add_argument("--title", default="tubelet comparison")
    p.add_argument("--chance", type=float, default=None, help="chance-level top-1 to print above the table")


def run(args) -> int:
    results = load_results(args.runs)
    if not results:
        print("tubelet compare: no results.json found in " + " ".join(args.runs), file=sys.stderr)
        return 1
    rel = Path(args.out).parent if args.out else None
    text = render_markdown(results, title=args.title, rel_to=rel, chance=args.chance)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0
