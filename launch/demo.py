"""The whole pipeline on the embedded synthetic benchmark, one command.

    tubelet demo                          # --preset quick: ~12 min on a 2-core CPU
    tubelet demo --preset full --out demo_full    # the headline comparison (about an hour on a CPU)
    tubelet demo --preset zoo                     # every baseline of the zoo once

Stages: synthesize (motion-defined classes) → pretrain VideoMAE → fine-tune the pretrained ViT and
the same ViT from scratch → the classic baselines → compare (Markdown report) → export the
encoder (safetensors + ONNX checked against onnxruntime). Each stage runs as its own ``tubelet``
process, logging to ``OUT/logs/STAGE.log``; a progress bar with an ETA runs over the stages.
At the end the report is printed with the preset's checks as PASS/FAIL and their measured values
(single-frame at chance, order-blind late fusion ≤ ~55 %, 3D CNN / C3D ≥ 60 %, reconstruction loss
falling, pictures and probe curve written); the command exits non-zero naming any failed stage or
check. INFO lines (pretrained vs scratch in the quick preset, the probe values) never fail it.

``full`` runs 20 and 100 labels per class × 3 seeds for the pretrained and scratch ViT (the same
architecture, init scheme, head and recipe; only the init differs), cnn3d and C3D, single-frame and
late fusion once, probes the encoder during pretraining (``probe.png`` in the report), and checks
the headline claim per label budget (pretrained ViT >= scratch + 15 points and >= C3D, means over
seeds, with a table of mean ± half range). ``full_rgbdiff`` runs the two ViTs on frame differences
(``input_mode: rgb_diff``); ``zoo`` every baseline once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

CHANCE = 0.1  # 10 classes

# Encoder shape shared by the pretrained and the scratch ViT (the preset synth_tiny's): patch 4,
# tubelet 2 on 16x32x32 clips = 512 tubelets; plain-pixel targets (synth frames are mostly flat, so
# per-tubelet normalised targets would be mostly noise).
ENCODER_KW = "patch_size: 4, tubelet_size: 2, embed_dim: 128, num_heads: 4"


@dataclass
class Preset:
    videos_per_class: list[int]               # labeled train videos per class (one fine-tune set each)
    pretrain_videos: int
    test_per_class: int
    pretrain_steps: int
    pretrain_model: str
    encoder: str
    finetune_steps: int
    baseline_steps: int
    baselines: list[str]
    seeds: list[int]
    repeated_models: list[str] = field(default_factory=list)   # also run for every seed / label budget
    encoder_kw: str = ENCODER_KW                                # YAML mapping body of model.kwargs
    steps_by_model: dict = field(default_factory=dict)          # baseline name -> steps (else baseline_steps)
    batch: int = 16
    pretrain_batch: int = 16
    num_repeats: int = 2
    workers: int = 1
    est_seconds: dict = field(default_factory=dict)
    pretrain_overrides: list[str] = field(default_factory=list)  # extra `tubelet pretrain` overrides
    vit_tag: str = "vit"                                          # run names: {vit_tag}_{pretrained,scratch}_...
    vit_overrides: list[str] = field(default_factory=list)       # extra `tubelet finetune` overrides, both ViTs
    probe_every: int = 0                                          # pretraining probes, 0: off
    probe_kinds: str = "knn, attentive"                           # run.probe_kinds
    checks: tuple = ("single_frame", "late_fusion", "cnn3d", "loss", "pngs")   # the checks this preset can pass
    cache: bool = True                                            # decode each video once (data.cache=OUT/cache)


PRESETS = {
    # measured on a quiet 2-core CPU (2026-12-02): 11.7 min in all (pretrain with 2 k-NN probes 143 s,
    # a ViT fine-tune ~140 s, cnn3d 600 steps 136 s, 74.5 % top-1)
    "quick": Preset(videos_per_class=[100], pretrain_videos=1000, test_per_class=20, pretrain_steps=500,
                    pretrain_model="videomae_test", encoder="vit_test", finetune_steps=300, baseline_steps=200,
                    baselines=["single_frame", "late_fusion_avg", "cnn3d"], seeds=[0],
                    steps_by_model={"cnn3d": 600}, probe_every=500, probe_kinds="knn",
                    checks=("single_frame", "late_fusion", "cnn3d", "loss", "pngs", "probe"),
                    est_seconds={"synth": 40, "pretrain": 145, "finetune": 140, "baseline": 75, "compare": 1,
                                 "export": 8}),
    # the whole pipeline with minimal sizes: what the test suite runs (numbers are meaningless)
    "smoke": Preset(videos_per_class=[3], pretrain_videos=20, test_per_class=1, pretrain_steps=4,
                    pretrain_model="videomae_test", encoder="vit_test", finetune_steps=3, baseline_steps=3,
                    baselines=["single_frame", "cnn3d"], seeds=[0], batch=4, pretrain_batch=4, num_repeats=2,
                    probe_every=2, checks=("pngs", "probe"),
                    est_seconds={"synth": 5, "pretrain": 15, "finetune": 12, "baseline": 12, "compare": 2,
                                 "export": 10}),
    # the headline comparison (issue "Pretraining that pays off"): the pretrained and the scratch ViT
    # differ only in their init; both start from the temporal-difference tubelet embedding (without
    # it this ViT cannot learn the motion classes at all: benchmarks/vit_motion.py) and fine-tune with
    # the recipe under which the scratch ViT learns (lr 5e-4, no layer decay, head at full scale).
    # 20 and 100 labels/class x 3 seeds against cnn3d and C3D; single-frame and order-blind late
    # fusion once. Patch 8 on 32 px (4 x 4 x 8 = 128 tubelets); tube masking 0.75 keeps 4 of 16
    # positions visible. Measured: 41.3 min on a quiet 2-core CPU (README "Measured results"). At
    # 600 steps cnn3d and C3D sit on the ln-10 plateau for most of the run on 2 of 3 seeds at 100
    # labels/class (cnn3d 15.4 / 13.4 %, C3D 10.0 / 12.6 %; 70.2 / 27.0 % on seed 0); with 1000 steps
    # (one seed measured) cnn3d 62.4 % and C3D 48.0 % at 20 labels/class vs 58.0 / 43.0 % at 600.
    "full": Preset(videos_per_class=[20, 100], pretrain_videos=4000, test_per_class=50, pretrain_steps=6000,
                   pretrain_model="videomae_test", encoder="vit_test",
                   encoder_kw="patch_size: 8, tubelet_size: 2, embed_dim: 128, num_heads: 4, embed_init: temporal_diff",
                   pretrain_overrides=["model.mask_ratio=0.75"], finetune_steps=1000, baseline_steps=600,
                   baselines=["single_frame", "late_fusion_avg", "cnn3d", "c3d"],
                   seeds=[0, 1, 2], repeated_models=["cnn3d", "c3d"], pretrain_batch=16, num_repeats=4, workers=1,
                   vit_overrides=["optim.lr=5e-4", "optim.layer_decay=1.0", "head.init_scale=1.0",
                                  "model.drop_path=0.0", "optim.warmup_steps=100"],
                   probe_every=1500, checks=("single_frame", "late_fusion", "cnn3d", "loss", "pngs", "probe",
                                             "headline"),
                   est_seconds={"synth": 90, "pretrain": 330, "finetune": 70, "baseline": 95, "compare": 3,
                                "export": 20}),
    # every baseline of the zoo once (100 labels/class, seed 0, 600 steps; r2plus1d_18 is left out:
    # 1.4 s per step here), with the quick preset's pretraining
    "zoo": Preset(videos_per_class=[100], pretrain_videos=1000, test_per_class=50, pretrain_steps=500,
                  pretrain_model="videomae_test", encoder="vit_test", finetune_steps=300, baseline_steps=600,
                  baselines=["single_frame", "late_fusion_avg", "late_fusion_meanstd", "late_fusion_concat",
                             "early_fusion", "cnn3d", "c3d", "two_stream", "recurrent_conv", "nonlocal_3d",
                             "timesformer", "vivit", "vtn"], seeds=[0],
                  checks=("single_frame", "late_fusion", "cnn3d", "pngs"),
                  est_seconds={"synth": 30, "pretrain": 90, "finetune": 80, "baseline": 120, "compare": 3,
                               "export": 10}),
}
# the same comparison with the ViTs on frame differences (``input_mode: rgb_diff``, TSN's RGB
# difference): only the two ViTs, the baselines do not change (take them from a `full` run). Both
# ViTs fine-tune at lr 1e-3: the scratch ViT reached 33.2 % there vs 16.4 % at the recipe's
# blr-scaled 6.25e-5 (100 labels/class, seed 0), so the higher LR is the fair one for scratch.
PRESETS["full_rgbdiff"] = replace(PRESETS["full"], encoder_kw="patch_size: 8, tubelet_size: 2, embed_dim: 128, "
                                  "num_heads: 4, input_mode: rgb_diff", baselines=[], repeated_models=[],
                                  vit_tag="vitdiff", vit_overrides=["optim.lr=1e-3"],
                                  checks=("loss", "pngs", "probe", "headline"))


@dataclass
class Stage:
    name: str
    kind: str        # key into est_seconds
    argv: list[str]


def _cache(p: Preset, out: Path) -> list[str]:
    return [f"data.cache={out / 'cache'}"] if p.cache else []


def _data_overrides(p: Preset, shards: Path, val: Path, out: Path) -> list[str]:
    return [f"data.shards={shards}", f"data.val_shards={val}", f"data.batch_size={p.batch}",
            f"data.num_workers={p.workers}", "data.test_num_clips=2", *_cache(p, out)]


def _probe_overrides(p: Preset, data: Path) -> list[str]:
    if not p.probe_every:
        return []
    return [f"run.probe_every={p.probe_every}", f"run.probe_shards={data / 'train'}",
            f"run.probe_kinds=[{p.probe_kinds}]"]


def plan(p: Preset, out: Path) -> list[Stage]:
    """Every stage of a preset, in order (each one a ``tubelet`` command line)."""
    data = out / "data"
    stages = [Stage("synth", "synth", ["synth", "--out", str(data), "--videos-per-class", str(max(p.videos_per_class)),
                                       "--pretrain-videos", str(p.pretrain_videos), "--test-per-class",
                                       str(p.test_per_class), "--val-per-class", "2", "--preview", "--no-progress"])]
    for lpc in p.videos_per_class:
        if lpc != max(p.videos_per_class):
            # the synth RNG is keyed by (seed, split, index): the first N videos per class are the same
            stages.append(Stage(f"synth_{lpc}", "synth",
                                ["synth", "--out", str(out / f"data_{lpc}"), "--videos-per-class", str(lpc),
                                 "--pretrain-videos", "0", "--test-per-class", str(p.test_per_class),
                                 "--val-per-class", "1", "--no-progress"]))
    pt = out / "pretrain"
    stages.append(Stage("pretrain", "pretrain", [
        "pretrain", "--config", "synth_tiny", f"data.shards={data / 'pretrain'}",
        f"run.dir={pt}", f"run.max_steps={p.pretrain_steps}", f"run.save_every={max(50, p.pretrain_steps // 4)}",
        f"run.vis_every={max(50, p.pretrain_steps // 3)}", f"model.name={p.pretrain_model}",
        f"model.kwargs={{{p.encoder_kw}, norm_pix_loss: false}}",
        f"data.batch_size={p.pretrain_batch}", f"data.num_repeats={p.num_repeats}", f"data.num_workers={p.workers}",
        "run.progress=false", *_cache(p, out), *_probe_overrides(p, data), *p.pretrain_overrides]))
    test = data / "test"
    # seed-major: an interrupted run already holds every label budget for the first seeds
    for seed in p.seeds:
        for lpc in p.videos_per_class:
            train = (data if lpc == max(p.videos_per_class) else out / f"data_{lpc}") / "train"
            tag = f"l{lpc}_s{seed}"
            common = _data_overrides(p, train, test, out) + [f"run.seed={seed}", "run.progress=false"]
            stages.append(Stage(f"{p.vit_tag}_pretrained_{tag}", "finetune", [
                "finetune", "--config", "synth_vit", "--init", str(pt),
                f"model.name={p.encoder}", f"run.dir={out / 'ft' / f'{p.vit_tag}_pretrained_{tag}'}",
                f"run.max_steps={p.finetune_steps}", *common, *p.vit_overrides]))
            stages.append(Stage(f"{p.vit_tag}_scratch_{tag}", "finetune", [
                "finetune", "--config", "synth_vit", f"model.name={p.encoder}", f"model.kwargs={{{p.encoder_kw}}}",
                f"run.dir={out / 'ft' / f'{p.vit_tag}_scratch_{tag}'}", f"run.max_steps={p.finetune_steps}", *common,
                *p.vit_overrides]))
            names = p.baselines if (lpc == max(p.videos_per_class) and seed == p.seeds[0]) else p.repeated_models
            for name in names:
                stages.append(Stage(f"{name}_{tag}", "baseline", [
                    "finetune", "--config", "synth_baseline", f"model.name={name}",
                    f"run.dir={out / 'ft' / f'{name}_{tag}'}",
                    f"run.max_steps={p.steps_by_model.get(name, p.baseline_steps)}", *common]))
    stages.append(Stage("compare", "compare", ["compare", str(out / "ft" / "*"), "--out", str(out / "REPORT.md"),
                                               "--title", "tubelet demo: synthetic motion benchmark",
                                               "--chance", str(CHANCE)]))
    stages.append(Stage("export_native", "export", ["export", "--from", str(pt), "--out", str(out / "encoder"),
                                                    "--format", "native"]))
    stages.append(Stage("export_onnx", "export", ["export", "--from", str(pt), "--out", str(out / "encoder"),
                                                  "--format", "onnx"]))
    return stages


def run_stage(stage: Stage, out: Path, env: dict) -> tuple[int, float]:
    log = out / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ tubelet " + " ".join(stage.argv) + "\n")
        f.flush()
        rc = subprocess.call([sys.executable, "-m", "launch", *stage.argv], stdout=f, stderr=subprocess.STDOUT,
                             env=env, cwd=out)
    return rc, time.perf_counter() - t0


def _arg(argv: list[str], key: str) -> str | None:
    """The value of ``key=value`` or of the option ``key`` in a stage's command line."""
    for i, a in enumerate(argv):
        if a.startswith(key + "="):
            return a.split("=", 1)[1]
        if a == key and i + 1 < len(argv):
            return argv[i + 1]
    return None


def stage_done(stage: Stage) -> bool:
    """Whether an earlier demo run already completed ``stage`` exactly as planned (``--resume``).
    A fine-tune or baseline run directory that does not match (other step count, no results) is
    removed here, so the stage starts fresh instead of resuming a different schedule."""
    import shutil

    if stage.kind == "synth":
        d = Path(_arg(stage.argv, "--out"))
        return all((d / split / "manifest.json").is_file() for split in ("train", "test"))
    if stage.kind == "pretrain":
        from pretrain.train.checkpoint import list_checkpoints

        d = Path(_arg(stage.argv, "run.dir"))
        ck = list_checkpoints(d) if d.is_dir() else []
        return (d / "final" / "model.safetensors").is_file() and bool(ck) and \
            ck[-1][0] == int(_arg(stage.argv, "run.max_steps"))
    if stage.kind in ("finetune", "baseline"):
        d = Path(_arg(stage.argv, "run.dir"))
        f = d / "results.json"
        if f.is_file() and json.loads(f.read_text()).get("steps") == int(_arg(stage.argv, "run.max_steps")):
            return True
        if d.exists():
            shutil.rmtree(d)
        return False
    return False                                          # compare / export: cheap, always rerun


def _result(out: Path, run: str) -> dict | None:
    f = out / "ft" / run / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def check_claims(out: Path, p: Preset) -> list[tuple[str, bool | None, str]]:
    """The preset's checks, measured: ``(claim, ok, measured)``; ``ok is None`` for lines that only
    inform (they never fail the demo). Only the checks named in ``p.checks`` run."""
    tag = f"l{max(p.videos_per_class)}_s{p.seeds[0]}"
    claims: list = []
    want = set(p.checks)

    def top1(name):
        r = _result(out, f"{name}_{tag}")
        return None if r is None else r.get("top1")

    def measured(name, claim, ok_fn):
        v = top1(name)
        claims.append((claim, v is not None and ok_fn(v), "not run" if v is None else f"{100 * v:.1f}%"))

    if "single_frame" in want:
        measured("single_frame", "single-frame CNN at chance (<= 20%)", lambda v: v <= 0.20)
    if "late_fusion" in want:
        measured("late_fusion_avg", "order-blind late fusion <= ~55%", lambda v: v <= 0.55)
    if "cnn3d" in want:
        best3d = max([v for v in (top1("cnn3d"), top1("c3d")) if v is not None], default=None)
        claims.append(("3D CNN / C3D >= 60%", best3d is not None and best3d >= 0.60,
                       "not run" if best3d is None else f"{100 * best3d:.1f}%"))
    recs = _pretrain_records(out)
    if "loss" in want:
        losses = [r["loss"] for r in recs if r.get("loss") is not None]
        k = max(1, len(losses) // 5)
        first, last = (sum(losses[:k]) / k, sum(losses[-k:]) / k) if len(losses) >= 2 else (None, None)
        claims.append(("masked-reconstruction loss falling", first is not None and last < first,
                       "fewer than 2 loss records" if first is None else f"{first:.3f} -> {last:.3f}"))
    if "pngs" in want:
        pngs = sorted((out / "pretrain").glob("recon_step*.png"))
        claims.append(("reconstruction pictures written", bool(pngs), ", ".join(x.name for x in pngs) or "none"))
    if "probe" in want:
        probes = [r for r in recs if "probe_knn_top1" in r]
        png = (out / "pretrain" / "probe.png").is_file()
        claims.append(("probe curve written (probe.png, step 0 and later)", png and len(probes) >= 2,
                       f"{len(probes)} probe points" + ("" if png else ", no probe.png")))
    if "headline" in want:
        claims += headline_claim(out, p)
    pt, sc = top1(f"{p.vit_tag}_pretrained"), top1(f"{p.vit_tag}_scratch")
    if pt is not None and sc is not None:
        claims.append(("pretrained ViT vs scratch ViT", None, f"{100 * pt:.1f}% vs {100 * sc:.1f}%"))
    probes = [r for r in recs if "probe_knn_top1" in r]
    if probes:
        claims.append(("pretraining probes, k-NN top-1 at the first / last step", None,
                       f"{100 * probes[0]['probe_knn_top1']:.1f}% (step {probes[0]['step']}) -> "
                       f"{100 * probes[-1]['probe_knn_top1']:.1f}% (step {probes[-1]['step']})"))
    return claims


def _pretrain_records(out: Path) -> list[dict]:
    m = out / "pretrain" / "metrics.jsonl"
    return [json.loads(line) for line in m.read_text().splitlines() if line.strip()] if m.is_file() else []


def seed_table(out: Path, p: Preset) -> list[str]:
    """Markdown: top-1 mean +- half the min-max range over seeds, per label budget, for the models
    run at every seed (the two ViTs and ``repeated_models``)."""
    models = [f"{p.vit_tag}_pretrained", f"{p.vit_tag}_scratch", *p.repeated_models]
    rows = []
    for lpc in p.videos_per_class:
        cells = []
        for name in models:
            vals = [r["top1"] for s in p.seeds if (r := _result(out, f"{name}_l{lpc}_s{s}")) and r.get("top1") is not None]
            cells.append(f"{100 * sum(vals) / len(vals):.1f} ± {50 * (max(vals) - min(vals)):.1f} (n={len(vals)})"
                         if vals else "–")
        rows.append(f"| {lpc} | " + " | ".join(cells) + " |")
    head = "| labels/class | " + " | ".join(models) + " |"
    return ["## Over seeds (top-1 %, mean ± half range)", "", head, "|" + "---|" * (len(models) + 1), *rows, ""]


def headline_claim(out: Path, p: Preset) -> list[tuple[str, bool, str]]:
    """Per label budget, over seeds: pretrained ViT >= scratch ViT + 15 points and >= C3D (means)."""
    claims = []
    for lpc in p.videos_per_class:
        means = {}
        names = {"pt": f"{p.vit_tag}_pretrained", "sc": f"{p.vit_tag}_scratch", "c3d": "c3d"}
        for key, name in names.items():
            vals = [r["top1"] for s in p.seeds if (r := _result(out, f"{name}_l{lpc}_s{s}")) and r.get("top1") is not None]
            if vals:
                means[key] = (sum(vals) / len(vals), len(vals))
        if not {"pt", "sc"} <= set(means):
            continue
        pt, sc = means["pt"][0], means["sc"][0]
        c3d = means.get("c3d", (None, 0))[0]
        ok = pt >= sc + 0.15 and (c3d is None or pt >= c3d)
        measured = (f"pretrained {100 * pt:.1f}% vs scratch {100 * sc:.1f}%"
                    + (f" vs C3D {100 * c3d:.1f}%" if c3d is not None else "")
                    + f" (mean of {means['pt'][1]} seeds)")
        claims.append((f"{lpc} labels/class: pretrained ViT >= scratch + 15 points and >= C3D", ok, measured))
    return claims


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--out", default="", help="output directory (default: demo_<preset>)")
    p.add_argument("--keep-going", action="store_true", help="continue after a failed stage")
    p.add_argument("--resume", action="store_true",
                   help="reuse the stages an earlier run in --out completed with the same settings (data, a "
                        "finished pretraining, fine-tunes whose results.json has the planned steps); a stage "
                        "whose run differs from the plan is removed and run again")


def run(args) -> int:
    from tqdm.auto import tqdm

    p = PRESETS[args.preset]
    out = Path(args.out or f"demo_{args.preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = plan(p, out)
    here = str(Path(__file__).resolve().parents[1])      # a checkout or site-packages: `-m launch` resolves
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    weights = [p.est_seconds.get(s.kind, 30) for s in stages]
    print(f"tubelet demo ({args.preset}): {len(stages)} stages, about {sum(weights) / 60:.0f} min estimated; "
          f"logs in {out / 'logs'}", flush=True)
    t_start = time.perf_counter()
    failed, reused = [], []
    with tqdm(total=sum(weights), unit="est-s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}]",
              dynamic_ncols=True) as bar:
        for stage, w in zip(stages, weights):
            bar.set_description(stage.name)
            reuse = args.resume and stage_done(stage)
            if reuse:
                reused.append(stage.name)
            rc, dt = (0, 0.0) if reuse else run_stage(stage, out, env)
            bar.update(w)
            status = "reused" if reuse else "ok" if rc == 0 else f"FAILED (exit {rc})"
            line = f"  {stage.name:<28} {status:<6}  {dt:6.1f} s"
            r = _result(out, stage.name)
            if r and r.get("top1") is not None:
                line += f"   top-1 {100 * r['top1']:.1f}%"
            tqdm.write(line)
            if rc != 0:
                failed.append(stage.name)
                tqdm.write(f"    see {out / 'logs' / (stage.name + '.log')}")
                if not args.keep_going and stage.kind in ("synth", "pretrain"):
                    break
    total = time.perf_counter() - t_start
    report = out / "REPORT.md"
    claims = check_claims(out, p)
    lines = []
    if len(p.seeds) > 1:
        lines += [""] + seed_table(out, p)
    if (out / "pretrain" / "probe.png").is_file():
        lines += ["", "## Pretraining probes", "", "![probe curve](pretrain/probe.png)", ""]
    lines += ["", "## Checks (measured in this run)", ""]
    lines += [f"- {'INFO' if ok is None else 'PASS' if ok else 'FAIL'} — {c}: {m}" for c, ok, m in claims]
    lines += ["", f"Total demo time: {total / 60:.1f} min (preset {args.preset})"
              + (f"; {len(reused)} of {len(stages)} stages reused from an earlier run (--resume)" if reused else "")
              + ".", ""]
    if report.is_file():
        report.write_text(report.read_text() + "\n".join(lines))
        print(report.read_text())
        print(f"report: {report}")
    else:
        print("\n".join(lines))
    for what, path in (("reconstructions", out / "pretrain"), ("encoder", out / "encoder")):
        if path.is_dir() and any(path.iterdir()):
            print(f"{what}: {path}")
    failed_checks = [c for c, ok, _ in claims if ok is False]
    if failed:
        print(f"tubelet demo: failed stages: {', '.join(failed)} (logs in {out / 'logs'})", file=sys.stderr)
    if failed_checks:
        print(f"tubelet demo: failed checks: {'; '.join(failed_checks)}", file=sys.stderr)
    return 1 if failed or failed_checks else 0
