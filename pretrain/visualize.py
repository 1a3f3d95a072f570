"""Pictures of a run: reconstruction grids and the loss curve (PNG, matplotlib's Agg backend).

    out = mae.reconstruct(video)                       # original / masked / recon, (B, 3, T, H, W)
    save_recon_grid(out, mean, std, "runs/x/recon_step100.png", frames=8)
    plot_loss_curve(records, "runs/x/loss.png")        # records as in metrics.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

ROWS = ("original", "masked", "recon")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def to_images(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``video: (B, 3, T, H, W)`` -> uint8 ``(B, T, H, W, 3)`` (denormalised, clipped)."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    x = (video.detach().float().cpu() * s + m).clamp(0, 1)
    return (x.permute(0, 2, 3, 4, 1).numpy() * 255).round().astype(np.uint8)


def save_recon_grid(out: dict, mean: Sequence[float], std: Sequence[float], path: str | Path,
                    frames: int = 8, clips: int = 2, title: str = "") -> Path:
    """Grid with, per clip, rows original / masked input / reconstruction over ``frames`` frames.

    ``out``: ``reconstruct()``'s dict with ``original``, ``masked``, ``recon`` each
    ``(B, 3, T, H, W)`` in normalised space. Frames are spread evenly over ``T``.
    """
    imgs = {k: to_images(out[k][:clips], mean, std) for k in ROWS}
    b, t = imgs["original"].shape[:2]
    idx = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    plt = _plt()
    fig, axes = plt.subplots(b * len(ROWS), len(idx), figsize=(1.1 * len(idx) + 0.6, 1.1 * b * len(ROWS) + 0.4),
                             squeeze=False)
    for c in range(b):
        for r, name in enumerate(ROWS):
            for j, f in enumerate(idx):
                ax = axes[c * len(ROWS) + r, j]
                ax.imshow(imgs[name][c, f], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{name}" + (f"\nclip {c}" if r == 0 else ""), fontsize=7)
                if c == 0 and r == 0:
                    ax.set_title(f"t={f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.96 if title else 1))
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG (creating the directory) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (blank lines ignored)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(records: Iterable[dict] | str | Path, path: str | Path) -> Path:
    """Loss (log scale) and LR over steps from metric records or a ``metrics.jsonl`` path."""
    if isinstance(records, (str, Path)):
        records = read_metrics(records)
    pts = [(r["step"], r["loss"], r.get("lr")) for r in records if r.get("loss") is not None]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if pts:
        steps, loss, lr = zip(*pts)
        ax.plot(steps, loss, color="tab:blue", lw=1.2, label="loss")
        if min(loss) > 0:
            ax.set_yscale("log")
        if all(v is not None for v in lr):
            ax2 = ax.twinx()
            ax2.plot(steps, lr, color="tab:orange", lw=0.8, alpha=0.7)
            ax2.set_ylabel("lr", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_probe_curve(records: Iterable[dict] | str | Path, path: str | Path, title: str = "") -> Optional[Path]:
    """Probe top-1 (%) over pretraining steps, one line per probe, the step-0 (random-init) value
    as a dashed line; from metric records (``probe_<kind>_top1`` keys) or a ``metrics.jsonl``."""
    if isinstance(records, (str, Path)):
        records = read_metrics(records)
    series: dict = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("probe_") and k.endswith("_top1") and v is not None:
                series.setdefault(k[len("probe_"):-len("_top1")], []).append((r["step"], 100 * v))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (kind, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts)
        color = f"C{i}"
        steps, acc = zip(*pts)
        ax.plot(steps, acc, marker="o", ms=3, lw=1.2, color=color, label=kind)
        if pts[0][0] == 0:
            ax.axhline(pts[0][1], color=color, ls="--", lw=0.8, alpha=0.7, label=f"{kind}, random init")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("probe top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
