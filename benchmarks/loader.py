"""Loader throughput: clips/s per worker core, tubelet's shard loader vs a VideoMAE-style path.

Both paths read the SAME freshly encoded H.264 videos in the same run, one core each
(``torch.set_num_threads(1)``, decord with one thread), 16x224x224 clips, stride 4, repeated
sampling 4 with the VideoMAE multi-scale crop:

* tubelet: ``build_loader(cfg, "train")`` over WebDataset shards -- decode once from bytes,
  uint8 crop + one resize per clip in torch, normalisation left to the device (not timed).
* VideoMAE-style (as in MCG-NJU/VideoMAE's pretraining dataset): ``decord.VideoReader`` per file
  on disk, ``get_batch``, a PIL image per frame, per-frame PIL crop + bilinear resize,
  stack -> float tensor / 255 -> per-channel normalise in the worker; repeated sampling applies
  the transform R times to the decoded frames (VideoMAE V2).

Trials alternate between the two paths (a shared machine drifts); the median is reported, both
per wall-clock second (divided by the worker count) and per CPU-second of the process (with
``--workers 0``), which stays meaningful when other jobs share the cores.

    python benchmarks/loader.py                       # 16 videos, 3 trials of 160 clips per path
    python benchmarks/loader.py --videos 32 --clips 400 --trials 5 --json out.json
Targets (issue 2): >= 40 clips/s/core and >= 1.5x the VideoMAE-style path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from pretrain.config import DataConfig  # noqa: E402
from pretrain.data.loader import build_loader  # noqa: E402
from pretrain.data.shard_writer import ShardSink, sample_meta  # noqa: E402
from pretrain.data.transforms import multiscale_box  # noqa: E402
from pretrain.data.video_io import encode_mp4  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALES = (1.0, 0.875, 0.75, 0.66)


def make_videos(out: Path, count: int, frames: int, width: int, height: int, fps: float, gop: int,
                seed: int = 0) -> list[Path]:
    """Natural-ish test videos: a panning smooth texture, two moving blobs, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for v in range(count):
        coarse = rng.random((height // 12 + 1, (width + frames // 4) // 12 + 1, 3)).astype(np.float32)
        tex = cv2.resize(coarse, (coarse.shape[1] * 12, coarse.shape[0] * 12), interpolation=cv2.INTER_CUBIC)
        blobs = rng.random((2, 6)) * [width, height, 3, 3, 30, 1]
        noise = rng.normal(0, 3, (8, height, width, 3)).astype(np.float32)  # a few frames, cycled
        video = np.empty((frames, height, width, 3), np.uint8)
        for t in range(frames):
            img = tex[:height, t // 4: t // 4 + width] * 200 + 20
            for bx, by, vx, vy, r, c in blobs:
                cx, cy = (bx + vx * t) % width, (by + vy * t) % height
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (r + 10) ** 2
                img[mask] = img[mask] * 0.3 + np.array([255 * c, 180, 255 * (1 - c)]) * 0.7
            img += noise[t % len(noise)]
            video[t] = np.clip(img, 0, 255).astype(np.uint8)
        path = out / f"video{v:04d}.mp4"
        path.write_bytes(encode_mp4(video, fps=fps, crf=23, gop=gop))
        paths.append(path)
    return paths


def write_shards(paths: list[Path], out: Path, per_shard: int) -> Path:
    with ShardSink(out, maxcount=per_shard) as sink:
        for p in paths:
            sink.write(p.stem, p.read_bytes(), sample_meta(None, None, 0, 0, 0, 0, str(p)))
    return out


class VideoMAEStylePath:
    """Per-file decord + PIL/numpy transforms, the way VideoMAE's pretraining dataset works."""

    def __init__(self, paths: list[Path], num_frames: int, stride: int, size: int, repeats: int, seed: int = 0):
        import decord

        self.decord = decord
        self.paths, self.t, self.stride, self.size, self.repeats = paths, num_frames, stride, size, repeats
        self.rng = np.random.default_rng(seed)

    def _indices(self, n: int) -> list[int]:
        span = self.t * self.stride
        offset = int(self.rng.integers(0, n - span + 1)) if n >= span else 0
        return [(offset + i * self.stride) % n for i in range(self.t)]

    def _transform(self, images) -> torch.Tensor:
        from PIL import Image

        w, h = images[0].size
        y, x, ch, cw = multiscale_box(h, w, SCALES, self.size, self.rng)
        crops = [im.crop((x, y, x + cw, y + ch)).resize((self.size, self.size), Image.BILINEAR) for im in images]
        stacked = np.concatenate([np.asarray(c) for c in crops], axis=2)  # (H, W, 3T)
        x = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # (3T, H, W)
        for i, ch_ in enumerate(x):  # per-channel normalise in the worker
            ch_.sub_(MEAN[i % 3]).div_(STD[i % 3])
        return x.view(self.t, 3, self.size, self.size).transpose(0, 1)  # (3, T, H, W)

    def clips(self):
        from PIL import Image

        while True:
            for path in self.paths:
                vr = self.decord.VideoReader(str(path), num_threads=1, ctx=self.decord.cpu(0))
                buf = vr.get_batch(self._indices(len(vr))).asnumpy()
                images = [Image.fromarray(buf[i]).convert("RGB") for i in range(buf.shape[0])]
                for _ in range(self.repeats):
                    yield self._transform(images)


def _rates(n: int, wall0: float, cpu0: float, cores: int) -> tuple[float, float]:
    """(clips per wall second per core, clips per CPU second of this process)."""
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall / cores, n / max(cpu, 1e-9)


def time_videomae(path: VideoMAEStylePath, clips: int) -> tuple[float, float]:
    it = path.clips()
    next(it)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(clips):
        clip = next(it)
    rates = _rates(clips, t0, c0, 1)
    assert clip.shape == (3, path.t, path.size, path.size) and clip.dtype == torch.float32
    return rates


def time_tubelet(cfg: DataConfig, shards: Path, clips: int, seed: int) -> tuple[float, float, dict]:
    loader = build_loader(cfg, "train", shards=str(shards), seed=seed)
    it = iter(loader)
    next(it)  # warm-up (starts workers)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for batch in islice(it, max(1, clips // cfg.batch_size)):
        n += batch["video"].shape[0]
    wall_rate, cpu_rate = _rates(n, t0, c0, max(1, cfg.num_workers))
    assert batch["video"].shape[1:] == (3, cfg.num_frames, cfg.img_size, cfg.img_size)
    # with workers the decoding happens in child processes: their CPU time is not ours to count
    return wall_rate, (cpu_rate if cfg.num_workers == 0 else float("nan")), loader.stats()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=16, help="test videos to create")
    p.add_argument("--frames", type=int, default=300, help="frames per test video")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--gop", type=int, default=30, help="keyframe interval of the test videos")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=4, help="repeated sampling: clips per decoded video")
    p.add_argument("--repeat-temporal", action="store_true", help="tubelet: a new temporal position per repeat")
    p.add_argument("--backend", default="decord", choices=["decord", "pyav"], help="tubelet decoder")
    p.add_argument("--workers", type=int, default=0, help="tubelet DataLoader workers (rate is divided by them)")
    p.add_argument("--clips", type=int, default=160, help="clips timed per path per trial")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--dir", help="keep the videos/shards here (default: a temp dir)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        t0 = time.perf_counter()
        paths = make_videos(root / "videos", args.videos, args.frames, args.width, args.height, args.fps, args.gop)
        shards = write_shards(paths, root / "shards", per_shard=max(1, args.videos // 4))
        print(f"made {args.videos} videos ({args.frames} frames {args.width}x{args.height} @ {args.fps:g} fps, "
              f"H.264 gop {args.gop}) and shards in {time.perf_counter() - t0:.1f}s")
        cfg = DataConfig(backend=args.backend, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                         img_size=args.size, num_repeats=args.repeats, batch_size=2 * args.repeats,
                         num_workers=args.workers, shuffle_buffer=8, train_crop="multiscale",
                         repeat_temporal=args.repeat_temporal)
        ref = VideoMAEStylePath(paths, args.num_frames, args.sampling_rate, args.size, args.repeats)
        ours, theirs, ours_cpu, theirs_cpu, stats = [], [], [], [], {}
        for trial in range(args.trials):
            wall, cpu = time_videomae(ref, args.clips)
            theirs.append(wall)
            theirs_cpu.append(cpu)
            wall, cpu, stats = time_tubelet(cfg, shards, args.clips, seed=trial)
            ours.append(wall)
            ours_cpu.append(cpu)
            print(f"trial {trial}: tubelet {ours[-1]:.1f}  videomae-style {theirs[-1]:.1f} clips/s/core (wall); "
                  f"per CPU-second {ours_cpu[-1]:.1f} vs {theirs_cpu[-1]:.1f}")
    med = statistics.median
    res = {"tubelet_clips_per_s_per_core": med(ours), "videomae_style_clips_per_s_per_core": med(theirs),
           "tubelet_clips_per_cpu_s": med(ours_cpu), "videomae_style_clips_per_cpu_s": med(theirs_cpu),
           "trials": {"tubelet": ours, "videomae_style": theirs, "tubelet_cpu": ours_cpu,
                      "videomae_style_cpu": theirs_cpu},
           "loader_stats": stats, "args": vars(args)}
    res["ratio"] = res["tubelet_clips_per_s_per_core"] / res["videomae_style_clips_per_s_per_core"]
    res["ratio_cpu"] = res["tubelet_clips_per_cpu_s"] / res["videomae_style_clips_per_cpu_s"]
    print(f"clip {args.num_frames}x{args.size}x{args.size}, stride {args.sampling_rate}, repeats {args.repeats}, "
          f"backend {args.backend}, workers {args.workers}")
    print("                      wall clock/core   per CPU-second (robust on a shared machine)")
    print(f"tubelet loader      : {res['tubelet_clips_per_s_per_core']:7.1f} clips/s      {res['tubelet_clips_per_cpu_s']:7.1f}"
          "   (target >= 40)")
    print(f"VideoMAE-style path : {res['videomae_style_clips_per_s_per_core']:7.1f} clips/s      "
          f"{res['videomae_style_clips_per_cpu_s']:7.1f}")
    print(f"ratio               : {res['ratio']:7.2f}x           {res['ratio_cpu']:7.2f}x   (target >= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
