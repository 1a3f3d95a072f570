"""`pip install .` the ordinary way: a wheel, installed on its own, runs the smoke demo from an empty
directory (presets ship as package data), and `import tubelet` is the public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked + untracked, not ignored), copied to ``dest``:
    the wheel is built from them alone, never from a stale ``build/`` of the checkout."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in listed:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_wheel_installs_presets_and_runs_the_smoke_demo(tmp_path):
    wheels = tmp_path / "wheels"
    src = _source_copy(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = wheels.glob("tubelet-*.whl")
    import zipfile

    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    in_tree = {f.relative_to(src).as_posix() for pkg in ("tubelet", "pretrain", "finetune", "launch")
               for f in (src / pkg).rglob("*.py")}
    assert in_wheel == in_tree, f"wheel vs tree: extra {sorted(in_wheel - in_tree)}, missing {sorted(in_tree - in_wheel)}"
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                        str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (site / "tubelet" / "configs" / "pretrain" / "synth_tiny.yaml").is_file()
    assert not (site / "configs").exists(), "presets live under tubelet/, not as a generic top-level name"
    empty = tmp_path / "empty"
    empty.mkdir()
    # the installed copy, not the checkout, must be what runs (PYTHONPATH comes before the editable finder)
    env = {**os.environ, "PYTHONPATH": str(site), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    probe = subprocess.run([sys.executable, "-c", "import tubelet, pretrain, launch; "
                            "print(pretrain.__file__); print(tubelet.presets('finetune')); "
                            "print(tubelet.preset_path('vit_b_k400'))"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, names, vit_b = probe.stdout.splitlines()
    assert where.startswith(str(site)) and vit_b.startswith(str(site))
    assert "synth_vit" in names and "_videomae_ft" not in names
    bench = subprocess.run([sys.executable, "-m", "launch", "bench", "loader"], cwd=empty, env=env,
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode == 2 and "from a checkout" in bench.stderr
    demo = subprocess.run([sys.executable, "-m", "launch", "demo", "--preset", "smoke", "--out", "smoke"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=900)
    out = empty / "smoke"
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))
                     ) if (out / "logs").is_dir() else ""
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:] + logs
    assert f"report: {out / 'REPORT.md'}" in demo.stdout
    report = (out / "REPORT.md").read_text()
    for model in ("vit_test", "single_frame", "cnn3d"):
        assert f"| {model} |" in report
    assert "| vit_test | pretrained |" in report and "| vit_test | scratch |" in report
    assert "PASS — reconstruction pictures written" in report and "PASS — probe curve written" in report
    assert "FAIL" not in report
    assert (out / "pretrain" / "probe.png").is_file() and (out / "pretrain" / "loss.png").is_file()
    enc = out / "encoder"
    assert (enc / "model.safetensors").is_file() and (enc / "encoder.onnx").is_file()
    cfg = json.loads((enc / "config.json").read_text())
    assert cfg["model_kwargs"]["num_frames"] == 16 and cfg["model_kwargs"]["img_size"] == [32, 32]
    for run in ("vit_pretrained_l3_s0", "vit_scratch_l3_s0", "single_frame_l3_s0", "cnn3d_l3_s0"):
        r = json.loads((out / "ft" / run / "results.json").read_text())
        assert r["eval_videos"] == 10 and 0.0 <= r["top1"] <= 1.0
    # every stage ran from the installed copy
    assert all(str(REPO) not in line for line in (out / "logs" / "pretrain.log").read_text().splitlines()
               if "File \"" in line)
