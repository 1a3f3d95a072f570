"""Two CPU processes: `accelerate launch` with DeepSpeed ZeRO-2 (launch/accelerate/cpu-2proc.yaml)
trains, checkpoints, is killed with SIGKILL, resumes bitwise; plain DDP runs the same loop.

One set of launches serves every check (each launch costs ~15-30 s of process start-up on a
2-core machine). The first DeepSpeed launch on a machine also JIT-builds DeepSpeed's CPU
shared-memory collective op (~45 s, cached in ~/.cache/torch_extensions afterwards).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import torch
from _train_helpers import (REPO, assert_bitwise_equal, env, final_weights, losses, run_and_kill, run_to_end,
                            shards, tiny_overrides)  # noqa: F401  (shards is a fixture)
from safetensors.torch import load_file

from pretrain.train.checkpoint import list_checkpoints
from pretrain.models import create_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero2_two_processes_train_checkpoint_kill_resume_bitwise(shards, tmp_path):
    over = {"run.max_steps": 32, "run.save_every": 4, "run.keep_last": 2, "dist.grad_accum": 2,
            "dist.deepspeed_config": str(REPO / "launch" / "deepspeed" / "zero2.json")}
    a, b, ddp = tmp_path / "a", tmp_path / "b", tmp_path / "ddp"

    out = run_to_end(tiny_overrides(shards, a, **over), procs=2)
    assert "DeepSpeed ZeRO-2, 2 process(es) on cpu, gloo collectives, fp32" in out.stdout
    assert "effective batch 8 = 2 per process x 2 accumulation x 2 process(es)" in out.stdout
    assert [s for s, _ in list_checkpoints(a)] == [28, 32]
    ckpt = list_checkpoints(a)[-1][1]
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert marker["world_size"] == 2
    assert {"rank00000.pt", "rank00001.pt", "trainer.json", "ds/mp_rank_00_model_states.pt",
            "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",  # ZeRO-2: one optimizer shard per rank
            "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(marker["files"])
    # rank RNG states differ (each rank draws its own masks)
    r0, r1 = (torch.load(ckpt / f"rank0000{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["rng"]["torch"], r1["rng"]["torch"]) and r0["loader"]["rank"] == 0

    killed_at = run_and_kill(tiny_overrides(shards, b, **over), b, after_step=4, procs=2)
    out = run_to_end(tiny_overrides(shards, b, **over), procs=2)
    assert f"resumed from {b / 'checkpoints'}" in out.stdout
    la, lb = losses(a), losses(b)
    assert sorted(la) == list(range(1, 33)) and la == lb, (killed_at, la, lb)
    assert_bitwise_equal(final_weights(a), final_weights(b))

    # the consolidated ZeRO weights load into the model without DeepSpeed, strictly
    meta = json.loads((a / "final" / "config.json").read_text())
    model = create_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(load_file(str(a / "final" / "model.safetensors")))

    # the same loop on plain DDP (torchrun, gloo): same losses up to reduction-order rounding
    port = str(_free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "pretrain", "--config", str(REPO / "configs" / "pretrain" / "synth_tiny.yaml"),
           *tiny_overrides(shards, ddp, **{**over, "dist.deepspeed_config": ""})]
    res = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "DDP, 2 process(es) on cpu" in res.stdout
    ld = losses(ddp)
    assert sorted(ld) == sorted(la)
    for step in la:
        assert abs(ld[step] - la[step]) <= 1e-4 * abs(la[step]), (step, ld[step], la[step])
    wd, wa = final_weights(ddp), final_weights(a)
    assert wd.keys() == wa.keys()
    # The key third of a fused qkv bias has no effect on attention (softmax ignores a constant added
    # to every key's score): its true gradient is 0, AdamW turns the rounding residue into lr-sized
    # steps of random sign, so that slice drifts differently under any two reduction orders.
    # Everything else agrees to reduction-order rounding.
    def functional(k, t):
        if k.endswith("attn.qkv.bias"):
            d = t.shape[0] // 3
            return torch.cat([t[:d], t[2 * d:]])
        return t

    diff = {k: (functional(k, wd[k]) - functional(k, wa[k])).abs().max().item() for k in wa}
    assert max(diff.values()) < 1e-4, sorted(diff.items(), key=lambda kv: -kv[1])[:3]
