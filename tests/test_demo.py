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


def _fake_result(out: Path, run: str, top1: float) -> None:
    d = out / "ft" / run
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"top1": top1}))


def test_headline_claim_means_over_seeds(tmp_path):
    from launch.demo import PRESETS, headline_claim

    p = PRESETS["full"]
    for s, (pt, sc, c3d) in enumerate([(0.70, 0.10, 0.60), (0.60, 0.12, 0.62), (0.65, 0.08, 0.61)]):
        _fake_result(tmp_path, f"vit_pretrained_l100_s{s}", pt)
        _fake_result(tmp_path, f"vit_scratch_l100_s{s}", sc)
        _fake_result(tmp_path, f"c3d_l100_s{s}", c3d)
        _fake_result(tmp_path, f"vit_pretrained_l20_s{s}", 0.20)   # 20 labels: +10 points only
        _fake_result(tmp_path, f"vit_scratch_l20_s{s}", 0.10)
    claims = {c: (ok, m) for c, ok, m in headline_claim(tmp_path, p)}
    ok100, m100 = next(v for c, v in claims.items() if c.startswith("100 labels"))
    ok20, m20 = next(v for c, v in claims.items() if c.startswith("20 labels"))
    assert ok100 and "pretrained 65.0% vs scratch 10.0% vs C3D 61.0% (mean of 3 seeds)" in m100
    assert not ok20 and "scratch 10.0%" in m20 and "C3D" not in m20


def test_full_preset_plan_passes_pretrain_overrides(tmp_path):
    from launch.demo import PRESETS, plan

    stages = {s.name: s for s in plan(PRESETS["full"], tmp_path)}
    assert "model.mask_ratio=0.75" in stages["pretrain"].argv
    assert {f"vit_{k}_l{n}_s{s}" for k in ("pretrained", "scratch") for n in (20, 100) for s in (0, 1, 2)} <= set(stages)
    assert {f"c3d_l{n}_s{s}" for n in (20, 100) for s in (0, 1, 2)} <= set(stages)
