"""Frozen-encoder probes: the k-NN / linear / attentive classifiers, the key split, probes during
pretraining (metrics.jsonl, probe.png, the initial value), and `tubelet evaluate --probe` exact-once
with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.config import PretrainConfig, load_config
from pretrain.probe import knn_predict, run_probe, split_by_key

REPO = Path(__file__).resolve().parents[1]


def _clustered(n_per_class=40, classes=5, dim=16, tokens=6, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    recs = {}
    for c in range(classes):
        for i in range(n_per_class):
            tok = centres[c] + spread * torch.randn(tokens, dim, generator=g)
            recs[f"v{c}_{i}"] = {"feat": tok.mean(0), "tokens": tok, "label": c}
    return recs


def test_knn_on_separable_features_is_perfect_and_shuffled_labels_are_chance():
    recs = _clustered()
    fit, score = split_by_key(recs, 0.25)
    assert run_probe("knn", fit, score, 5)["top1"] == 1.0
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(fit), generator=g).tolist()
    labels = [r["label"] for r in fit.values()]
    shuffled = {k: {**r, "label": labels[perm[i]]} for i, (k, r) in enumerate(fit.items())}
    acc = run_probe("knn", shuffled, score, 5)["top1"]
    assert acc < 0.45, f"shuffled labels should give about chance (20%), got {acc:.2f}"


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.1]])
    s = knn_predict(train, y, test, 2, k=3, temperature=0.07)
    # one very close neighbour of class 0 outweighs two far ones of class 1
    assert s.argmax(1).item() == 0
    assert torch.allclose(s.sum(1), torch.exp(torch.nn.functional.normalize(test, dim=1) @
                                              torch.nn.functional.normalize(train, dim=1).T / 0.07).sum(1))


@pytest.mark.parametrize("kind", ["linear", "attentive"])
def test_trained_probes_learn_separable_classes(kind):
    recs = _clustered(spread=0.5)
    fit, score = split_by_key(recs, 0.25)
    r = run_probe(kind, fit, score, 5, steps=150)
    assert r["top1"] >= 0.95 and r["n_fit"] + r["n_score"] == len(recs)


def test_split_by_key_is_deterministic_and_disjoint():
    recs = {f"k{i}": {"feat": torch.zeros(2), "tokens": None, "label": 0} for i in range(500)}
    a, b = split_by_key(recs, 0.2)
    a2, b2 = split_by_key(dict(reversed(list(recs.items()))), 0.2)
    assert set(a) == set(a2) and set(b) == set(b2) and not set(a) & set(b)
    assert 60 < len(b) < 140


@pytest.fixture(scope="module")
def synth(synth_dir):
    return synth_dir          # conftest's session dataset: train 40 videos, test 20 (read-only)


def test_probes_during_pretraining(synth, tmp_path):
    from pretrain.main import pretrain

    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, [
        "data.num_frames=8", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=4", "data.num_workers=0",
        f"data.shards={synth / 'pretrain'}", f"run.dir={run}", "run.max_steps=4", "run.save_every=2",
        "run.tracker=none", "run.progress=false", "model.name=videomae_test", "model.kwargs={patch_size: 8}",
        "optim.lr=1e-3", "run.probe_every=2", f"run.probe_shards={synth / 'train'}",
        "run.probe_kinds=[knn, linear, attentive]", "run.probe_steps=20"])
    pretrain(cfg)
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in recs if "probe_knn_top1" in r]
    assert [r["step"] for r in probes] == [0, 2, 4]
    assert all(0.0 <= r[f"probe_{k}_top1"] <= 1.0 for r in probes for k in ("knn", "linear", "attentive"))
    assert probes[0]["probe_n_fit"] + probes[0]["probe_n_score"] == 40, "every labeled video once"
    assert (run / "probe.png").stat().st_size > 1000
    # a resumed run keeps the probe history and adds the new points
    pretrain(load_config(PretrainConfig, None, [*cfg_overrides(cfg), "run.max_steps=6"]))
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "probe_knn_top1" in r] == [0, 2, 4, 6]


def cfg_overrides(cfg) -> list[str]:
    d = cfg.data
    return [f"data.num_frames={d.num_frames}", f"data.img_size={d.img_size}", f"data.sampling_rate={d.sampling_rate}",
            f"data.batch_size={d.batch_size}", "data.num_workers=0", f"data.shards={d.shards}",
            f"run.dir={cfg.run.dir}", f"run.save_every={cfg.run.save_every}", "run.tracker=none",
            "run.progress=false", "model.name=videomae_test", "model.kwargs={patch_size: 8}", "optim.lr=1e-3",
            f"run.probe_every={cfg.run.probe_every}", f"run.probe_shards={cfg.run.probe_shards}",
            "run.probe_kinds=[knn]", "run.probe_steps=20"]


def test_probe_settings_are_checked():
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match="run.probe_shards"):
        load_config(PretrainConfig, None, ["run.probe_every=10"])
    with pytest.raises(ConfigError, match="run.probe_kinds"):
        load_config(PretrainConfig, None, ["run.probe_every=10", "run.probe_shards=x", "run.probe_kinds=[svm]"])


def test_evaluate_probe_cli_two_processes_exact_once(synth, tmp_path):
    from launch.cli import main as tubelet
    from pretrain.models import create_model

    enc = create_model("vit_test", num_frames=8, img_size=32, patch_size=8)
    from finetune.interop.native import save_encoder

    save_encoder(enc, tmp_path / "enc")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    args = ["--model", str(tmp_path / "enc"), "--probe", "knn", "--train-shards", str(synth / "train"),
            "--shards", str(synth / "test"), "--workers", "0", "--sampling-rate", "2"]
    assert tubelet(["evaluate", *args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "probe.json").read_text())["results"]["knn"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "launch", "evaluate", *args,
           "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "probe.json").read_text())["results"]["knn"]
    assert (one["n_fit"], one["n_score"]) == (40, 20) == (two["n_fit"], two["n_score"])
    assert one["top1"] == two["top1"]
