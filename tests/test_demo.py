"""The demo's plan and checks (the smoke preset runs end to end from an installed wheel in
``tests/test_wheel.py``)."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def test_checks_fail_informative_lines_do_not(tmp_path):
    from dataclasses import replace

    from launch.demo import PRESETS, check_claims

    p = replace(PRESETS["quick"], checks=("single_frame", "late_fusion", "cnn3d"))
    _fake_result(tmp_path, "single_frame_l100_s0", 0.5)      # a single frame cannot know the motion: FAIL
    _fake_result(tmp_path, "late_fusion_avg_l100_s0", 0.3)
    _fake_result(tmp_path, "vit_pretrained_l100_s0", 0.2)
    _fake_result(tmp_path, "vit_scratch_l100_s0", 0.4)
    claims = {c: (ok, m) for c, ok, m in check_claims(tmp_path, p)}
    assert claims["single-frame CNN at chance (<= 20%)"] == (False, "50.0%")
    assert claims["order-blind late fusion <= ~55%"][0] is True
    assert claims["3D CNN / C3D >= 60%"] == (False, "not run")
    assert claims["pretrained ViT vs scratch ViT"][0] is None, "informative only"
    assert not any("reconstruction" in c for c in claims), "checks not named by the preset do not run"


def test_smoke_runs_only_checks_it_can_pass():
    from launch.demo import PRESETS

    assert set(PRESETS["smoke"].checks) == {"pngs", "probe"}
    assert "headline" in PRESETS["full"].checks and "headline" not in PRESETS["quick"].checks


def test_pretrained_and_scratch_vit_share_everything_but_the_init(tmp_path):
    """Same architecture, init scheme and head: the scratch ViT's model.kwargs are the pretraining
    encoder's (fine-tuning rebuilds the pretrained one from its run), and both fine-tunes get the
    same overrides apart from --init and run.dir."""
    from launch.demo import PRESETS, plan

    for name in ("quick", "full"):
        stages = {s.name: s.argv for s in plan(PRESETS[name], tmp_path)}
        kw = next(a for a in stages["pretrain"] if a.startswith("model.kwargs="))
        pt = stages["vit_pretrained_l100_s0"]
        sc = stages["vit_scratch_l100_s0"]
        assert f"model.kwargs={{{PRESETS[name].encoder_kw}}}" in sc
        assert kw.startswith(f"model.kwargs={{{PRESETS[name].encoder_kw}")
        strip = lambda argv: sorted(a for a in argv if not a.startswith(("run.dir=", "model.kwargs=", "--init"))
                                    and "/pretrain" not in a)
        assert strip(pt) == strip(sc)


def test_resume_reuses_only_stages_that_match_the_plan(tmp_path):
    """``tubelet demo --resume``: data with manifests and fine-tunes whose results.json has the
    planned step count are reused; a fine-tune run with another step count is removed and rerun;
    compare and export always rerun."""
    from launch.demo import PRESETS, plan, stage_done

    stages = {s.name: s for s in plan(PRESETS["full"], tmp_path)}
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "manifest.json").write_text("{}")
    assert stage_done(stages["synth"]) and not stage_done(stages["synth_20"])
    assert not stage_done(stages["pretrain"])
    ok, stale = tmp_path / "ft" / "vit_scratch_l20_s0", tmp_path / "ft" / "cnn3d_l100_s1"
    ok.mkdir(parents=True)
    (ok / "results.json").write_text(json.dumps({"steps": PRESETS["full"].finetune_steps, "top1": 0.5}))
    stale.mkdir(parents=True)
    other = PRESETS["full"].baseline_steps + 400                                       # an older plan's steps
    (stale / "results.json").write_text(json.dumps({"steps": other, "top1": 0.15}))
    assert stage_done(stages["vit_scratch_l20_s0"]) and ok.is_dir()
    assert not stage_done(stages["cnn3d_l100_s1"]) and not stale.exists()
    assert not stage_done(stages["compare"]) and not stage_done(stages["export_onnx"])
