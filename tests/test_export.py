"""Native export is bitwise, from every source (run final/, plain and DeepSpeed ZeRO checkpoints);
ONNX matches onnxruntime with a dynamic batch; HF export refuses what VideoMAE cannot express."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from _interop_util import randomize, tiny_vit, video_input, write_shards
from finetune.interop.hf import HFConversionError, export_hf
from finetune.interop.native import save_encoder
from finetune.interop.onnx import export_onnx
from finetune.interop.sources import load_encoder
from launch.cli import main as tubelet


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for (na, ba), (nb, bb) in zip(a.named_buffers(), b.named_buffers()):  # non-persistent (pos_embed) too
        assert na == nb and torch.equal(ba, bb), na


def _encoders():
    from pretrain.models import create_model

    return {
        "vit": lambda: tiny_vit(),
        "vit_divided_cls_layerscale_3d": lambda: tiny_vit(attn_type="divided", class_token=True, init_values=0.1,
                                                          pos_embed_type="sincos_3d", use_mean_pooling=False),
        "mvit": lambda: randomize(create_model("mvitv2_test", num_frames=4, img_size=32)),
        "vit_rgb_diff": lambda: tiny_vit(input_mode="rgb_diff"),
    }


@pytest.mark.parametrize("which", list(_encoders()))
def test_native_round_trip_is_bitwise(which, tmp_path):
    torch.manual_seed(0)
    enc = _encoders()[which]()
    save_encoder(enc, tmp_path / "a", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), data={"sampling_rate": 3})
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["format"] == "tubelet-encoder" and cfg["format_version"] == 2
    assert cfg["model_type"] == type(enc).model_type and cfg["architectures"] == [type(enc).__name__]
    assert cfg["model_kwargs"] == enc.model_config and cfg["model_kwargs"]["num_frames"] == 4
    assert cfg["mean"] == [0.5] * 3 and cfg["sampling_rate"] == 3
    assert not {"class", "data", "num_frames", "img_size", "embed_dim"} & set(cfg) and None not in cfg.values()
    back = load_encoder(tmp_path / "a")
    assert type(back) is type(enc) and not back.training
    _assert_same_model(enc, back)
    x = video_input(enc)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(x), back.forward_features(x))
        assert torch.equal(enc(x), back(x))
    # re-export through the command line: still the same bits
    assert tubelet(["export", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    _assert_same_model(enc, load_encoder(tmp_path / "b"))
    text = (tmp_path / "b" / "config.json").read_text()
    cfg_b = json.loads(text)
    assert cfg_b["mean"] == [0.5] * 3 and cfg_b["sampling_rate"] == 3
    assert cfg_b["source"] == "encoder a" and str(tmp_path) not in text  # no path of the writer's machine


def test_native_refuses_foreign_class(tmp_path):
    save_encoder(tiny_vit(), tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    for change, why in (({"model_type": "os:system"}, "not a tubelet encoder"),
                        # a version-1 config names its class by import path: only tubelet's encoders
                        ({"format_version": 1, "class": "os:system"}, "not a tubelet model class")):
        other = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")} if "class" in change else cfg
        (tmp_path / "e" / "config.json").write_text(json.dumps({**other, **change}))
        with pytest.raises(ValueError, match=why):
            load_encoder(tmp_path / "e")


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_export_from_deepspeed_run(stage, tmp_path):
    """A real 2-step `tubelet pretrain` with DeepSpeed ZeRO on CPU; the encoder of its final/, of its
    newest ZeRO checkpoint (consolidated) and of the run dir are the same bits."""
    write_shards(tmp_path / "shards", 6)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch", "pretrain", f"data.shards={tmp_path / 'shards'}", f"run.dir={run}",
           "data.num_frames=4", "data.img_size=32", "data.sampling_rate=2", "data.batch_size=2",
           "data.num_workers=0", "model.name=videomae_test", "model.kwargs.patch_size=8", "run.max_steps=2",
           "run.save_every=1", "run.tracker=none", "run.progress=false", "run.vis_every=0",
           "dist.deepspeed=true", f"dist.zero_stage={stage}"]
    env = {**__import__("os").environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "step_00000002"
    assert any((ckpt / "ds").glob("*optim_states.pt"))  # really ZeRO shards

    from safetensors.torch import load_file

    final = load_file(str(run / "final" / "model.safetensors"))
    ref = {k[len("encoder."):]: v for k, v in final.items() if k.startswith("encoder.")}
    for src in (run, ckpt):
        assert tubelet(["export", "--from", str(src), "--out", str(tmp_path / f"out_{src.name}")]) == 0
        enc = load_encoder(tmp_path / f"out_{src.name}")
        sd = enc.state_dict()
        assert set(sd) == set(ref)
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
        text = (tmp_path / f"out_{src.name}" / "config.json").read_text()
        cfg = json.loads(text)
        assert cfg["model_type"] == "tubelet_vit" and cfg["model"] == "vit_test" and cfg["sampling_rate"] == 2
        assert cfg["model_kwargs"]["num_frames"] == 4 and cfg["model_kwargs"]["img_size"] == [32, 32]
        assert str(tmp_path) not in text
    first = load_encoder(run / "checkpoints" / "step_00000001").state_dict()
    assert not all(torch.equal(first[k], ref[k]) for k in ref)  # a different checkpoint, different weights
    if stage == 2:
        # the whole pretrainer: warm start of a fresh model from the run, and out to HF with its decoder
        from pretrain.config import PretrainConfig, load_config
        from pretrain.main import build_model, load_init

        mae = build_model(load_config(PretrainConfig, run / "config.yaml"))
        assert load_init(mae, str(run)) == len(final)
        assert all(torch.equal(v, final[k]) for k, v in mae.state_dict().items())
        args = ["export", "--from", str(run), "--out", str(tmp_path / "hf_pt"), "--format", "hf", "--with-decoder"]
        assert tubelet(args) == 0


def test_onnx_parity_dynamic_batch(tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    enc = tiny_vit(use_mean_pooling=True)
    save_encoder(enc, tmp_path / "enc")
    assert tubelet(["export", "--from", str(tmp_path / "enc"), "--out", str(tmp_path / "o"), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "batch 2: max |onnxruntime - torch|" in out and "batch 3: max |onnxruntime - torch|" in out
    path = tmp_path / "o" / "encoder.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["num_frames"] == 4 and len(meta["mean"]) == 3
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = video_input(enc, batch=5, seed=7)
    tokens, feats = sess.run(None, {"video": x.numpy()})
    with torch.no_grad():
        t_ref = enc.forward_features(x)
        f_ref = enc(x)
    diff = max(float((torch.from_numpy(tokens) - t_ref).abs().max()),
               float((torch.from_numpy(feats) - f_ref).abs().max()))
    print(f"onnx batch 5: max abs diff {diff:.3e}")
    assert tokens.shape == (5, 32, 64) and feats.shape == (5, 64) and diff <= 1e-4


@pytest.mark.parametrize("which", [pytest.param("mvit", marks=pytest.mark.slow), "vit_divided_cls_layerscale_3d",
                                   "vit_rgb_diff"])
def test_onnx_parity_other_encoders(which, tmp_path):
    rep = export_onnx(_encoders()[which](), tmp_path / "e.onnx", batch_sizes=(2, 1))
    assert set(rep["max_abs_diff"]) == {2, 1} and max(rep["max_abs_diff"].values()) <= 1e-4


def test_onnx_check_fails_loudly(tmp_path):
    with pytest.raises(RuntimeError, match="differs from PyTorch by"):
        export_onnx(tiny_vit(), tmp_path / "x.onnx", batch_sizes=(2,), atol=1e-12)


@pytest.mark.parametrize("kw,why", [
    (dict(attn_type="divided"), "attn_type='divided'"),
    (dict(use_mean_pooling=False), "class token"),
    (dict(init_values=0.1), "LayerScale"),
    (dict(pos_embed_type="sincos_3d"), "sincos_3d"),
    (dict(input_mode="rgb_diff"), "input_mode='rgb_diff'"),
])
def test_hf_refuses_what_it_cannot_express(kw, why, tmp_path, capsys):
    save_encoder(tiny_vit(**kw), tmp_path / "e")
    assert tubelet(["export", "--from", str(tmp_path / "e"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "cannot express" in err and why in err
    assert not (tmp_path / "hf").exists()


def test_hf_refuses_mvit(tmp_path):
    from pretrain.models import create_model

    with pytest.raises(HFConversionError, match="only VideoViT"):
        export_hf(create_model("mvitv2_test", num_frames=4, img_size=32), tmp_path / "hf")


def test_cli_bad_sources_are_one_line(tmp_path, capsys):
    """`tubelet export` / `tubelet import` on a path that holds nothing they can read: one line on
    stderr naming the cause, exit 2, nothing written; --debug raises instead."""
    from pretrain.config import ConfigError

    missing = tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)     # a run that never saved a checkpoint
    save_encoder(tiny_vit(), tmp_path / "enc")
    out = tmp_path / "out"
    cases = [
        (["export", "--from", str(missing)], "does not exist"),
        (["import", "--from", str(missing)], "does not exist"),
        (["export", "--from", str(tmp_path / "empty")], "not an encoder directory, run directory"),
        (["export", "--from", str(tmp_path / "bert")], "not an encoder directory, run directory"),
        (["export", "--from", str(tmp_path / "run")], "without final/ or any complete checkpoint"),
        (["import", "--from", str(tmp_path / "empty")], "not a Hugging Face VideoMAE directory"),
        (["import", "--from", str(tmp_path / "enc")], "need no import"),           # a tubelet export
        (["export", "--from", str(tmp_path / "enc"), "--format", "hf", "--with-decoder"], "holds no decoder"),
    ]
    for args, why in cases:
        rc = tubelet(args + ["--out", str(out)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, (args, err)
        assert lines[0].startswith(f"tubelet {args[0]}: ") and why in lines[0], (args, err)
        assert "Traceback" not in err and not out.exists()
    with pytest.raises(ConfigError, match="does not exist"):
        tubelet(["export", "--from", str(missing), "--out", str(out), "--debug"])
