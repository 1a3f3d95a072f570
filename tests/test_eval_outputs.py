"""Evaluation outputs on a tiny fine-tune run: per-view and per-video top-1/top-5, the view protocol,
per-video scores (scores.npy + scores_keys.json) whose argmax reproduces the printed top-1, the
confusion-matrix title of ``tubelet evaluate``, and the fine-tune's epoch arithmetic (recipe.json)."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from finetune.config import FinetuneConfig
from pretrain.config import load_config

# 20 train videos (2 per class), 10 test videos; 4 clips per step = 2 videos x 2 repeats
DATA = ["data.num_frames=8", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=4", "data.num_repeats=2",
        "data.num_workers=0", "data.hflip=false", "data.test_num_clips=2", "data.test_num_crops=3",
        "run.progress=false", "run.tracker=none", "run.log_every=1", "model.name=vit_test",
        "model.kwargs={patch_size: 8, tubelet_size: 2}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pretrain.data.synth import write_synth

    out = tmp_path_factory.mktemp("evdata")
    write_synth(out, videos_per_class=2, frames=16, size=32, pretrain_videos=0, val_per_class=1,
                test_per_class=1, progress=False)
    return out


@pytest.fixture(scope="module")
def ft_run(data, tmp_path_factory):
    """A fine-tune given in epochs: 20 videos // 2 videos/step = 10 steps/epoch; 0.5 epochs = 5
    steps, warmup 0.2 epochs = 2 steps; published batch 8 videos (this run has 2: a warning)."""
    import contextlib
    import io

    from finetune.main import finetune

    run = tmp_path_factory.mktemp("ft") / "run"
    cfg = load_config(FinetuneConfig, None, DATA + [
        f"data.shards={data / 'train'}", f"data.val_shards={data / 'test'}", f"run.dir={run}",
        "run.epochs=0.5", "optim.warmup_epochs=0.2", "run.max_steps=999", "optim.warmup_steps=99",
        "run.published_batch=8", "run.save_every=100", "optim.blr=1e-3"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        results = finetune(cfg)
    return run, results, out.getvalue(), err.getvalue()


def _printed(text: str, what: str) -> tuple[float, float]:
    m = re.search(rf"{what}:\s+top-1 ([\d.]+)%\s+top-5 ([\d.]+)%", text)
    assert m, f"no '{what}' line in:\n{text[-3000:]}"
    return float(m.group(1)), float(m.group(2))


def _check_scores(d, ev, printed_top1):
    scores = np.load(d / "scores.npy")
    meta = json.loads((d / "scores_keys.json").read_text())
    assert scores.shape == (ev["num_videos"], 10) and scores.dtype == np.float32
    assert len(meta["keys"]) == len(set(meta["keys"])) == ev["num_videos"]
    assert meta["views"] == [6] * ev["num_videos"] and meta["protocol"] == ev["protocol"]
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)          # mean of softmaxes
    labels = np.asarray(meta["labels"])
    top1 = float((scores.argmax(1) == labels).mean())
    assert top1 == pytest.approx(ev["top1"])
    assert 100 * top1 == pytest.approx(printed_top1, abs=0.006)        # the printed top-1, to its 2 decimals
    top5 = float(np.mean([l in np.argsort(-s, kind="stable")[:5] for s, l in zip(scores, labels)]))
    assert top5 == pytest.approx(ev["top5"])
    conf = np.zeros((10, 10), int)
    for s, l in zip(scores, labels):
        conf[l, s.argmax()] += 1
    assert conf.tolist() == ev["confusion"]


def test_finetune_epochs_become_steps(ft_run):
    run, results, out, err = ft_run
    assert "recipe: epochs 0.5 x 10 steps/epoch (20 videos // 2 videos/step, from manifest.json" in out
    assert "= 5 steps; warmup 0.2 epochs = 2 steps" in out
    assert "effective batch 4 clips = 2 videos per step" in out
    assert "WARNING: effective batch 2 videos/step differs from the published 8 videos/step" in err
    assert "dist.grad_accum=4 restores it" in err
    rec = json.loads((run / "recipe.json").read_text())
    assert (rec["steps_per_epoch"], rec["max_steps"], rec["warmup_steps"]) == (10, 5, 2)
    assert rec["num_videos"] == 20 and rec["num_videos_from"].startswith("manifest.json")
    assert rec["clips_per_step"] == 4 and rec["videos_per_step"] == 2 and rec["published_batch_matches"] is False
    assert rec["base_lr"] == pytest.approx(1e-3 * 2 / 256) and rec["published_lr"] == pytest.approx(1e-3 * 8 / 256)
    assert results["steps"] == 5 and results["recipe"] == rec and results["videos_per_step"] == 2
    hist = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [r["step"] for r in hist] == [1, 2, 3, 4, 5]
    assert hist[0]["lr"] == pytest.approx(rec["base_lr"] / 2) and hist[1]["lr"] == pytest.approx(rec["base_lr"])
    saved = load_config(FinetuneConfig, run / "config.yaml")
    assert (saved.run.epochs, saved.run.max_steps, saved.optim.warmup_steps) == (0.5, 5, 2)


def test_finetune_end_evaluation_outputs(ft_run):
    run, results, out, _ = ft_run
    ev = json.loads((run / "eval.json").read_text())
    assert ev["protocol"] == "2 clips (8 frames, uniformly spread) x 3 crops along the long side, softmax average"
    assert "views: " + ev["protocol"] in out
    assert ev["num_videos"] == 10 and ev["num_views"] == 60 and ev["views_per_video"] == 6
    v1, v5 = _printed(out, "per view")
    p1, p5 = _printed(out, "per video")
    assert (v1, v5) == (round(100 * ev["view_top1"], 2), round(100 * ev["view_top5"], 2))
    assert (p1, p5) == (round(100 * ev["top1"], 2), round(100 * ev["top5"], 2))
    for k in ("top1", "top5", "per_class", "mean_class_accuracy", "confusion", "class_names", "skipped", "shards"):
        assert k in ev                                                  # the keys eval.json always had
    assert results["view_top1"] == ev["view_top1"] and results["eval_protocol"] == ev["protocol"]
    _check_scores(run, ev, p1)


def test_evaluate_cli_outputs_and_confusion_title(ft_run, tmp_path, capsys, monkeypatch):
    import finetune.evaluate as E

    run, *_ = ft_run
    titles = []
    real = E.save_confusion_png

    def spy(summary, path, title=""):
        titles.append(real(summary, path, title=title))

    monkeypatch.setattr(E, "save_confusion_png", spy)
    p = argparse.ArgumentParser()
    E.add_arguments(p)
    out = tmp_path / "ev"
    args = p.parse_args(["--model", str(run), "--num-clips", "3", "--num-crops", "1", "--out", str(out),
                         "--no-progress", "--workers", "0"])
    assert E.run(args) == 0
    text = capsys.readouterr().out
    ev = json.loads((out / "eval.json").read_text())
    assert "views: 3 clips (8 frames, uniformly spread) x 1 centre crop, softmax average" in text
    assert ev["num_views"] == 30 and ev["num_clips"] == 3 and ev["num_crops"] == 1
    v1, _ = _printed(text, "per view")
    p1, _ = _printed(text, "per video")
    assert v1 == round(100 * ev["view_top1"], 2) and p1 == round(100 * ev["top1"], 2)
    meta = json.loads((out / "scores_keys.json").read_text())
    assert meta["views"] == [3] * 10
    scores = np.load(out / "scores.npy")
    assert 100 * float((scores.argmax(1) == np.asarray(meta["labels"])).mean()) == pytest.approx(p1, abs=0.006)
    # the title names the model and the run (it used to read a key config.json never has: blank)
    assert titles and titles[0].startswith("vit_test (scratch) - run top-1 ")
    assert (out / "confusion.png").stat().st_size > 0


def test_confusion_title_from_meta():
    from finetune.evaluate import confusion_title

    assert confusion_title({"model": "vit_base", "init": "loaded 150 tensors from x", "run_dir": "/r/ft_b"}) == \
        "vit_base (pretrained) - ft_b"
    assert confusion_title({"model": "c3d", "init": "scratch", "run_dir": "/r/c3d"}) == "c3d (scratch)"
    assert confusion_title({}) == ""


def test_view_protocol_segment():
    from finetune.evaluate import view_protocol
    from pretrain.config import DataConfig

    d = DataConfig(sampling="segment", num_frames=16)
    assert view_protocol(d, 2, 3) == ("2 clips (16 segments, frame at 1/4, 3/4 of each) x 3 crops "
                                      "along the long side, softmax average")


def test_evaluation_runs_in_bf16_weights_under_autocast(data):
    """DeepSpeed bf16 keeps the weights in bf16: evaluation autocasts in the training precision
    (``finetune`` passes ``autocast_dtype`` from the runtime) and scores agree with fp32."""
    import torch

    from finetune.evaluate import evaluate_model
    from finetune.heads import build_classifier
    from pretrain.models import create_model

    torch.manual_seed(0)
    cfg = load_config(FinetuneConfig, None, DATA)
    enc = create_model("vit_test", num_frames=8, img_size=32, patch_size=8, tubelet_size=2)
    model = build_classifier("finetune", enc, 10, init_scale=1.0).eval()
    kw = dict(num_clips=1, num_crops=1, progress=False)
    ref = evaluate_model(model, cfg.data, str(data / "test"), 10, **kw)
    half = evaluate_model(model.to(torch.bfloat16), cfg.data, str(data / "test"), 10, autocast_dtype=torch.bfloat16, **kw)
    assert half["num_videos"] == ref["num_videos"] == 10
    assert abs(half["top1"] - ref["top1"]) <= 0.2          # bf16 rounding may flip a near-tie or two
