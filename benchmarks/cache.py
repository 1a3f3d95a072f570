"""Decoded-clip cache (``data.cache``): loader clips/s and data-wait share, decode vs cache.

On the embedded benchmark (``tubelet synth``: 16x32x32 H.264 clips, keyframe every 4 frames) the
loader's time is almost all H.264 decoding (plus the PyAV container probe); the cache decodes every
video once and memory-maps the uint8 frames afterwards. Measured here, in one process run:

* **loader only** -- clips/s of ``build_loader(cfg, "train")`` over the synth ``pretrain`` split with
  the ``configs/pretrain/synth_tiny.yaml`` data section (batch 8, 1 worker, multi-scale crop, no
  flip): ``decode`` (no cache), ``cache cold`` (first epoch: decodes and writes the cache) and
  ``cache warm`` (later epochs: memory-mapped frames only).
* **training loop** -- the synth_tiny VideoMAE step (forward, backward, AdamW) fed by the loader:
  the share of wall time the loop waits for the next batch (what ``metrics.jsonl`` logs as
  ``data_wait``), ``decode`` vs ``cache warm``.

Trials alternate between the modes (a shared machine drifts); medians are reported.

    python benchmarks/cache.py                                  # ~1 min on 2 cores
    python benchmarks/cache.py --videos 400 --trials 3 --steps 40 --cache ram --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from pretrain.config import PretrainConfig, load_config  # noqa: E402
from pretrain.data.loader import build_loader  # noqa: E402
from pretrain.data.synth import write_synth  # noqa: E402
from pretrain.data.transforms import normalize_on_device  # noqa: E402


def loader_rate(cfg, batches: int, seed: int = 0) -> tuple[float, object]:
    """Clips/s over ``batches`` batches (the DataLoader start-up excluded: timed from batch 1)."""
    loader = build_loader(cfg, "train", seed=seed)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in islice(it, batches):
        pass
    dt = time.perf_counter() - t0
    return batches * cfg.batch_size / dt, loader


def train_wait(cfg, model, opt, steps: int, seed: int = 0) -> dict:
    """Run ``steps`` training steps; returns wall s, data-wait share, clips/s."""
    it = iter(build_loader(cfg, "train", seed=seed))
    batch = next(it)  # start-up excluded
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        video = normalize_on_device(batch["video"], cfg.mean, cfg.std)
        loss, _ = model(video)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {"wall_s": dt, "data_wait": wait / dt, "clips_per_s": steps * cfg.batch_size / dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=400, help="videos in the synth pretrain split")
    ap.add_argument("--batches", type=int, default=40, help="loader-only batches per trial")
    ap.add_argument("--steps", type=int, default=30, help="training steps per trial")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cache", default="", help="cache dir (default: a temp dir); 'ram' for /dev/shm")
    ap.add_argument("--out", default="", help="synth data dir (default: a temp dir)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="tubelet-cache-bench-"))
    data = Path(args.out) if args.out else tmp / "synth"
    if not (data / "pretrain" / "manifest.json").is_file():
        t0 = time.perf_counter()
        write_synth(data, videos_per_class=max(1, args.videos // 20), pretrain_videos=args.videos,
                    val_per_class=1, test_per_class=1, progress=False)
        print(f"synth: {args.videos} videos in {time.perf_counter() - t0:.1f} s")
    cache = args.cache or str(tmp / "cache")
    base = ["data.shards=" + str(data / "pretrain"), f"data.num_workers={args.workers}"]
    cfg_plain = load_config(PretrainConfig, "configs/pretrain/synth_tiny.yaml", base)
    cfg_cache = load_config(PretrainConfig, "configs/pretrain/synth_tiny.yaml", base + [f"data.cache={cache}"])
    d_plain, d_cache = cfg_plain.data, cfg_cache.data
    epoch_batches = args.videos // d_plain.batch_size

    # cold: one full epoch that fills the cache (timed as a whole, start-up included)
    t0 = time.perf_counter()
    loader = build_loader(d_cache, "train", seed=99)
    for _ in islice(loader, epoch_batches):
        pass
    cold = epoch_batches * d_plain.batch_size / (time.perf_counter() - t0)
    print(f"cache cold (1 epoch, fills the cache): {cold:.1f} clips/s")

    res = {"decode": [], "cache_warm": []}
    for trial in range(args.trials):
        for name, c in (("decode", d_plain), ("cache_warm", d_cache)):
            rate, _ = loader_rate(c, args.batches, seed=trial)
            res[name].append(rate)
            print(f"trial {trial} loader {name:10s} {rate:8.1f} clips/s")

    from pretrain.main import build_model

    torch.manual_seed(0)
    model = build_model(cfg_plain)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    waits = {"decode": [], "cache_warm": []}
    for trial in range(args.trials):
        for name, c in (("decode", d_plain), ("cache_warm", d_cache)):
            r = train_wait(c, model, opt, args.steps, seed=trial)
            waits[name].append(r)
            print(f"trial {trial} train  {name:10s} data_wait {r['data_wait']:.1%}  {r['clips_per_s']:.1f} clips/s")

    out = {
        "videos": args.videos, "workers": args.workers, "batch_size": d_plain.batch_size,
        "loader_clips_per_s": {"decode": statistics.median(res["decode"]), "cache_cold": cold,
                               "cache_warm": statistics.median(res["cache_warm"])},
        "train_data_wait": {k: statistics.median(r["data_wait"] for r in v) for k, v in waits.items()},
        "train_clips_per_s": {k: statistics.median(r["clips_per_s"] for r in v) for k, v in waits.items()},
    }
    lc = out["loader_clips_per_s"]
    out["loader_speedup"] = lc["cache_warm"] / lc["decode"]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    if cache == "ram":
        from pretrain.data.cache import cleanup_ram_caches

        cleanup_ram_caches()
    return out


if __name__ == "__main__":
    main()
