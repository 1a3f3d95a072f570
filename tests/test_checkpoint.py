"""Checkpoints: full-state round trip, atomic layout, keep-last, damaged pointers and directories,
write failures, non-finite models, and 20 SIGKILLs in the middle of saving."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from pretrain.train.checkpoint import (CheckpointError, capture_rng, checkpoint_root, find_latest, is_complete,
                                 list_checkpoints, load_checkpoint, read_pointer, restore_rng, save_checkpoint)
from pretrain.config import DistConfig, OptimConfig
from pretrain.train.optim import param_groups
from pretrain.train.runtime import init_runtime


def _runtime(width: int = 16, seed: int = 0):
    """A one-process torch runtime around a small MLP with a few AdamW steps of state."""
    rt = init_runtime(DistConfig(), OptimConfig(), micro_batch=4)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.Linear(width, 3))
    rt.setup(model, param_groups(model, 0.05))
    for _ in range(2):
        with rt.micro_step(boundary=True):
            rt.backward(rt.model(torch.randn(4, width)).pow(2).mean())
        rt.step(lr=1e-2, skip=False)
    return rt


def _state(rt):
    return ({k: v.clone() for k, v in rt.module.state_dict().items()},
            json.loads(json.dumps(rt.optimizer.state_dict(), default=lambda t: t.tolist())))


def test_round_trip_restores_model_optimizer_rng_and_trainer_state(tmp_path):
    rt = _runtime()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    rank_state = {"rng": capture_rng(), "loader": {"batches": 7, "roles": [{"round": 1, "taken": 3}]}}
    trainer_state = {"step": 5, "history": [{"step": 5, "loss": 0.123456789012345}]}
    expect_draws = (random.random(), np.random.rand(), torch.rand(3))
    path = save_checkpoint(rt, tmp_path, 5, trainer_state, rank_state, keep_last=2)
    model_sd, opt_sd = _state(rt)

    other = _runtime(seed=9)  # different weights and optimizer moments
    assert not torch.equal(other.module[0].weight, rt.module[0].weight)
    got_trainer, got_rank = load_checkpoint(other, path)
    restore_rng(got_rank["rng"])
    assert (random.random(), np.random.rand()) == expect_draws[:2] and torch.equal(torch.rand(3), expect_draws[2])
    assert got_trainer == trainer_state and got_rank["loader"] == rank_state["loader"]
    for k, v in model_sd.items():
        assert torch.equal(other.module.state_dict()[k], v), k
    assert _state(other)[1] == opt_sd


def test_layout_marker_pointer_and_keep_last(tmp_path):
    rt = _runtime()
    for step in (2, 4, 6, 8):
        save_checkpoint(rt, tmp_path, step, {"step": step}, {"rng": capture_rng(), "loader": {}}, keep_last=2)
    root = checkpoint_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006", "step_00000008"]
    assert (root / "latest").read_text().strip() == "step_00000008"
    marker = json.loads((root / "step_00000008" / "COMPLETE.json").read_text())
    assert marker["step"] == 8 and marker["world_size"] == 1
    assert set(marker["files"]) == {"model.safetensors", "optimizer.pt", "rank00000.pt", "trainer.json"}
    assert all((root / "step_00000008" / f).stat().st_size == n for f, n in marker["files"].items())


def test_damaged_pointer_and_incomplete_directories_are_ignored(tmp_path):
    rt = _runtime()
    for step in (1, 2):
        save_checkpoint(rt, tmp_path, step, {"step": step}, {"rng": capture_rng(), "loader": {}}, keep_last=5)
    root = checkpoint_root(tmp_path)
    # a newer directory without marker, a newer one with a truncated file, and a stale tmp dir
    shutil.copytree(root / "step_00000002", root / "step_00000003")
    (root / "step_00000003" / "COMPLETE.json").unlink()
    shutil.copytree(root / "step_00000002", root / "step_00000004")
    with open(root / "step_00000004" / "optimizer.pt", "r+b") as f:
        f.truncate(10)
    shutil.copytree(root / "step_00000002", root / ".tmp-step_00000005")
    assert not is_complete(root / "step_00000003") and not is_complete(root / "step_00000004")
    for pointer in (b"garbage\x00\xff", b"step_00000004", b"", b"step_00000009"):  # corrupt, incomplete
        (root / "latest").write_bytes(pointer)                                        # target, empty, absent
        assert find_latest(tmp_path) == root / "step_00000002"
    (root / "latest").unlink()
    assert find_latest(tmp_path) == root / "step_00000002" and read_pointer(tmp_path) is None
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]


def test_write_failure_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    rt = _runtime()
    good = save_checkpoint(rt, tmp_path, 1, {"step": 1}, {"rng": capture_rng(), "loader": {}}, keep_last=1)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # the first file is half written, then the disk is full
        with open(f, "wb") as fh:
            fh.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    with torch.no_grad():
        rt.module[0].weight.add_(1.0)
    with pytest.raises(CheckpointError, match=r"step 2 failed .*No space left on device.*previous checkpoint "
                                              r"\(.*step_00000001\) is intact"):
        save_checkpoint(rt, tmp_path, 2, {"step": 2}, {"rng": capture_rng(), "loader": {}}, keep_last=1)
    monkeypatch.setattr(torch, "save", real_save)
    root = checkpoint_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]  # temp dir removed
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert find_latest(tmp_path) == good
    load_checkpoint(_runtime(seed=5), good)


def test_nonfinite_model_is_never_saved(tmp_path):
    rt = _runtime()
    good = save_checkpoint(rt, tmp_path, 1, {"step": 1}, {"rng": capture_rng(), "loader": {}}, keep_last=1)
    with torch.no_grad():
        rt.module[2].bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to checkpoint step 2: the model has non-finite"):
        save_checkpoint(rt, tmp_path, 2, {"step": 2}, {"rng": capture_rng(), "loader": {}}, keep_last=1)
    assert find_latest(tmp_path) == good and [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_world_size_mismatch_is_a_clear_error(tmp_path):
    rt = _runtime()
    path = save_checkpoint(rt, tmp_path, 1, {"step": 1}, {"rng": capture_rng(), "loader": {}}, keep_last=1)
    marker = json.loads((path / "COMPLETE.json").read_text())
    marker["world_size"] = 2
    (path / "COMPLETE.json").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="written by 2 process.*this run has 1"):
        load_checkpoint(rt, path)


# ---- SIGKILL during saves ----------------------------------------------------------------

WIDTH = 384  # ~0.6 M parameters: model + AdamW moments make each save a few MB, so kills land mid-write


def _save_forever(run_dir: str, start: int) -> None:
    """Child: stamp the weights with the step number and save, over and over."""
    torch.set_num_threads(1)
    rt = _runtime(width=WIDTH)
    step = start
    while True:
        step += 1
        with torch.no_grad():
            for p in rt.module.parameters():
                p.fill_(step)
        save_checkpoint(rt, run_dir, step, {"step": step}, {"rng": capture_rng(), "loader": {"step": step}},
                        keep_last=2)


def test_twenty_sigkills_during_save_always_leave_a_loadable_checkpoint(tmp_path):
    ctx = mp.get_context("fork")  # torch is already imported: forking is instant
    rng = random.Random(0)
    reader = _runtime(width=WIDTH)
    interrupted, last = 0, 0
    for _ in range(20):
        child = ctx.Process(target=_save_forever, args=(str(tmp_path), last), daemon=True)
        child.start()
        deadline = time.monotonic() + 60  # at least one save lands before the random kill point
        while find_latest(tmp_path) is None or int(find_latest(tmp_path).name[5:]) <= last:
            assert child.is_alive() and time.monotonic() < deadline, "child saved nothing"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        root = checkpoint_root(tmp_path)
        interrupted += any(p.name.startswith(".tmp-") for p in root.iterdir())
        path = find_latest(tmp_path)
        assert path is not None
        trainer_state, rank_state = load_checkpoint(reader, path)
        step = trainer_state["step"]
        assert path.name == f"step_{step:08d}" and rank_state["loader"] == {"step": step}
        assert all(torch.all(p == step) for p in reader.module.parameters()), "weights of another step"
        assert step > last
        last = step
    # the kills really hit saves in progress (a temp directory was left behind)
    print(f"{interrupted} of 20 kills interrupted a save in progress")
    assert interrupted >= 3, interrupted  # typically 8-11 of 20
