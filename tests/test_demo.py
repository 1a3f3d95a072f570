"""`tubelet demo --preset smoke`: the whole pipeline end to end (synth → pretrain → fine-tune
pretrained and scratch ViT → baselines → compare → export native + ONNX), as separate processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_smoke_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "launch", "demo", "--preset", "smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))
                     ) if (out / "logs").is_dir() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    report = (out / "REPORT.md").read_text()
    for model in ("vit_test", "single_frame", "cnn3d"):
        assert f"| {model} |" in report
    assert "| vit_test | pretrained |" in report and "| vit_test | scratch |" in report
    assert "## Checks (measured in this run)" in report and "reconstruction pictures written" in report
    assert list((out / "pretrain").glob("recon_step*.png"))
    assert (out / "pretrain" / "loss.png").is_file()
    enc = out / "encoder"
    assert (enc / "model.safetensors").is_file() and (enc / "encoder.onnx").is_file()
    cfg = json.loads((enc / "config.json").read_text())
    assert cfg["num_frames"] == 16 and cfg["img_size"] == 32
    for run in ("vit_pretrained_l3_s0", "vit_scratch_l3_s0", "single_frame_l3_s0", "cnn3d_l3_s0"):
        r = json.loads((out / "ft" / run / "results.json").read_text())
        assert r["eval_videos"] == 10 and 0.0 <= r["top1"] <= 1.0
