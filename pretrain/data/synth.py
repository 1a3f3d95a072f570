"""The embedded benchmark: procedural videos whose classes are defined only by motion.

    tubelet synth --out data/synth                       # easy, 16 frames of 32x32, ~7k videos
    tubelet synth --out data/synth_hard --difficulty hard --preview

Writes ``DIR/{pretrain,train,val,test}/`` (WebDataset shards of H.264 mp4, ``manifest.json``,
``classes.json``); ``pretrain`` is unlabeled (``label: null``, no ``.cls``).

Ten classes in five time-reversed twin pairs: translate left/right, up/down, rotate cw/ccw,
grow/shrink, fade in/out. Every video has one object whose state per frame is

    position (x, y)   on the torus [0, S)^2     (the object wraps around the image borders)
    angle             on the circle [0, 2pi)    (an off-centre dot makes rotation visible)
    log radius        on the circle [log r_min, log r_max)
    opacity           on the circle [a_min, a_max)

Each class moves exactly one of these at a constant rate (sign = direction); the start state is
uniform on every circle, so *at every frame index* each variable is uniform and independent of
the class: one frame carries no class information (opacity never reaches 0, sizes never differ
by class). Moving past the end of a circle wraps, so ``grow`` occasionally pops from large to
small, just as ``translate_right`` leaves at the right border and re-enters at the left. A clip
and its time reverse belong to the twin classes, so an order-blind model cannot beat ~50 %.
Appearance (shape, colours, texture, background clutter, a distractor drifting slower than the
target, sensor noise) is drawn per video independently of the class.

Default size: 16 frames of 32x32 at 8 fps: a throwaway prototype with that geometry taught a
small 3D CNN 53/70/80 % with 2k/4k/5.8k labeled clips on one CPU thread, and 32x32 keeps ViT
token counts (patch 4, tubelet 2: 8x8x8 = 512) small enough to pretrain on a 2-core machine;
``--size 64`` is there for larger runs. Measured with this renderer (3 Conv3d layers, 2000
labeled clips, one thread, rendered frames): ``easy`` 67 % held-out after 4 epochs at 16x32x32
(75 % after 6 epochs at 8x16x16); ``hard`` 26 % after 6 epochs at 16x32x32 (chance 10 %; with
stronger texture and noise, as in the prototype's hard setting, it stayed at chance).
Generation costs ~7 ms of CPU per video (render + H.264). Every video's RNG derives from
``(seed, split, index)``, so the frames are identical for any ``--workers``, and so are the mp4
bytes at sizes that are multiples of 32 (at 16 mod 32, libx264 reads uninitialised row padding
in ``encode_mp4``'s frames); tar headers carry the write time.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("translate_left", "translate_right", "translate_up", "translate_down",
           "rotate_cw", "rotate_ccw", "grow", "shrink", "fade_in", "fade_out")
# class -> (moved state variable, direction); twins share the variable with opposite signs
MOTION = {"translate_left": ("x", -1), "translate_right": ("x", 1), "translate_up": ("y", -1),
          "translate_down": ("y", 1), "rotate_cw": ("angle", 1), "rotate_ccw": ("angle", -1),
          "grow": ("logr", 1), "shrink": ("logr", -1), "fade_in": ("alpha", 1), "fade_out": ("alpha", -1)}
SPLITS = ("pretrain", "train", "val", "test")
SHAPES = ("disc", "square", "triangle", "hexagon")


@dataclass(frozen=True)
class Difficulty:
    """Appearance and motion ranges; lengths are fractions of the frame size S, speeds per frame."""

    radius: tuple[float, float]       # object radius range (its log is the wrapped state)
    alpha: tuple[float, float]        # opacity range (> 0: a faded object is never invisible)
    speed: tuple[float, float]        # translation, S per frame
    spin: tuple[float, float]         # rotation, radians per frame
    zoom: tuple[float, float]         # log-radius change per frame
    fade: tuple[float, float]         # opacity change per frame
    distractor_radius: tuple[float, float]
    distractor_speed: tuple[float, float]  # S per frame (easy: below every target's pixel motion)
    noise: float                      # sensor noise std (uint8 levels), fresh every frame
    clutter: int                      # static background blobs
    texture: float                    # amplitude of stripes on the object and the background


DIFFICULTIES = {
    # large objects, large motion, low noise, slow distractor: learnable on a CPU. At S=32 the
    # slowest targets move 0.9 px/frame (translation), 0.43 px (rotating marker), 0.17 px (growing
    # edge); the distractor at most 0.16 px/frame
    "easy": Difficulty(radius=(0.15, 0.36), alpha=(0.5, 1.0), speed=(0.028, 0.045), spin=(0.2, 0.32),
                       zoom=(0.035, 0.055), fade=(0.015, 0.025), distractor_radius=(0.05, 0.08),
                       distractor_speed=(0.0, 0.005), noise=3.0, clutter=3, texture=0.0),
    # smaller striped objects, slower motion, 3x the per-frame noise, busier background; the
    # distractor is slower than any translation but as fast as the slowest rotations and zooms.
    # Tuned to stay learnable: texture 0.35 and noise 14 left a small 3D CNN at chance
    "hard": Difficulty(radius=(0.1, 0.22), alpha=(0.4, 1.0), speed=(0.02, 0.032), spin=(0.15, 0.25),
                       zoom=(0.025, 0.04), fade=(0.012, 0.02), distractor_radius=(0.05, 0.09),
                       distractor_speed=(0.0, 0.01), noise=9.0, clutter=6, texture=0.12),
}


def _wrap(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``v`` onto the circle [lo, hi)."""
    return v - (hi - lo) * np.floor((v - lo) / (hi - lo))


def _torus_delta(a: np.ndarray, b: np.ndarray, size: float) -> np.ndarray:
    """Shortest signed difference ``a - b`` on a circle of length ``size`` (np.mod is 50x slower)."""
    d = a - b
    return d - size * np.floor(d / size + 0.5)


def _shape_sdf(shape: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii, < 0 inside) of a unit ``shape`` at object coords."""
    if shape == "disc":
        return np.hypot(px, py) - 1.0
    if shape == "square":
        return np.maximum(np.abs(px), np.abs(py)) - 0.8
    n = 3 if shape == "triangle" else 6  # regular polygon: max over edge normals
    ang = 2 * np.pi * np.arange(n) / n + np.pi / 2
    d = np.max(np.stack([px * np.cos(a) + py * np.sin(a) for a in ang]), axis=0)
    return d - (0.6 if n == 3 else 0.9)


def _blobs(rng: np.random.Generator, n: int, size: int, yy, xx) -> tuple[np.ndarray, np.ndarray]:
    """``n`` static soft ellipses: colour (n, 3) and weight (n, S, S)."""
    cols = rng.uniform(0, 255, (n, 3))
    w = np.zeros((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0, size, 2)
        sy, sx = rng.uniform(0.06, 0.2, 2) * size
        dy, dx = _torus_delta(yy, cy, size), _torus_delta(xx, cx, size)
        w[i] = rng.uniform(0.15, 0.4) * np.exp(-0.5 * ((dy / sy) ** 2 + (dx / sx) ** 2))
    return cols, w


def _stripes(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: tuple[float, float]) -> np.ndarray:
    ang = rng.uniform(0, np.pi)
    freq = 2 * np.pi / rng.uniform(*period)
    return np.sin(freq * (u * np.cos(ang) + v * np.sin(ang)) + rng.uniform(0, 2 * np.pi))


def render_video(class_id: int, rng: np.random.Generator, frames: int = 16, size: int = 32,
                 difficulty: str = "easy") -> np.ndarray:
    """Render one video of class ``class_id`` -> ``(T, H, W, 3) uint8`` RGB with T=frames, H=W=size.

    Pure function of its arguments (all randomness comes from ``rng``).
    """
    if not 0 <= class_id < len(CLASSES):
        raise ValueError(f"class_id must be in [0, {len(CLASSES)}), got {class_id}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    if frames < 2 or size < 8:
        raise ValueError(f"need frames >= 2 and size >= 8, got frames={frames} size={size}")
    d, S, T = DIFFICULTIES[difficulty], float(size), frames
    t = np.arange(T, dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, (S, S)

    # --- the moving object: every state variable starts uniform on its circle
    lr_lo, lr_hi = math.log(d.radius[0] * S), math.log(d.radius[1] * S)
    state = {"x": rng.uniform(0, S), "y": rng.uniform(0, S), "angle": rng.uniform(0, 2 * np.pi),
             "logr": rng.uniform(lr_lo, lr_hi), "alpha": rng.uniform(*d.alpha)}
    var, sign = MOTION[CLASSES[class_id]]
    rate = {"x": d.speed, "y": d.speed, "angle": d.spin, "logr": d.zoom, "alpha": d.fade}[var]
    rate = sign * rng.uniform(*rate) * (S if var in ("x", "y") else 1.0)
    traj = {k: np.full(T, v) for k, v in state.items()}
    traj[var] = state[var] + rate * t
    cx, cy, angle = traj["x"], traj["y"], traj["angle"]
    radius = np.exp(_wrap(traj["logr"], lr_lo, lr_hi))
    alpha = _wrap(traj["alpha"], *d.alpha)

    # object coordinates (in radii) of every pixel, minimal image on the torus: (T, S, S)
    dx = _torus_delta(xx[None], cx[:, None, None].astype(np.float32), S)
    dy = _torus_delta(yy[None], cy[:, None, None].astype(np.float32), S)
    c, s = np.cos(angle, dtype=np.float32)[:, None, None], np.sin(angle, dtype=np.float32)[:, None, None]
    r = radius.astype(np.float32)[:, None, None]
    px, py = (c * dx + s * dy) / r, (-s * dx + c * dy) / r
    shape = SHAPES[rng.integers(len(SHAPES))]
    inside = np.clip(0.5 - _shape_sdf(shape, px, py) * r, 0.0, 1.0)  # 1-pixel anti-aliased edge
    dot = np.clip(0.5 - (np.hypot(px - 0.45, py) - 0.28) * r, 0.0, 1.0)  # asymmetric marker

    bg_col = rng.uniform(0, 255, 3)
    obj_col = rng.uniform(0, 255, 3)
    # keep the object visible against the background: push its colour away when too close
    if np.linalg.norm(obj_col - bg_col) < 150:
        obj_col = np.where(bg_col > 127, np.maximum(bg_col - 160, 0), np.minimum(bg_col + 160, 255))
        obj_col = np.clip(obj_col + rng.uniform(-30, 30, 3), 0, 255)
    dot_col = 255.0 - obj_col
    obj = obj_col * (1 - dot[..., None]) + dot_col * dot[..., None]  # (T, S, S, 3)
    if d.texture:
        obj = obj * (1 + d.texture * _stripes(rng, px, py, (0.5, 1.0))[..., None])

    # --- static background: colour, soft clutter blobs, optional stripes
    bg = np.broadcast_to(bg_col, (size, size, 3)).astype(np.float32)
    gy, gx = rng.normal(0, 25, 2)
    bg = bg + (gy * (yy / S - 0.5) + gx * (xx / S - 0.5))[..., None]
    bcols, bw = _blobs(rng, d.clutter, size, yy, xx)
    for col, w in zip(bcols, bw):
        bg = bg * (1 - w[..., None]) + col * w[..., None]
    if d.texture:
        bg = bg * (1 + d.texture * 0.3 * _stripes(rng, xx, yy, (4.0, 8.0))[..., None])

    # --- distractor: a small disc drifting in a random direction, slower than the target (DIFFICULTIES)
    dr = rng.uniform(*d.distractor_radius) * S
    heading = rng.uniform(0, 2 * np.pi)
    dv = rng.uniform(*d.distractor_speed) * S
    dcx = (rng.uniform(0, S) + dv * np.cos(heading) * t).astype(np.float32)
    dcy = (rng.uniform(0, S) + dv * np.sin(heading) * t).astype(np.float32)
    ddx, ddy = _torus_delta(xx[None], dcx[:, None, None], S), _torus_delta(yy[None], dcy[:, None, None], S)
    dmask = np.clip(0.5 - (np.hypot(ddx, ddy) - dr), 0.0, 1.0)[..., None]
    dcol = rng.uniform(0, 255, 3)
    in_front = rng.random() < 0.5

    video = np.broadcast_to(bg, (T, size, size, 3)).copy()
    omask = (inside * alpha.astype(np.float32)[:, None, None])[..., None]
    layers = [(omask, obj), (dmask, dcol)] if in_front else [(dmask, dcol), (omask, obj)]
    for m, col in layers:
        video = video * (1 - m) + col * m
    video += d.noise * rng.standard_normal(video.shape, dtype=np.float32)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing the splits


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one video: a pure function of (seed, split, index), so any worker order agrees."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def _make_sample(job: tuple) -> bytes:
    """Render and encode one video -> mp4 bytes (light imports: runs in spawned workers too)."""
    from pretrain.data.video_io import encode_mp4

    split, index, class_id, seed, frames, size, fps, difficulty, gop = job
    video = render_video(class_id, video_rng(seed, split, index), frames, size, difficulty)
    return encode_mp4(video, fps=fps, crf=18, gop=gop)


def write_synth(out: str | Path, videos_per_class: int = 200, frames: int = 16, size: int = 32,
                fps: float = 8.0, seed: int = 0, difficulty: str = "easy",
                pretrain_videos: int | None = None, val_per_class: int | None = None,
                test_per_class: int | None = None, shard_size: int = 256, workers: int = 1,
                gop: int = 4, preview: bool = False, progress: bool = True) -> dict[str, int]:
    """Write the four splits under ``out``; returns ``{split: num_videos}``.

    Defaults: ``pretrain_videos = 2 * videos_per_class * 10``, ``val/test_per_class =
    max(1, videos_per_class // 4)``. Labeled splits are class-balanced (video ``i`` has class
    ``i % 10``); so is ``pretrain`` (its labels are not written).
    """
    from tqdm import tqdm

    from pretrain.data.shard_writer import ShardSink, sample_meta

    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    if videos_per_class < 1 or frames < 2 or size < 8 or fps <= 0 or shard_size < 1 or gop < 1:
        raise ValueError("need videos_per_class >= 1, frames >= 2, size >= 8, fps > 0, shard_size >= 1, gop >= 1")
    nc = len(CLASSES)
    counts = {"pretrain": 2 * videos_per_class * nc if pretrain_videos is None else pretrain_videos,
              "train": videos_per_class * nc,
              "val": nc * (max(1, videos_per_class // 4) if val_per_class is None else val_per_class),
              "test": nc * (max(1, videos_per_class // 4) if test_per_class is None else test_per_class)}
    out = Path(out)
    jobs = [(split, i, i % nc, seed, frames, size, fps, difficulty, gop)
            for split in SPLITS for i in range(counts[split])]
    extra = {"synth": {"difficulty": difficulty, "seed": seed, "frames": frames, "size": size, "fps": fps}}
    sinks = {split: ShardSink(out / split, maxcount=shard_size, classes=list(CLASSES),
                              extra={**extra, "split": split}) for split in SPLITS}
    previews: dict[int, list[bytes]] = {}
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)  # spawn: safe even when torch threads exist
        results = pool.imap(_make_sample, jobs, chunksize=16)  # ordered: same shards as serial
    else:
        results = map(_make_sample, jobs)
    try:
        for job, mp4 in tqdm(zip(jobs, results), total=len(jobs), disable=not progress, desc="synth",
                             unit="video"):
            split, index, cid = job[:3]
            labeled = split != "pretrain"  # pretrain: unlabeled (no .cls), though class-balanced
            meta = sample_meta(cid if labeled else None, CLASSES[cid] if labeled else None, fps, frames,
                               size, size, f"synth:{difficulty}:seed{seed}:{split}")
            sinks[split].write(f"{split}_{index:06d}", mp4, meta)
            if preview and split == "train" and len(previews.get(cid, [])) < 2:
                previews.setdefault(cid, []).append(mp4)
    finally:
        if pool is not None:
            pool.terminate()
    for sink in sinks.values():
        sink.close()
    if preview:
        save_preview(previews, out / "preview.png")
    return counts


def save_preview(videos: dict[int, list[bytes]], path: str | Path, num_frames: int = 6) -> None:
    """PNG grid: one row per class, ``num_frames`` frames of each of its videos, decoded from mp4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.data.decode import open_video

    rows = []
    for cid in sorted(videos):
        cells = []
        for mp4 in videos[cid]:
            v = open_video(mp4)
            idx = np.linspace(0, v.num_frames - 1, num_frames).round().astype(int)
            f = v.get(idx)  # (F, H, W, 3)
            pad = np.full((f.shape[1], 3, 3), 255, np.uint8)
            cells.append(np.concatenate([np.concatenate([x, pad], 1) for x in f], 1))
            cells.append(np.full((f.shape[1], 6, 3), 255, np.uint8))
        rows.append(np.concatenate(cells, 1))
    h = rows[0].shape[0]
    grid = np.concatenate([np.concatenate([r, np.full((3, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 2, grid.shape[0] / 40 + 0.5), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([i * (h + 3) + h / 2 for i in range(len(rows))])
    ax.set_yticklabels([CLASSES[c] for c in sorted(videos)])
    ax.set_xticks([])
    ax.set_title(f"{num_frames} frames per video, time runs left to right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (gets pretrain/ train/ val/ test/)")
    p.add_argument("--videos-per-class", type=int, default=200, help="labeled train videos per class")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--size", type=int, default=32, help="frame height and width in pixels")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate written into the mp4")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed and args: same videos)")
    p.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="easy")
    p.add_argument("--pretrain-videos", type=int, default=None, help="unlabeled videos (default 20 x videos-per-class)")
    p.add_argument("--val-per-class", type=int, default=None, help="default videos-per-class / 4")
    p.add_argument("--test-per-class", type=int, default=None, help="default videos-per-class / 4")
    p.add_argument("--shard-size", type=int, default=256, help="videos per shard")
    p.add_argument("--keyint", type=int, default=4, help="H.264 keyframe interval")
    p.add_argument("--workers", type=int, default=1, help="render/encode processes (output is identical)")
    p.add_argument("--preview", action="store_true", help="also write DIR/preview.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    counts = write_synth(args.out, args.videos_per_class, args.frames, args.size, args.fps, args.seed,
                         args.difficulty, args.pretrain_videos, args.val_per_class, args.test_per_class,
                         args.shard_size, args.workers, args.keyint, args.preview, not args.no_progress)
    print(f"wrote {sum(counts.values())} videos to {args.out}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
