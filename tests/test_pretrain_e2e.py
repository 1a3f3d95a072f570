"""End-to-end pretraining on real synth shards (one process): learning, exact resume after kill -9,
the non-finite loss policy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _train_helpers import (PRESET, assert_bitwise_equal, final_weights, losses, run_and_kill, run_to_end,
                            shards, tiny_overrides)  # noqa: F401  (shards is a fixture)
from safetensors.torch import load_file

from pretrain import main as pretrain_main
from pretrain.train.checkpoint import CheckpointError, find_latest, list_checkpoints
from pretrain.cli_util import run_command
from pretrain.config import PretrainConfig, load_config
from pretrain.data.loader import build_loader
from pretrain.data.transforms import normalize_on_device
from pretrain.models import create_model


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_learns_below_mean_predictor(shards, tmp_path, one_thread):
    """200 steps of `tubelet pretrain`: the held-out masked reconstruction error falls well below
    the mean predictor's (and the untrained model's); the run directory has every artifact."""
    run_dir = tmp_path / "learn"
    # Pixel targets in normalised space (as in synth_tiny): synth frames are mostly flat, so
    # per-tubelet normalised targets are dominated by sensor noise there and hide what was learned.
    # Mask ratio 0.75 instead of 0.9: with 4x4 tubelets per frame the extra context makes this
    # tiny model leave the mean-predictor plateau reliably within 200 steps (measured over 5
    # seeds: held-out MSE 0.35-0.58 x the mean predictor's; at 0.9 it varied 0.57-0.83).
    overrides = tiny_overrides(shards, run_dir, **{
        "data.batch_size": 16, "model.mask_ratio": 0.75, "model.kwargs.embed_dim": 128,
        "model.kwargs.num_heads": 4, "model.kwargs.norm_pix_loss": "false", "optim.lr": 1e-3,
        "optim.warmup_steps": 20, "run.max_steps": 200, "run.save_every": 100, "run.log_every": 10,
        "run.vis_every": 100, "run.tracker": "tensorboard"})
    assert run_command(pretrain_main, ["--config", PRESET, *overrides], "tubelet pretrain") == 0

    # -- artifacts
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(10, 201, 10))
    for key in ("loss", "lr", "grad_norm", "clips_per_s", "data_wait", "skipped_samples", "epoch"):
        assert all(r[key] is not None for r in recs), key
    assert recs[-1]["loss"] < 0.85 * recs[0]["loss"]
    assert all(0 <= r["data_wait"] <= 1 for r in recs)
    cfg_saved = load_config(PretrainConfig, run_dir / "config.yaml")
    assert cfg_saved.run.max_steps == 200 and cfg_saved.model.kwargs["embed_dim"] == 128
    assert (run_dir / "recon_step100.png").stat().st_size > 0 and (run_dir / "recon_step200.png").stat().st_size > 0
    assert (run_dir / "loss.png").stat().st_size > 0
    assert list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert [s for s, _ in list_checkpoints(run_dir)] == [100, 200]

    # -- held-out evaluation of the exported weights (no DeepSpeed, no trainer)
    meta = json.loads((run_dir / "final" / "config.json").read_text())
    trained = create_model(meta["model"], **meta["model_kwargs"]).eval()
    trained.load_state_dict(load_file(str(run_dir / "final" / "model.safetensors")))
    torch.manual_seed(0)  # the untrained model = the run's initial weights (seeded the same way)
    untrained = create_model(meta["model"], **meta["model_kwargs"]).eval()
    cfg = load_config(PretrainConfig, PRESET, overrides)
    val = build_loader(cfg.data, "eval", shards=str(shards / "val"), num_clips=2, num_crops=1)
    t_loss = u_loss = n = 0.0
    targets = []
    with torch.no_grad():
        for i, batch in enumerate(val):
            x = normalize_on_device(batch["video"], cfg.data.mean, cfg.data.std)
            lt, aux = trained(x, generator=torch.Generator().manual_seed(i))  # same masks for both
            lu, _ = untrained(x, generator=torch.Generator().manual_seed(i))
            k = aux["target"].numel()
            t_loss, u_loss, n = t_loss + lt.item() * k, u_loss + lu.item() * k, n + k
            targets.append(aux["target"].flatten(0, 1))
    t_loss, u_loss = t_loss / n, u_loss / n
    tgt = torch.cat(targets)  # (masked tubelets, P)
    baseline = ((tgt - tgt.mean(0)) ** 2).mean().item()  # best constant prediction for these targets
    print(f"held-out MSE: trained {t_loss:.4f}, untrained {u_loss:.4f}, mean predictor {baseline:.4f}")
    assert t_loss < 0.75 * baseline
    assert t_loss < 0.75 * u_loss


def test_kill9_then_resume_is_bitwise_identical(shards, tmp_path):
    """`python -m pretrain` killed with SIGKILL after a checkpoint, then rerun: the same per-step
    losses and the same final weights as a run that was never interrupted."""
    over = {"run.max_steps": 14, "run.save_every": 4, "run.keep_last": 2}
    a, b = tmp_path / "a", tmp_path / "b"
    run_to_end(tiny_overrides(shards, a, **over))
    killed_at = run_and_kill(tiny_overrides(shards, b, **over), b, after_step=4)
    out = run_to_end(tiny_overrides(shards, b, **over))
    assert f"resumed from {b / 'checkpoints'}" in out.stdout
    la, lb = losses(a), losses(b)
    assert sorted(la) == list(range(1, 15)) and la == lb, (killed_at, la, lb)
    assert_bitwise_equal(final_weights(a), final_weights(b))
    assert [s for s, _ in list_checkpoints(b)] == [12, 14]  # keep_last


def _poisoning_step_fn(cfg, bad_calls: set):
    calls = {"n": 0}

    def step_fn(model, batch):
        calls["n"] += 1
        x = normalize_on_device(batch["video"], cfg.data.mean, cfg.data.std)
        if calls["n"] in bad_calls:
            x[0, 0, 0, 0, 0] = float("nan")  # one bad pixel: NaN loss and NaN gradients
        loss, _ = model(x)
        return loss, {}

    return step_fn


def _trainer(cfg, step_fn, snapshots):
    from pretrain.train.optim import param_groups
    from pretrain.train.runtime import init_runtime
    from pretrain.train.trainer import Trainer, seed_everything

    rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)
    seed_everything(cfg.run.seed)
    model = pretrain_main.build_model(cfg)
    rt.setup(model, param_groups(model, cfg.optim.weight_decay))

    def snap(trainer, batch):
        snapshots[trainer.step] = torch.cat([p.detach().flatten() for p in trainer.runtime.module.parameters()])

    return Trainer(rt, step_fn, lambda state: build_loader(cfg.data, "train", seed=cfg.run.seed, state=state),
                   optim=cfg.optim, run=cfg.run, config=cfg, callbacks=[snap])


def test_nonfinite_step_is_skipped_and_training_continues(shards, tmp_path, one_thread):
    cfg = load_config(PretrainConfig, PRESET, tiny_overrides(shards, tmp_path / "r", **{
        "run.max_steps": 8, "run.save_every": 2, "run.max_nonfinite": 2}))
    snaps = {}
    trainer = _trainer(cfg, _poisoning_step_fn(cfg, {4}), snaps)
    history = trainer.fit()
    by_step = {r["step"]: r for r in history}
    assert len(by_step) == 8
    assert by_step[4]["loss"] is None and by_step[4]["nonfinite_steps"] == 1
    assert all(math.isfinite(by_step[s]["loss"]) for s in (1, 2, 3, 5, 6, 7, 8))
    assert torch.equal(snaps[4], snaps[3]), "the non-finite step changed the weights"
    assert not torch.equal(snaps[5], snaps[4]) and torch.isfinite(snaps[8]).all()
    assert (tmp_path / "r" / "final" / "model.safetensors").exists()

    # a model that became non-finite is never written over the good checkpoint
    latest = find_latest(tmp_path / "r")
    with torch.no_grad():
        next(trainer.runtime.module.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite parameters"):
        trainer.save()
    assert find_latest(tmp_path / "r") == latest


def test_consecutive_nonfinite_steps_stop_the_run(shards, tmp_path, one_thread, capsys):
    from pretrain.train.trainer import NonFiniteError

    run_dir = tmp_path / "r"
    cfg = load_config(PretrainConfig, PRESET, tiny_overrides(shards, run_dir, **{
        "run.max_steps": 10, "run.save_every": 1, "run.max_nonfinite": 3}))
    snaps = {}
    trainer = _trainer(cfg, _poisoning_step_fn(cfg, {3, 4, 5, 6}), snaps)
    with pytest.raises(NonFiniteError, match=r"stopping at step 5: 3 consecutive non-finite steps \(3\.\.5\)"):
        trainer.fit()
    assert "step 3: non-finite loss; step skipped" in capsys.readouterr().out
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 4]  # keep_last 2; nothing after the stop
    for _, path in list_checkpoints(run_dir):
        weights = load_file(str(path / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert torch.equal(snaps[4], snaps[2])


def test_compiled_run_matches_eager(shards, tmp_path, one_thread):
    """``run.compile=true`` (torch.compile, inductor on CPU): the same losses as eager within float
    tolerance, and the checkpoint/export holds the plain model's keys (no ``_orig_mod.``)."""
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        d = tmp_path / name
        cfg = load_config(PretrainConfig, PRESET, tiny_overrides(shards, d, **{
            "run.max_steps": 3, "run.save_every": 3, "run.compile": flag, "data.num_workers": 0}))
        pretrain_main.pretrain(cfg)
        runs[name] = d
    le, lc = losses(runs["eager"]), losses(runs["compiled"])
    assert le.keys() == lc.keys() == {1, 2, 3}
    for s in le:
        assert lc[s] == pytest.approx(le[s], rel=1e-4, abs=1e-5), (s, le[s], lc[s])
    we, wc = final_weights(runs["eager"]), final_weights(runs["compiled"])
    assert we.keys() == wc.keys() and not any("_orig_mod" in k for k in wc)
    for k in we:
        a, b = we[k], wc[k]
        if k.endswith("qkv.bias"):        # the key slice has zero true gradient: AdamW turns rounding
            d = a.numel() // 3            # residue into +-lr steps of random sign (see test_distributed)
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), k
