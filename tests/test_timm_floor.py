"""The timm floor in pyproject.toml is real: the model, mixup, RandAugment and baseline tests pass
with exactly that timm version (installed into a scratch directory ahead of the venv's own)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _floor() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"timm>=([0-9][0-9.]*)"', text)
    assert m, "pyproject.toml must pin a timm floor as timm>=X.Y.Z"
    return m.group(1)


def _env_with_timm(version: str, tmp_path: Path) -> dict:
    """An environment whose ``import timm`` finds exactly ``version`` (installed into ``tmp_path``)."""
    target = tmp_path / "timm"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          f"timm=={version}"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"cannot install timm=={version} here: {pip.stderr.strip().splitlines()[-1:]}")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}


@pytest.mark.slow
def test_timm_floor_runs_the_timm_tests(tmp_path):
    floor = _floor()
    env = _env_with_timm(floor, tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import timm; print(timm.__version__)"], env=env,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == floor  # the scratch copy is the one imported
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "tests/test_models.py", "tests/test_mixup.py", "tests/test_randaug.py",
                          "tests/test_baselines.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, f"timm=={floor}: the timm-using tests fail:\n{run.stdout[-3000:]}"
    assert re.search(r"\d+ passed", run.stdout)


@pytest.mark.slow
def test_timm_just_below_the_floor_cannot_build_the_encoders(tmp_path):
    """The floor is not set high by accident: the release before it lacks what the encoders use."""
    below = {"1.0.23": "1.0.22"}.get(_floor())
    if below is None:
        pytest.skip("the floor moved: name the release below it here")
    env = _env_with_timm(below, tmp_path)
    code = ("import torch, pretrain.models as m; "
            "m.create_model('vit_tiny', num_frames=4, img_size=32, patch_size=8)(torch.randn(1, 3, 4, 32, 32))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "attn_layer" in run.stderr
