"""Checkpoints are read without ever running a pickle: payloads are refused, by file name, unexecuted."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from finetune.interop.safe_load import (UnsafeCheckpointError, forced_weights_only, read_state_dict, screen,
                                        torch_load, unwrap_state_dict)


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_files(tmp_path):
    """The same payload as a raw pickle (old and new protocol) and inside a torch.save zip."""
    marker = tmp_path / "PWNED"
    sd = {"patch_embed.proj.weight": torch.zeros(4, 3, 2, 8, 8)}
    files = {}
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        f = tmp_path / f"raw_p{proto}.pth"
        f.write_bytes(pickle.dumps({"model": sd, "x": Payload(marker)}, protocol=proto))
        files[f"raw{proto}"] = f
    f = tmp_path / "zip.pt"
    torch.save({"model": sd, "args": Payload(marker)}, f)
    files["zip"] = f
    return marker, files


def test_payload_refused_and_never_runs(evil_files):
    marker, files = evil_files
    for f in files.values():
        with pytest.raises(UnsafeCheckpointError) as e:
            torch_load(f)
        assert str(f) in str(e.value)
        with pytest.raises(UnsafeCheckpointError):
            read_state_dict(f)
        with pytest.raises(UnsafeCheckpointError, match=str(f.name)):
            screen(f)  # the opcode scan used on DeepSpeed shards before DeepSpeed reads them
    assert not marker.exists()
    # the reason names the forbidden callable where PyTorch can see it
    with pytest.raises(UnsafeCheckpointError, match="system"):
        torch_load(files["zip"])


def test_forced_weights_only_covers_third_party_loads(evil_files):
    """Code that asks for weights_only=False (DeepSpeed's zero_to_fp32) still gets the safe unpickler."""
    marker, files = evil_files
    with forced_weights_only():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(files["zip"], map_location="cpu", weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored


def test_cli_refuses_payload_in_every_input(evil_files, tmp_path, capsys):
    """`tubelet import` / `export` / `extract` on the payload: exit 2, file named, marker absent."""
    marker, files = evil_files
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001" / "ds"  # a DeepSpeed checkpoint with a payload
    ckpt.mkdir(parents=True)
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(files["zip"].read_bytes())
    (ckpt.parent / "model.safetensors").unlink(missing_ok=True)
    cfg_json = ckpt.parent / "config.json"
    cfg_json.write_text('{"model": "videomae_test", "model_kwargs": {"num_frames": 4, "img_size": 32}}')
    runs = [
        ["import", "--from", str(files["zip"]), "--out", str(tmp_path / "o1")],
        ["export", "--from", str(files["raw2"]), "--out", str(tmp_path / "o2")],
        ["export", "--from", str(ckpt.parent), "--out", str(tmp_path / "o3")],
        ["extract", "--encoder", str(files["raw2"]), "--shards", str(tmp_path), "--out", str(tmp_path / "f.npy")],
    ]
    from launch.cli import main

    for args in runs:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert "refused to load" in err and str(tmp_path) in err and ".pt" in err, err
    assert not marker.exists()


def test_benign_checkpoints_load(tmp_path):
    """VideoMAE saves its argparse.Namespace next to the weights: that is allowed, and unwrapped."""
    sd = {"encoder.blocks.0.attn.q_bias": torch.arange(4.0), "_orig_mod.x": torch.ones(2)}
    f = tmp_path / "ok.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="vit_b", lr=1e-3), "epoch": 3}, f)
    obj = torch_load(f)
    assert obj["args"].model == "vit_b" and obj["epoch"] == 3
    got = read_state_dict(f)
    assert set(got) == {"encoder.blocks.0.attn.q_bias", "x"}
    assert torch.equal(got["encoder.blocks.0.attn.q_bias"], torch.arange(4.0))
    # DeepSpeed nests under "module", DDP prefixes "module."
    nested = unwrap_state_dict({"module": {"module.a": torch.zeros(1)}, "ds_version": "0.19"})
    assert list(nested) == ["a"]
    with pytest.raises(ValueError, match="no state dict"):
        unwrap_state_dict({"epoch": 1}, "x.pth")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        torch_load(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"123")
    with pytest.raises(ValueError, match="w.npz"):
        read_state_dict(tmp_path / "w.npz")
