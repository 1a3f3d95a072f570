"""Pretraining step time: our VideoMAE against Hugging Face ``VideoMAEForPreTraining``.

One optimizer step (forward + backward + AdamW step + zero_grad) of the same ViT-S VideoMAE
(16x224x224 clip, tubelet 2x16x16, tube mask 0.9, decoder 192 wide x 4 deep, 3 heads, batch 2),
both models holding the same weights and fed the same masks, timed in one process in alternating
order (warmup, then N rounds; medians reported). Also our model with decoder masking 0.5, and a
large matmul timed in the same rounds: achieved FLOP/s (FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode``, attention included) as a share of the matmul rate.

    python benchmarks/pretrain_step.py                       # CPU, fp32 (the acceptance setting)
    python benchmarks/pretrain_step.py --repeats 10 --threads 2
    python benchmarks/pretrain_step.py --compile             # + our model under torch.compile (run.compile)
    python benchmarks/pretrain_step.py --threads 1 --clock cpu     # steadier on a busy shared machine
    python benchmarks/pretrain_step.py --device cuda --dtype bf16 --size base --batch 16   # MFU for ViT-B

Targets (CPU fp32): ours <= 0.9x the peer's time at equal work, <= 0.6x with decoder masking,
>= 80% of the matmul rate.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import create_model  # noqa: E402
from finetune.interop.hf import hf_config_kwargs, hf_state_dict  # noqa: E402

aten = torch.ops.aten


def _cpu_flash_fwd(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def _cpu_flash_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, q, k, v)


# FlopCounterMode knows the CUDA attention kernels; teach it the CPU flash kernel too so
# attention (a third of this model's work) is counted on CPU as well.
CUSTOM_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
                aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model + optimizer; ``step()`` runs a full training step and returns its loss."""

    def __init__(self, name, model, loss_fn, device, dtype):
        self.name, self.model, self.loss_fn, self.device = name, model, loss_fn, device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                     fused=True)
        self.amp = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        self.times = []

    def step(self) -> float:
        with self.amp:
            loss = self.loss_fn(self.model)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed_step(self, clock) -> None:
        sync(self.device)
        t0 = clock()
        self.step()
        sync(self.device)
        self.times.append(clock() - t0)

    def count_flops(self, attention_on_cpu: bool = True) -> int:
        fc = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS if attention_on_cpu else {})
        with fc:                       # one context: re-entering it would reset the counts
            with self.amp:
                loss = self.loss_fn(self.model)
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return fc.get_total_flops()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--matmul", type=int, default=0, help="size of the square reference matmul (0: 4096 on CPU, "
                                                          "8192 on GPU)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time (the real measure); cpu: this process's CPU time, steadier on a shared "
                        "machine when used with --threads 1 (other processes' load is not charged to us)")
    p.add_argument("--no-peer", action="store_true", help="skip the transformers model")
    p.add_argument("--compile", action="store_true",
                   help="also time our model under torch.compile (inductor; what run.compile=true does), same "
                        "weights and mask; its first steps (compilation) are warmup")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="nominal device peak (e.g. 989 for H100 SXM bf16) to also report MFU against")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    args.matmul = args.matmul or (4096 if dev == "cpu" else 8192)
    torch.manual_seed(0)

    common = dict(num_frames=args.frames, img_size=args.img, mask_ratio=0.9, mask_type="tube", norm_pix_loss=True)
    ours = create_model(f"videomae_{args.size}", **common).to(dev)
    ours_dm = create_model(f"videomae_{args.size}", decoder_mask_ratio=0.5, **common).to(dev)
    ours_dm.load_state_dict(ours.state_dict())

    video = torch.randn(args.batch, 3, args.frames, args.img, args.img, device=dev)
    grid = ours.encoder.grid_size
    gen = torch.Generator().manual_seed(1)
    masks = ours.sample_masks(args.batch, grid, dev, gen)[0]    # one fixed mask for both models
    runners = [Runner("ours", ours, lambda m: m(video, masks=masks)[0], dev, args.dtype),
               Runner("ours dec-mask 0.5", ours_dm, lambda m: m(video, masks=masks)[0], dev, args.dtype)]
    if args.compile:
        twin = create_model(f"videomae_{args.size}", **common).to(dev)
        twin.load_state_dict(ours.state_dict())
        runners.append(Runner("ours compiled", torch.compile(twin), lambda m: m(video, masks=masks)[0], dev,
                              args.dtype))
    if not args.no_peer:
        from transformers import VideoMAEConfig, VideoMAEForPreTraining
        cfg = VideoMAEConfig(**hf_config_kwargs(ours), attn_implementation="sdpa")
        peer = VideoMAEForPreTraining(cfg).to(dev)
        missing, unexpected = peer.load_state_dict(hf_state_dict(ours), strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        for m in peer.modules():       # VideoMAE uses eps 1e-6 everywhere; HF's decoder norm defaults to 1e-5
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 1e-6
        hf_video = video.transpose(1, 2)       # HF takes (B, T, C, H, W); a view, no copy
        runners.insert(1, Runner("transformers", peer, lambda m: m(hf_video, bool_masked_pos=masks.mask).loss,
                                 dev, args.dtype))
        with torch.no_grad(), runners[0].amp:
            l_ours, l_peer = runners[0].loss_fn(ours), runners[1].loss_fn(peer)
        print(f"same weights, same mask: loss ours {float(l_ours):.6f}  transformers {float(l_peer):.6f}")

    mm_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a = torch.randn(args.matmul, args.matmul, device=dev, dtype=mm_dtype)
    b = torch.randn(args.matmul, args.matmul, device=dev, dtype=mm_dtype)
    mm_times = []

    if args.clock == "cpu" and dev != "cpu":
        p.error("--clock cpu only makes sense with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def time_matmul():
        sync(dev)
        t0 = clock()
        for _ in range(1 if dev == "cpu" else 20):
            a @ b
        sync(dev)
        mm_times.append((clock() - t0) / (1 if dev == "cpu" else 20))

    eager = [r for r in runners if r.name != "ours compiled"]
    flops = {r.name: r.count_flops() for r in eager}
    # torch's stock counter skips the CPU flash-attention kernels; shown for comparison only
    flops_stock = {r.name: r.count_flops(attention_on_cpu=False) for r in eager} if dev == "cpu" else dict(flops)
    if args.compile:                   # the same work; counting inside a compiled graph is not reliable
        flops["ours compiled"], flops_stock["ours compiled"] = flops["ours"], flops_stock["ours"]
        t0 = time.perf_counter()
        runners[-1].step()
        print(f"torch.compile: first compiled step (compilation included) {time.perf_counter() - t0:.1f} s")
    for _ in range(args.warmup):
        time_matmul()
        for r in runners:
            r.step()
    mm_times.clear()
    for i in range(args.repeats):
        time_matmul()
        order = runners if i % 2 == 0 else runners[::-1]     # alternate so drift hits all equally
        for r in order:
            r.timed_step(clock)

    mm_rate = 2 * args.matmul ** 3 / statistics.median(mm_times)
    print(f"\n{torch.__version__=}  device={dev}  dtype={args.dtype}  threads={torch.get_num_threads()}  "
          f"ViT-{args.size[0].upper()}  batch={args.batch}  clip={args.frames}x{args.img}x{args.img}  "
          f"repeats={args.repeats}  clock={args.clock}")
    print(f"reference matmul {args.matmul}^3: {mm_rate / 1e9:.1f} GFLOP/s (median)")
    print(f"\n{'model':<20}{'median s':>10}{'min s':>9}{'GFLOP/step':>12}{'GFLOP/s':>10}{'of matmul':>11}"
          f"{'(stock count)':>15}")
    med = {}
    for r in runners:
        med[r.name] = statistics.median(r.times)
        rate = flops[r.name] / med[r.name]
        stock = flops_stock[r.name] / med[r.name] / mm_rate
        print(f"{r.name:<20}{med[r.name]:>10.3f}{min(r.times):>9.3f}{flops[r.name] / 1e9:>12.1f}"
              f"{rate / 1e9:>10.1f}{rate / mm_rate:>10.0%}{stock:>14.0%}")
    print("GFLOP/step counts forward + backward with FlopCounterMode, attention included; '(stock count)' is "
          "the share with torch's default table, which has no entry for the CPU flash-attention kernels.")
    if "transformers" in med:
        print(f"\nours / transformers (equal work):         {med['ours'] / med['transformers']:.3f}  (target <= 0.9)")
        print(f"ours dec-mask 0.5 / transformers:          {med['ours dec-mask 0.5'] / med['transformers']:.3f}"
              f"  (target <= 0.6)")
        print(f"FLOPs ours / transformers:                 {flops['ours'] / flops['transformers']:.3f}")
        if "ours compiled" in med:
            print(f"ours compiled / transformers:              {med['ours compiled'] / med['transformers']:.3f}"
                  f"  (target <= 0.75)")
    if "ours compiled" in med:
        print(f"ours compiled / ours eager:                {med['ours compiled'] / med['ours']:.3f}")
    if args.peak_tflops:
        for r in runners:
            print(f"MFU {r.name} vs nominal {args.peak_tflops:.0f} TFLOP/s: "
                  f"{flops[r.name] / med[r.name] / (args.peak_tflops * 1e12):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
