"""Pure pieces of the runtime: DeepSpeed config arithmetic and templates, launcher env, LR
schedule, parameter groups, one-process optimizer steps, and config errors that fail fast."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pretrain import main as pretrain_main
from pretrain.cli_util import run_command
from pretrain.config import ConfigError, DistConfig, OptimConfig
from pretrain.train.dist_config import apply_launcher_env, load_template, to_deepspeed_config
from pretrain.train.optim import param_groups
from pretrain.train.runtime import init_runtime
from pretrain.train.schedule import lr_at, scaled_lr

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs" / "pretrain" / "synth_tiny.yaml")


def _cfg(micro=8, accum=1, stage=0, precision="fp32", clip=None, offload=False):
    """The leading arguments of ``to_deepspeed_config``: (dist, micro_batch, clip_grad)."""
    return (DistConfig(deepspeed=True, zero_stage=stage, grad_accum=accum, precision=precision,
                       offload_optimizer=offload), micro, clip)


@pytest.mark.parametrize("micro,accum,world,stage,precision,clip", [
    (8, 1, 1, 0, "fp32", None), (4, 2, 2, 2, "fp32", 1.0), (2, 8, 8, 3, "bf16", 0.02),
    (32, 4, 64, 1, "fp16", 3.0), (1, 1, 3, 2, "bf16", None)])
def test_deepspeed_config_arithmetic(micro, accum, world, stage, precision, clip):
    ds = to_deepspeed_config(*_cfg(micro, accum, stage, precision, clip), world)
    assert ds["train_batch_size"] == micro * accum * world
    assert ds["train_micro_batch_size_per_gpu"] == micro and ds["gradient_accumulation_steps"] == accum
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_clipping"] == (clip or 0.0)
    assert ds["bf16"]["enabled"] == (precision == "bf16") and ds["fp16"]["enabled"] == (precision == "fp16")
    if precision == "fp16":
        assert ds["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert ds["zero_allow_untested_optimizer"] is True  # our torch AdamW under ZeRO


def test_deepspeed_config_precision_auto_and_offload():
    assert to_deepspeed_config(*_cfg(precision="auto"), 1, device_type="cuda")["bf16"]["enabled"] is True
    assert to_deepspeed_config(*_cfg(precision="auto"), 1, device_type="cpu")["bf16"]["enabled"] is False
    ds = to_deepspeed_config(*_cfg(stage=2, offload=True), 4)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ConfigError, match="dist.offload_optimizer: needs dist.zero_stage 2 or 3"):
        to_deepspeed_config(*_cfg(stage=1, offload=True), 4)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_shipped_templates_fill_from_the_config(stage):
    tpl = load_template(REPO / "launch" / "deepspeed" / f"zero{stage}.json")
    assert not any(k.startswith("_") for k in tpl)  # documentation keys are stripped
    cfg = _cfg(micro=4, accum=2, stage=stage, precision="bf16", clip=1.0)
    filled = to_deepspeed_config(*cfg, 4, tpl)
    plain = to_deepspeed_config(*cfg, 4)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "bf16", "fp16"):
        assert filled[key] == plain[key], key
    assert filled["zero_optimization"]["stage"] == stage and "auto" not in json.dumps(filled)
    with pytest.raises(ConfigError, match=r"zero_optimization.stage=%d contradicts the config \(dist.zero_stage"
                                          % stage):
        to_deepspeed_config(*_cfg(stage=(stage + 1) % 4), 4, tpl)


def test_template_contradicting_the_batch_is_rejected():
    tpl = {"train_batch_size": 999, "zero_optimization": {"stage": "auto", "reduce_bucket_size": 1000}}
    with pytest.raises(ConfigError, match=r"train_batch_size=999 contradicts .*data.batch_size x dist.grad_accum"):
        to_deepspeed_config(*_cfg(micro=4, accum=2), 2, tpl)
    ok = to_deepspeed_config(*_cfg(micro=4, accum=2, stage=2), 2, {**tpl, "train_batch_size": 16})
    assert ok["zero_optimization"]["reduce_bucket_size"] == 1000  # tuning keys pass through
    with pytest.raises(ConfigError, match="offload_optimizer.device='cpu' contradicts"):
        to_deepspeed_config(*_cfg(stage=2), 2, {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})


def test_launcher_env_decides_deepspeed_and_conflicts_fail():
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
           "ACCELERATE_MIXED_PRECISION": "no"}
    dist, notes = apply_launcher_env(DistConfig(), env)
    assert dist.deepspeed and dist.zero_stage == 2 and dist.precision == "auto"
    assert "dist.zero_stage=2 (from accelerate launch)" in notes
    assert apply_launcher_env(DistConfig(), {})[0] == DistConfig()  # plain `python -m pretrain`
    with pytest.raises(ConfigError, match="dist.grad_accum=1 but the accelerate config sets "
                                          "gradient_accumulation_steps=4"):
        apply_launcher_env(DistConfig(), {**env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})
    with pytest.raises(ConfigError, match="dist.precision=fp32 but accelerate launch asks for mixed_precision=bf16"):
        apply_launcher_env(DistConfig(precision="fp32"), {"ACCELERATE_MIXED_PRECISION": "bf16"})


def test_schedule_is_warmup_then_cosine():
    base, floor, warm, total = 1e-3, 1e-5, 10, 110
    lrs = [lr_at(s, base, floor, warm, total) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(base / warm) and lrs[warm - 1] == pytest.approx(base)
    assert all(b > a for a, b in zip(lrs[:warm - 1], lrs[1:warm]))            # rising warmup
    assert all(b <= a for a, b in zip(lrs[warm:total], lrs[warm + 1:total]))  # falling cosine
    assert lrs[warm] == pytest.approx(base)
    assert lrs[warm + 50] == pytest.approx((base + floor) / 2)  # half way: cosine at pi/2
    assert lrs[warm + 25] == pytest.approx(floor + (base - floor) * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[total] == pytest.approx(floor) and lrs[-1] == pytest.approx(floor)
    assert lr_at(0, base, floor, 0, total) == base  # no warmup
    assert lr_at(5, 1e-6, 1e-5, 0, 10) <= 1e-6  # a floor above the peak is clamped
    assert scaled_lr(1.5e-4, None, 2048) == pytest.approx(1.2e-3) and scaled_lr(1.5e-4, 0.01, 2048) == 0.01


def test_param_groups_exclude_norms_biases_and_tokens():
    from pretrain.models import create_model

    mae = create_model("videomae_test", num_frames=4, img_size=32, patch_size=8)
    groups = param_groups(mae, 0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert "mask_token" in no_decay
    assert all(n.endswith(".bias") or "norm" in n or n in ("mask_token", "encoder.cls_token", "encoder.pos_embed")
               for n in no_decay), no_decay
    assert all(p.ndim >= 2 for n, p in mae.named_parameters() if n in decay and n != "mask_token")
    assert any("attn.qkv.weight" in n for n in decay) and any("norm" in n for n in no_decay)


def test_torch_runtime_accumulation_equals_the_big_batch():
    """2 micro-batches accumulated = one step on both (mean loss); a skipped step changes nothing."""
    def make(accum):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 1))
        rt = init_runtime(DistConfig(grad_accum=accum), OptimConfig(clip_grad=0.5), micro_batch=8 // accum)
        rt.setup(m, param_groups(m, 0.05))
        return rt

    x, y = torch.randn(8, 6), torch.randn(8, 1)
    a = make(2)
    for i, sl in enumerate((slice(0, 4), slice(4, 8))):
        with a.micro_step(boundary=i == 1):
            a.backward(((a.model(x[sl]) - y[sl]) ** 2).mean())
    ra = a.step(lr=1e-2, skip=False)
    b = make(1)
    with b.micro_step(boundary=True):
        b.backward(((b.model(x) - y) ** 2).mean())
    rb = b.step(lr=1e-2, skip=False)
    assert ra.applied and ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-5) and ra.grad_norm > 0.5
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    before = [p.clone() for p in a.module.parameters()]
    with a.micro_step(boundary=True):
        a.backward(a.model(x).sum() * float("nan"))
    assert not a.step(lr=1e-2, skip=True).applied
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(a.module.parameters(), before))


@pytest.mark.parametrize("override,field", [
    ("data.batch_size=0", "data.batch_size"), ("optim.lrr=1", "optim.lrr: unknown key"),
    ("model.name=videomae_nope", "model.name: unknown model"), ("dist.zero_stage=2", "dist.zero_stage"),
    ("dist.precision=fp16", "dist.precision: fp16 needs dist.deepspeed=true"),
    ("model.kwargs.depthh=3", "model.kwargs"), ("run.max_nonfinite=0", "run.max_nonfinite")])
def test_bad_config_fails_fast_naming_the_field(tmp_path, capsys, override, field):
    rc = run_command(pretrain_main, ["--config", PRESET, f"data.shards={tmp_path}", f"run.dir={tmp_path / 'r'}", override],
                     "tubelet pretrain")
    assert rc == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_bad_config_exit_code():
    out = subprocess.run([sys.executable, "-m", "pretrain", "--config", PRESET, "data.batch_size=-1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "data.batch_size: must be >= 1" in out.stderr


def test_every_zero_stage_steps_skips_exports_and_reloads(tmp_path):
    """ZeRO 0-3 (and bf16 on 0 and 2) through the real DeepSpeed engine (one process,
    tests/_ds_stages.py): an accumulated step updates, a NaN step updates nothing, consolidated
    weights round-trip through a checkpoint into a fresh engine."""
    out = subprocess.run([sys.executable, str(REPO / "tests" / "_ds_stages.py"), str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    found = json.loads(lines[0][len("RESULT "):])
    assert sorted(found) == ["0-bf16", "0-fp32", "1-fp32", "2-bf16", "2-fp32", "3-fp32"]
    for stage, f in found.items():
        assert f["applied"] == [True, False, True], stage
        assert f["grad_norm_finite"] and f["skip_kept_weights"] and f["step_changed_weights"], stage
        assert f["reload_equal"] and f["keys"], stage


@pytest.mark.parametrize("name,kind,procs", [("cpu-1proc", "NO", 1), ("cpu-2proc", "DEEPSPEED", 2),
                                             ("gpu-1node", "MULTI_GPU", 8), ("multi-node", "MULTI_GPU", 16)])
def test_launch_configs_parse(name, kind, procs):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "launch" / "accelerate" / f"{name}.yaml"))
    assert str(cfg.distributed_type).split(".")[-1] == kind and cfg.num_processes == procs
    if name == "cpu-2proc":
        assert cfg.use_cpu and cfg.deepspeed_config["zero_stage"] == 2
    script = REPO / "launch" / "slurm" / "pretrain.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
