"""Run by test_runtime.py in a subprocess: each ZeRO stage 0-3 (fp32; stages 0 and 2 also bf16)
through the real DeepSpeed engine in one process (DeepSpeed wants a process group; one process
keeps the test quick).

Per stage: 1 accumulated step, a poisoned (NaN) step that must not update, a normal step, then
checkpoints exported with ``full_state_dict`` (consolidated from ZeRO shards) and a reload into a
fresh engine. Prints one JSON line of findings.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from pretrain.train.checkpoint import capture_rng, load_checkpoint, save_checkpoint
from pretrain.config import DistConfig, OptimConfig
from pretrain.train.optim import param_groups
from pretrain.train.runtime import init_runtime


def engine(stage, precision="fp32"):
    rt = init_runtime(DistConfig(deepspeed=True, zero_stage=stage, grad_accum=2, precision=precision),
                      OptimConfig(clip_grad=1.0), micro_batch=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    rt.setup(model, param_groups(model, 0.05))
    return rt


def step(rt, x, poison=False):
    for i in range(2):
        with rt.micro_step(boundary=i == 1):
            with rt.autocast():
                loss = rt.model(x[4 * i:4 * i + 4]).float().pow(2).mean()
            if poison and i == 0:
                loss = loss * float("nan")
            rt.backward(loss)
    return rt.step(1e-2, skip=poison)


def save(rt, root, n):
    path = save_checkpoint(rt, root, n, {"step": n}, {"rng": capture_rng(), "loader": {}}, keep_last=5)
    return path, rt.full_state_dict(path)


def main(root):
    found = {}
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    for stage, precision in ((0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (2, "bf16")):
        d = Path(root) / f"zero{stage}{precision}"
        rt = engine(stage, precision)
        r1 = step(rt, x)
        p1, sd1 = save(rt, d, 1)
        r2 = step(rt, x, poison=True)
        _, sd2 = save(rt, d, 2)
        r3 = step(rt, x)
        _, sd3 = save(rt, d, 3)
        fresh = engine(stage, precision)
        load_checkpoint(fresh, p1)
        _, sd1b = save(fresh, Path(root) / f"reload{stage}{precision}", 1)
        same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        found[f"{stage}-{precision}"] = {
            "applied": [r1.applied, r2.applied, r3.applied],
            "grad_norm_finite": r1.grad_norm == r1.grad_norm and r1.grad_norm > 0,
            "skip_kept_weights": same(sd1, sd2), "step_changed_weights": not same(sd2, sd3),
            "reload_equal": same(sd1, sd1b),
            "keys": sorted(sd1) == sorted(k for k, _ in nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16),
                                                                         nn.Linear(16, 2)).state_dict().items()),
        }
    print("RESULT " + json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1])
