"""Fine-tuning stage: init from pretraining, layer decay, probes, baselines end to end, 2-process eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.config import FinetuneConfig
from finetune.classifier import build_model, load_finetuned
from finetune.main import finetune
from finetune.heads import AttentiveProbe, LinearProbe, VideoClassifier
from pretrain.config import PretrainConfig, load_config
from pretrain.train.optim import param_groups

REPO = Path(__file__).resolve().parents[1]
DATA = ["data.num_frames=8", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=4",
        "data.num_workers=0", "data.hflip=false", "data.test_num_clips=2", "run.progress=false",
        "run.tracker=none", "run.log_every=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pretrain.data.synth import write_synth

    out = tmp_path_factory.mktemp("ftdata")
    write_synth(out, videos_per_class=2, frames=16, size=32, pretrain_videos=20, val_per_class=1,
                test_per_class=1, progress=False)
    return out


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    from pretrain.main import pretrain

    run = tmp_path_factory.mktemp("pt")
    cfg = load_config(PretrainConfig, None, DATA + [
        f"data.shards={data / 'pretrain'}", f"run.dir={run}", "run.max_steps=3", "run.save_every=3",
        "model.name=videomae_test", "model.kwargs={patch_size: 8, tubelet_size: 2}", "optim.lr=1e-3"])
    pretrain(cfg)
    return run


def _ft_cfg(data, run_dir, *extra):
    return load_config(FinetuneConfig, None, DATA + [
        f"data.shards={data / 'train'}", f"data.val_shards={data / 'test'}", f"run.dir={run_dir}",
        "run.max_steps=3", "run.save_every=3", "optim.warmup_steps=1", "model.name=vit_test",
        "model.kwargs={patch_size: 8, tubelet_size: 2}", *extra])


def test_encoder_init_equals_pretrained_weights(data, pretrained, tmp_path):
    from safetensors.torch import load_file

    cfg = _ft_cfg(data, tmp_path / "ft", f"init={pretrained}", "model.kwargs={}")
    model, spec, how = build_model(cfg, num_classes=10)
    assert how.startswith("loaded") and isinstance(model, VideoClassifier)
    full = load_file(str(pretrained / "final" / "model.safetensors"))
    enc_sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
    mine = model.encoder.state_dict()
    # VideoMAE transfer: the pretraining token norm is dropped, a fresh fc_norm pools mean tokens
    assert set(mine) == {k for k in enc_sd if not k.startswith("norm.")} | {"fc_norm.weight", "fc_norm.bias"}
    for k, v in enc_sd.items():
        if not k.startswith("norm."):
            assert torch.equal(mine[k], v), k
    assert spec["arch"] == "encoder"


def test_layer_decay_groups(data, tmp_path):
    cfg = _ft_cfg(data, tmp_path / "ft")
    model, _, _ = build_model(cfg, num_classes=10)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    names = dict(model.named_parameters())
    scale_of = {}
    for g in groups:
        for p in g["params"]:
            n = next(k for k, v in names.items() if v is p)
            scale_of[n] = (g["lr_scale"], g["weight_decay"])
    depth = len(model.encoder.blocks)
    assert scale_of["head.weight"][0] == pytest.approx(1.0)
    assert scale_of["encoder.patch_embed.proj.weight"][0] == pytest.approx(0.75 ** (depth + 1))
    s0 = scale_of["encoder.blocks.0.mlp.fc1.weight"][0]
    s1 = scale_of[f"encoder.blocks.{depth - 1}.mlp.fc1.weight"][0]
    assert s0 < s1 < 1.0 and s1 == pytest.approx(0.75)
    # no weight decay on norms and biases, decay on matrices
    assert scale_of["encoder.blocks.0.norm1.weight"][1] == 0.0
    assert scale_of["encoder.blocks.0.attn.qkv.bias"][1] == 0.0
    assert scale_of["encoder.blocks.0.attn.qkv.weight"][1] == 0.05
    assert len(scale_of) == len(names)


def test_probes_freeze_the_encoder(data, tmp_path):
    for kind, cls in (("linear", LinearProbe), ("attentive", AttentiveProbe)):
        cfg = _ft_cfg(data, tmp_path / kind, f"head.kind={kind}")
        model, _, _ = build_model(cfg, num_classes=10)
        assert isinstance(model, cls)
        before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model.train()
        x = torch.randn(4, 3, 8, 32, 32)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        opt.step()
        assert not model.encoder.training
        assert all(not p.requires_grad for p in model.encoder.parameters())
        for k, v in model.encoder.state_dict().items():
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["cnn3d", "two_stream"])
def test_baseline_end_to_end_and_reload(data, tmp_path, name):
    run = tmp_path / name
    cfg = _ft_cfg(data, run, f"model.name={name}", "model.kwargs={}", "optim.layer_decay=1.0", "optim.lr=1e-3")
    results = finetune(cfg)
    assert results["init"] == "scratch" and results["eval_videos"] == 10 and results["eval_views"] == 2
    assert 0.0 <= results["top1"] <= 1.0 and results["params"] > 0
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["top1"] == results["top1"]
    assert (run / "confusion.png").stat().st_size > 1000
    model, cfg2, meta = load_finetuned(run)
    assert meta["num_classes"] == 10 and cfg2.model.name == name
    from safetensors.torch import load_file

    sd = load_file(str(run / "final" / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


def test_finetune_from_pretrained_run(data, pretrained, tmp_path):
    run = tmp_path / "vit"
    results = finetune(_ft_cfg(data, run, f"init={pretrained}", "model.kwargs={}", "head.mixup=0.8",
                               "head.cutmix=1.0", "head.random_erasing=0.25"))
    assert results["init"] == "pretrained" and results["eval_videos"] == 10
    hist = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and all(r["loss"] is not None and r["loss"] == r["loss"] for r in hist)


def test_evaluate_two_processes_counts_every_video_once(data, tmp_path):
    run = tmp_path / "ev"
    finetune(_ft_cfg(data, run, "model.name=cnn3d", "model.kwargs={}", "optim.layer_decay=1.0", "run.max_steps=1",
                     "run.save_every=1"))
    out = tmp_path / "ev2"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "launch", "evaluate",
           "--model", str(run), "--num-clips", "3", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_videos"] == 10 and ev["views_per_video"] == 3
    assert sum(map(sum, ev["confusion"])) == 10
