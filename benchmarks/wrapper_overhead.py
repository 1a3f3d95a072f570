"""Wrapper overhead: tubelet's trainer against a plain hand-written PyTorch loop, per step.

The same pretrainer (same init), the same in-memory uint8 batches, the same AdamW groups, LR and
gradient clipping, in one process; three arms:

- ``plain``: ``normalize -> model(video) -> backward -> clip_grad_norm_ -> AdamW.step -> zero_grad``
  and ``loss.item()`` for logging, nothing else;
- ``trainer (torch)``: :class:`pretrain.train.trainer.Trainer` on the plain-torch runtime (the path a
  one-process ``tubelet pretrain`` takes: micro-steps, non-finite policy, metrics, callbacks);
- ``trainer (DeepSpeed ZeRO-0)``: the same trainer on the DeepSpeed runtime, a torch optimizer.

Each round runs every arm for ``--steps`` steps (order alternating between rounds); a step's time
is the interval between consecutive step ends (the trainer's: measured by a callback, so its
metrics bookkeeping and log writes are inside), the first ``--skip`` steps of each run dropped
(warmup, loader start). Reported: median step time per arm over all rounds and the ratio to
``plain``. Checkpoints are written only at the end (outside the timed steps). Target: <= 1.03x.

    python benchmarks/wrapper_overhead.py                        # videomae_test 128-wide, 16x32x32, batch 16
    python benchmarks/wrapper_overhead.py --rounds 5 --steps 80 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class MemoryLoader:
    """Precomputed ``{"video": uint8 (B, C, T, H, W)}`` batches, cycled; resumable position."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        while True:
            yield self.batches[self.i % len(self.batches)]
            self.i += 1

    def state_dict(self):
        return {"i": self.i}


def config(args, run_dir: str, deepspeed: bool):
    from pretrain.config import PretrainConfig, load_config

    kw = "{patch_size: 8, tubelet_size: 2, embed_dim: 128, num_heads: 4, norm_pix_loss: false}"
    ov = [f"data.num_frames={args.frames}", f"data.img_size={args.img}", f"data.batch_size={args.batch}",
          "model.name=videomae_test", f"model.kwargs={kw}", "model.mask_ratio=0.75",
          f"run.dir={run_dir}", f"run.max_steps={args.steps}", f"run.save_every={10 * args.steps}",
          "run.log_every=10", "run.vis_every=0", "run.progress=false", "run.tracker=none",
          "run.data_wait_warn=0", "optim.warmup_steps=5", f"dist.deepspeed={'true' if deepspeed else 'false'}"]
    return load_config(PretrainConfig, "synth_tiny", ov)


def trainer_arm(args, batches, deepspeed: bool) -> list[float]:
    from pretrain.main import build_model, make_step_fn
    from pretrain.train.optim import param_groups
    from pretrain.train.runtime import init_runtime
    from pretrain.train.trainer import Trainer, seed_everything

    with tempfile.TemporaryDirectory() as d:
        cfg = config(args, str(Path(d) / "run"), deepspeed)
        rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)
        seed_everything(0)
        model = build_model(cfg)
        rt.setup(model, param_groups(model, cfg.optim.weight_decay))
        ends: list[float] = []
        tr = Trainer(rt, make_step_fn(cfg, rt.device), lambda state: MemoryLoader(batches), optim=cfg.optim,
                     run=cfg.run, config=cfg, callbacks=[lambda t, b: ends.append(time.perf_counter())],
                     desc="bench")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            tr.fit()
        # the process group stays up for the next round: DeepSpeed caches its groups and cannot
        # start over in a re-created one within the same process
    return [b - a for a, b in zip(ends, ends[1:])][args.skip:]


def plain_arm(args, batches) -> list[float]:
    from pretrain.data.transforms import normalize_on_device
    from pretrain.main import build_model
    from pretrain.train.optim import param_groups
    from pretrain.train.trainer import seed_everything

    cfg = config(args, "/tmp/unused", False)
    seed_everything(0)
    model = build_model(cfg)
    model.train()
    groups = param_groups(model, cfg.optim.weight_decay)
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=tuple(cfg.optim.betas))
    params = [p for g in groups for p in g["params"]]
    clip = cfg.optim.clip_grad
    ends = []
    for i in range(args.steps):
        video = normalize_on_device(batches[i % len(batches)]["video"], cfg.data.mean, cfg.data.std)
        loss, _ = model(video)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends, ends[1:])][args.skip:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="steps per arm per round")
    p.add_argument("--skip", type=int, default=10, help="first step intervals of a run not counted")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-deepspeed", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batches = [{"video": torch.randint(0, 256, (args.batch, 3, args.frames, args.img, args.img), generator=g,
                                       dtype=torch.uint8)} for _ in range(8)]
    arms = {"plain": lambda: plain_arm(args, batches), "trainer (torch)": lambda: trainer_arm(args, batches, False)}
    if not args.no_deepspeed:
        arms["trainer (DeepSpeed ZeRO-0)"] = lambda: trainer_arm(args, batches, True)
    times = {k: [] for k in arms}
    names = list(arms)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name] += arms[name]()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, videomae_test 128 wide, "
          f"{args.frames}x{args.img}x{args.img}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps "
          f"(first {args.skip} dropped)")
    base = statistics.median(times["plain"])
    print(f"{'arm':<30}{'median ms/step':>16}{'vs plain':>10}")
    for name in names:
        m = statistics.median(times[name])
        print(f"{name:<30}{1e3 * m:>16.2f}{m / base:>10.3f}")
    print("target: trainer / plain <= 1.03")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
