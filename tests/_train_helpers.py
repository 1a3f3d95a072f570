"""Shared pieces of the training tests: synth shards, tiny-run overrides, subprocess runs.

Runs use the real stack end to end: ``tubelet synth`` shards (real H.264 in real tars), the
real loader and decoder, ``videomae_test`` and the real trainer/runtime/checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs" / "pretrain" / "synth_tiny.yaml")
CPU_2PROC = str(REPO / "launch" / "accelerate" / "cpu-2proc.yaml")


@pytest.fixture(scope="session")
def shards(request, tmp_path_factory) -> Path:
    """A synth dataset root with ``pretrain/`` and ``val/`` shard directories.

    Uses the session fixture ``synth_dir`` from conftest when it exists, else writes a small one.
    """
    try:
        root = Path(request.getfixturevalue("synth_dir"))
    except pytest.FixtureLookupError:
        from pretrain.data.synth import write_synth

        root = tmp_path_factory.mktemp("synth_train")
        write_synth(root, videos_per_class=2, pretrain_videos=120, val_per_class=2, test_per_class=1,
                    shard_size=40, progress=False)
    assert (root / "pretrain" / "manifest.json").is_file(), f"no pretrain shards under {root}"
    return root


def tiny_overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a seconds-long videomae_test run on 8 x 32 x 32 clips (4 x 4 x 4 tubelets)."""
    base = {
        "data.shards": str(shards / "pretrain"),
        "data.num_frames": 8,
        "data.batch_size": 2,
        "data.num_workers": 1,
        "model.kwargs.patch_size": 8,
        "run.dir": str(run_dir),
        "run.log_every": 1,
        "run.vis_every": 0,
        "run.progress": "false",
        "run.tracker": "none",
        "optim.warmup_steps": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def env(threads: int = 1) -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    return e


def pretrain_cmd(overrides: list[str], procs: int = 1) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "pretrain", "--config", PRESET, *overrides]
    launcher = Path(sys.executable).parent / "accelerate"  # the console script `accelerate launch`
    head = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    return [*head, "launch", "--config_file", CPU_2PROC, "-m", "pretrain", "--config", PRESET, *overrides]


def run_to_end(overrides: list[str], procs: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(pretrain_cmd(overrides, procs), cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def run_and_kill(overrides: list[str], run_dir: Path, after_step: int, procs: int = 1,
                 timeout: float = 300) -> int:
    """Start a run, SIGKILL its whole process group once checkpoint ``>= after_step`` exists.

    Returns the step of the checkpoint seen; fails if the run ends before it could be killed.
    """
    proc = subprocess.Popen(pretrain_cmd(overrides, procs), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pointer = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    seen = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                name = pointer.read_text().strip()
                if name and int(name.split("_")[1]) >= after_step:
                    seen = int(name.split("_")[1])
                    break
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.02)
        if proc.poll() is None:
            kill_tree(proc.pid)
    finally:
        output = proc.communicate()[0]
    assert seen is not None and proc.returncode == -signal.SIGKILL, \
        f"run was not killed mid-way (rc={proc.returncode}):\n{output[-4000:]}"
    assert not (run_dir / "final").exists(), "the run finished before the kill"
    return seen


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun's workers live in their own
    process groups, so killing the launcher's group alone would leave them running)."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs[1:], timeout=30)  # the direct child is reaped by its Popen


def losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}   # probe records carry no loss


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
