"""Encoder directories, Hugging Face style (pretrain/models/pretrained.py): ``save_pretrained`` /
``from_pretrained`` round trips bit for bit, the version-2 config.json says each thing once
(``model_type`` + ``architectures``, no import path, no duplicated geometry, no nulls, no absolute
path), and version-1 directories written by the old exporter still load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from _interop_util import randomize, tiny_vit, video_input
from pretrain.models import MViT, VideoViT, create_model
from pretrain.models import pretrained as pt

V2_KEYS = {"format", "format_version", "tubelet_version", "model_type", "architectures", "model", "model_kwargs",
           "mean", "std", "sampling_rate", "head", "source"}


def _mvit():
    return randomize(create_model("mvitv2_test", num_frames=4, img_size=32))


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = video_input(a)
    with torch.no_grad():
        assert torch.equal(a.forward_features(x), b.forward_features(x))
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("make,cls,model_type", [(tiny_vit, VideoViT, "tubelet_vit"), (_mvit, MViT, "tubelet_mvitv2")])
def test_save_pretrained_round_trip(make, cls, model_type, tmp_path):
    enc = make()
    out = enc.save_pretrained(tmp_path / "enc", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), sampling_rate=3)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "tubelet-encoder" and cfg["format_version"] == 2
    assert cfg["model_type"] == model_type == cls.model_type == enc.model_type
    assert cfg["architectures"] == [cls.__name__]
    assert cfg["model_kwargs"] == enc.model_config
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3 and cfg["sampling_rate"] == 3
    # each thing once: no import path, no geometry outside the constructor kwargs, no placeholders
    assert set(cfg) <= V2_KEYS and not {"class", "data", "num_frames", "img_size", "embed_dim"} & set(cfg)
    assert None not in cfg.values() and "model" not in cfg and "head" not in cfg and "source" not in cfg
    from safetensors.torch import load_file

    assert set(load_file(str(out / "model.safetensors"))) == set(enc.state_dict())
    back = cls.from_pretrained(out)
    assert type(back) is cls and not back.training
    _assert_same(enc, back)
    _assert_same(enc, pt.PretrainedMixin.from_pretrained(out))  # the mixin itself: whatever class it holds


def test_from_pretrained_refuses_another_class_and_wrong_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    _mvit().save_pretrained(tmp_path / "mvit")
    with pytest.raises(ValueError, match="holds a MViT .tubelet_mvitv2., not a VideoViT"):
        VideoViT.from_pretrained(tmp_path / "mvit")
    enc = tiny_vit()
    d = enc.save_pretrained(tmp_path / "vit")
    f = d / "model.safetensors"
    sd = load_file(str(f))
    key = "patch_embed.proj.weight"
    assert key in sd
    save_file({k: v for k, v in sd.items() if k != key}, str(f))
    with pytest.raises(ValueError, match=r"missing \(1\): \['patch_embed.proj.weight'\]"):
        VideoViT.from_pretrained(d)
    save_file({**sd, "extra.weight": torch.zeros(2)}, str(f))
    with pytest.raises(ValueError, match=r"unexpected \(1\): \['extra.weight'\]"):
        VideoViT.from_pretrained(d)
    save_file({**sd, key: torch.zeros(3)}, str(f))
    with pytest.raises(ValueError, match=r"does not match VideoViT.*wrong shape \(1\): \['patch_embed.proj.weight"):
        VideoViT.from_pretrained(d)


def test_config_refusals(tmp_path):
    d = tiny_vit().save_pretrained(tmp_path / "e")
    cfg = json.loads((d / "config.json").read_text())
    for change, why in (({"model_type": "os:system"}, "is not a tubelet encoder"),
                        ({"architectures": ["MViT"]}, "do not match model_type"),
                        ({"format_version": 3}, "newer than this tubelet reads"),
                        ({"format": "tubelet-classifier"}, "not 'tubelet-encoder'")):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=why):
            VideoViT.from_pretrained(d)


def test_model_type_table_is_the_one_definition():
    for model_type, path in pt.MODEL_TYPES.items():
        cls = pt.encoder_class(model_type)
        assert f"{cls.__module__}:{cls.__qualname__}" == path
        assert issubclass(cls, pt.PretrainedMixin) and cls.model_type == model_type

    class Custom(VideoViT):
        pass

    assert not hasattr(Custom, "model_type")          # a class outside the table has none ...
    with pytest.raises(TypeError, match="has no model_type"):
        Custom(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=1, num_heads=2).save_pretrained("x")


def test_portable_source():
    f = pt.portable_source
    assert f("/home/me/runs/tiny/final") == "tiny/final"
    assert f("checkpoint /tmp/a b/run/checkpoints/step_00000002") == "checkpoint run/checkpoints/step_00000002"
    assert f("Hugging Face /data/models/videomae-base") == "Hugging Face videomae-base"
    assert f("VideoMAE checkpoint C:\\ckpts\\vit_b.pth") == "VideoMAE checkpoint vit_b.pth"
    assert f("runs/tiny") == "runs/tiny" and f("pretrainer MaskedAutoencoder") == "pretrainer MaskedAutoencoder"
    assert f("") == "" and f(None) == ""


def test_exports_record_no_absolute_path(tmp_path):
    from finetune.interop.native import save_encoder
    from launch.cli import main as tubelet

    save_encoder(tiny_vit(), tmp_path / "a", source=str(tmp_path / "ckpts" / "vit.pth"))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["source"] == "vit.pth"
    assert tubelet(["export", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    text = (tmp_path / "b" / "config.json").read_text()
    assert json.loads(text)["source"] == "encoder a" and str(tmp_path) not in text


# ------------------------------------------------------------------------------------------------
# version 1: directories written before format_version 2


def _v1_config(enc, cls_path: str, **over) -> dict:
    """config.json exactly as the version-1 exporter wrote it (finetune/interop/native.py before
    format_version 2): import path, geometry three times, nulls for absent fields, absolute source."""
    mc = enc.model_config
    geom = {"num_frames": mc["num_frames"], "img_size": mc["img_size"][0]}
    cfg = {"format": "tubelet-encoder", "format_version": 1, "tubelet_version": "0.1.0", "class": cls_path,
           "model": None, "model_kwargs": mc, **geom, "embed_dim": enc.embed_dim,
           "mean": [0.45, 0.45, 0.45], "std": [0.225, 0.225, 0.225],
           "data": {**geom, "sampling_rate": 3}, "head": None, "source": "encoder /home/someone/runs/x/final"}
    return {**cfg, **over}


def _write_v1(d, enc, cls_path, **over):
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(_v1_config(enc, cls_path, **over), indent=1, sort_keys=False) + "\n")
    return d


@pytest.mark.parametrize("make,cls_path", [(tiny_vit, "pretrain.models.vit:VideoViT"),
                                           (_mvit, "pretrain.models.mvit:MViT")])
def test_version1_directory_loads(make, cls_path, tmp_path):
    import tubelet
    from finetune.interop.sources import open_source

    enc = make()
    d = _write_v1(tmp_path / "v1", enc, cls_path)
    back = tubelet.load_encoder(d)
    assert type(back) is type(enc) and not back.training
    _assert_same(enc, back)
    _assert_same(enc, type(enc).from_pretrained(d))
    src = open_source(d)
    assert src.mean == (0.45,) * 3 and src.std == (0.225,) * 3 and src.name is None
    assert src.data == {"num_frames": 4, "img_size": 32, "sampling_rate": 3}
    # re-exported: version 2, the same weights and data-side fields
    from finetune.interop.native import save_source

    cfg = json.loads((save_source(src, tmp_path / "v2") / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["model_type"] == type(enc).model_type and "class" not in cfg
    assert cfg["sampling_rate"] == 3 and cfg["mean"] == [0.45] * 3 and cfg["source"] == "encoder v1"
    _assert_same(enc, tubelet.load_encoder(tmp_path / "v2"))


def test_version1_refusals_and_classifier_head(tmp_path):
    from safetensors.torch import save_file

    import tubelet
    from finetune.interop.sources import open_source

    enc = tiny_vit()
    bad = _write_v1(tmp_path / "bad", enc, "os:system")
    with pytest.raises(ValueError, match="not a tubelet model class"):
        tubelet.load_encoder(bad)
    # an imported classifier (version 1): head.safetensors + "head": {"num_classes", "labels"}
    d = _write_v1(tmp_path / "cls", enc, "pretrain.models.vit:VideoViT", model="vit_test",
                  head={"num_classes": 2, "labels": ["a", "b"]})
    save_file({"weight": torch.ones(2, 64), "bias": torch.zeros(2)}, str(d / "head.safetensors"))
    src = open_source(d)
    assert src.kind == "classification" and src.labels == ["a", "b"] and src.name == "vit_test"
    assert torch.equal(src.head["weight"], torch.ones(2, 64))


def test_version1_classifier_spec_builds(tmp_path):
    """A fine-tuning result's spec["encoder"] written by the version-1 encoder_config still rebuilds,
    and so does the version-2 one (same signature of encoder_config / build_from_config)."""
    from safetensors.torch import save_file

    from finetune.interop.native import build_from_config, encoder_config
    from finetune.interop.sources import open_source

    enc = tiny_vit()
    v1 = _v1_config(enc, "pretrain.models.vit:VideoViT", model="vit_test")
    v2 = encoder_config(enc, name="vit_test", mean=(0.45,) * 3, std=(0.225,) * 3)
    assert v2["model_type"] == "tubelet_vit" and v2["model"] == "vit_test"
    for spec_enc in (v1, v2):
        assert build_from_config(spec_enc).model_config == enc.model_config
        d = tmp_path / f"ft{spec_enc['format_version']}"
        d.mkdir()
        meta = {"format": "tubelet-classifier", "spec": {"arch": "encoder", "head": "linear", "head_kwargs": {},
                                                         "encoder": spec_enc}, "classes": ["a", "b"]}
        (d / "config.json").write_text(json.dumps(meta))
        save_file({f"encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()}, str(d / "model.safetensors"))
        src = open_source(d)
        assert src.mean == (0.45,) * 3
        _assert_same(enc, src.encoder.eval())


def test_pretrain_never_imports_finetune(tmp_path):
    """save_pretrained / from_pretrained are pretrain's own: no finetune module gets imported."""
    code = ("import sys, torch; from pretrain.models import VideoViT; "
            "m = VideoViT(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=1, num_heads=2); "
            f"m.save_pretrained({str(tmp_path / 'e')!r}); VideoViT.from_pretrained({str(tmp_path / 'e')!r}); "
            "bad = sorted(k for k in sys.modules if k.split('.')[0] == 'finetune'); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
