"""``tubelet shard`` and ``tubelet verify`` on real video files made here (good and broken ones)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_mp4
from launch.cli import main

GOOD = {"cats/c0.mp4": (48, 64), "cats/c1.mov": (48, 64), "dogs/d0.avi": (240, 320), "dogs/d1.webm": (32, 32)}
# file -> expected start of its rejected.csv reason (re-encoding mode)
BAD = {"dogs/trunc.mp4": "decode_failed", "dogs/garbage.mp4": "decode_failed", "dogs/zero.mp4": "empty",
       "dogs/text.mp4": "decode_failed", "dogs/audio.mkv": "no_video_stream", "cats/still.mp4": "too_short"}


def _audio_only_mkv() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        s.layout = "mono"
        for i in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            f.sample_rate, f.pts = 8000, i * 800
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """``root/in/{cats,dogs}/`` with the GOOD and BAD files, plus ``root/hang.mp4`` (a FIFO)."""
    root = tmp_path_factory.mktemp("videos")
    d = root / "in"
    codecs = {"mp4": "libx264", "mov": "libx264", "avi": "mpeg4", "webm": "libvpx"}
    for i, (name, size) in enumerate(GOOD.items()):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        make_mp4(d / name, frames=20, size=size, seed=i, codec=codecs[name.rsplit(".", 1)[1]])
    good = (d / "cats/c0.mp4").read_bytes()
    (d / "dogs/trunc.mp4").write_bytes(good[: len(good) // 2])  # moov atom (at the end) cut off
    (d / "dogs/garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (d / "dogs/zero.mp4").write_bytes(b"")
    (d / "dogs/text.mp4").write_text("just some text, renamed to .mp4\n" * 40)
    (d / "dogs/audio.mkv").write_bytes(_audio_only_mkv())
    import matplotlib.image

    matplotlib.image.imsave(d / "cats/still.mp4", np.random.default_rng(0).random((32, 32, 3)), format="png")
    (d / "cats/notes.txt").write_text("not a video extension: ignored in folder mode")
    os.mkfifo(root / "hang.mp4")  # open() blocks forever: a hanging input
    return root


def read_shards(d: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for t in sorted(d.glob("shard-*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext not in out.get(key, {}), f"duplicate {m.name}"
                out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def rejected(d: Path) -> dict[str, str]:
    with open(d / "rejected.csv") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def by_source(samples: dict) -> dict[str, tuple[dict, dict]]:
    return {json.loads(p["json"])["source"]: (json.loads(p["json"]), p) for p in samples.values()}


def test_shard_csv_names_reencode_rejects_and_verify(videos, tmp_path, capsys):
    lines = ["path,label"] + [f"in/{n},{n.split('/')[0]}" for n in [*GOOD, *BAD]] + \
        ["hang.mp4,dogs", "in/dogs/missing.mp4,dogs"]
    (videos / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["shard", "--input", str(videos / "list.csv"), "--out", str(out), "--short-side", "32",
               "--workers", "2", "--timeout", "5", "--shard-size", "2", "--no-progress"])
    assert rc == 0
    assert "ok 4 (4 new), rejected 8 (8 new)" in capsys.readouterr().out
    assert json.loads((out / "classes.json").read_text()) == ["cats", "dogs"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 4 and [s["num_samples"] for s in manifest["shards"]] == [2, 2]
    samples = by_source(read_shards(out))
    assert sorted(samples) == sorted(f"in/{n}" for n in GOOD)
    for name, (h, w) in GOOD.items():
        meta, parts = samples[f"in/{name}"]
        label = ["cats", "dogs"].index(name.split("/")[0])
        assert meta["label"] == label and int(parts["cls"]) == label and meta["label_name"] == name.split("/")[0]
        # short side scaled to 32 (never up), aspect kept, even sizes; all 20 frames at 8 fps
        exp = (32, 42) if min(h, w) > 32 else (h, w)
        assert (meta["height"], meta["width"], meta["num_frames"], meta["fps"]) == (*exp, 20, 8.0)
        assert "mp4" in parts and parts["mp4"][4:8] == b"ftyp"  # re-encoded to mp4 whatever came in
    rej = rejected(out)
    assert {p: r.split(":")[0] for p, r in rej.items()} == {
        **{f"in/{n}": r for n, r in BAD.items()}, "hang.mp4": "timeout (> 5 s)", "in/dogs/missing.mp4": "missing"}
    assert "moov atom not found" in rej["in/dogs/trunc.mp4"]
    assert main(["verify", str(out), "--no-progress", "--workers", "1"]) == 0


def test_shard_list_integer_labels_and_copy(videos, tmp_path):
    # VideoMAE/UCF101 style: "path label" lines with 1-based labels and a classInd.txt mapping
    (videos / "classInd.txt").write_text("1 cats\n2 dogs\n")
    (videos / "train.txt").write_text("".join(f"{n} {1 + n.startswith('dogs')}\n" for n in [*GOOD, "dogs/zero.mp4"]))
    out = tmp_path / "named"
    assert main(["shard", "--input", str(videos / "train.txt"), "--root", str(videos / "in"), "--classes",
                 str(videos / "classInd.txt"), "--out", str(out), "--copy", "--workers", "1", "--no-progress"]) == 0
    assert json.loads((out / "classes.json").read_text()) == ["cats", "dogs"]
    samples = by_source(read_shards(out))
    for name in GOOD:
        meta, parts = samples[name]
        assert meta["label"] == int(parts["cls"]) == (1 if name.startswith("dogs") else 0)
        ext = name.rsplit(".", 1)[1]
        assert parts[ext] == (videos / "in" / name).read_bytes()  # --copy: original bytes, original container
        assert meta["num_frames"] == 20
    assert rejected(out) == {"dogs/zero.mp4": "empty: zero-byte file"}

    # 0-based integers without a mapping: class names are the integers
    (videos / "ints.txt").write_text("".join(f"{videos / 'in' / n} {int(n.startswith('dogs'))}\n" for n in GOOD))
    out = tmp_path / "ints"
    assert main(["shard", "--input", str(videos / "ints.txt"), "--out", str(out), "--copy", "--no-progress"]) == 0
    assert json.loads((out / "classes.json").read_text()) == ["0", "1"]
    metas = [m for m, _ in by_source(read_shards(out)).values()]
    assert sorted((m["label"], m["label_name"]) for m in metas) == [(0, "0"), (0, "0"), (1, "1"), (1, "1")]


def test_shard_folder_layout(videos, tmp_path):
    out = tmp_path / "folder"
    assert main(["shard", "--input", str(videos / "in"), "--out", str(out), "--short-side", "0",
                 "--workers", "2", "--no-progress"]) == 0
    assert json.loads((out / "classes.json").read_text()) == ["cats", "dogs"]
    samples = by_source(read_shards(out))
    assert sorted(samples) == sorted(GOOD)  # sources relative to the folder; notes.txt ignored
    assert all(samples[n][0]["height"] == GOOD[n][0] for n in GOOD)  # --short-side 0 keeps the size
    assert {p: r.split(":")[0] for p, r in rejected(out).items()} == BAD


def _shard_csv(videos, names, out, *extra):
    (videos / "part.csv").write_text("".join(f"in/{n},{n.split('/')[0]}\n" for n in names))
    return main(["shard", "--input", str(videos / "part.csv"), "--out", str(out), "--short-side", "32",
                 "--shard-size", "2", "--workers", "1", "--no-progress", *extra])


def test_shard_resume_appends_and_never_duplicates(videos, tmp_path, capsys):
    out = tmp_path / "resume"
    names = ["cats/c0.mp4", "dogs/d0.avi", "cats/c1.mov", "dogs/d1.webm", "dogs/zero.mp4"]
    assert _shard_csv(videos, names[:2], out) == 0  # the first two (both classes) ...
    first = json.loads((out / "manifest.json").read_text())
    assert first["num_samples"] == 2
    # an interrupted later run: a half-written shard on disk and a torn journal line
    (out / "shard-000001.tar").write_bytes(b"partial")
    with open(out / "journal.jsonl", "a") as f:
        f.write('{"type": "shard", "name": "shard-000001.t')
    capsys.readouterr()
    assert _shard_csv(videos, names, out) == 0  # ... then all: the same command resumed
    assert "ok 4 (2 new), rejected 1 (1 new)" in capsys.readouterr().out
    second = json.loads((out / "manifest.json").read_text())
    assert second["shards"][0] == first["shards"][0]  # finished shards are kept as they were
    assert second["num_samples"] == 4 and len(read_shards(out)) == 4
    assert sorted(by_source(read_shards(out))) == sorted(f"in/{n}" for n in GOOD)
    assert main(["verify", str(out), "--no-progress", "--workers", "1"]) == 0
    assert _shard_csv(videos, names, out) == 0  # nothing left to do
    assert "ok 4 (0 new), rejected 1 (0 new)" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text()) == second
    assert _shard_csv(videos, names, out, "--keyint", "2") == 2  # other settings: refuse to mix


def test_shard_retry_rejected(tmp_path, capsys):
    (tmp_path / "late.mp4").write_bytes(b"")  # e.g. still being copied when the first run saw it
    make_mp4(tmp_path / "early.mp4")
    (tmp_path / "list.txt").write_text("early.mp4\nlate.mp4\n")  # no labels: an unlabeled shard set
    cmd = ["shard", "--input", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out"), "--workers", "1",
           "--no-progress"]
    assert main(cmd) == 0
    assert rejected(tmp_path / "out") == {"late.mp4": "empty: zero-byte file"}
    make_mp4(tmp_path / "late.mp4", seed=1)
    assert main(cmd) == 0  # rejections are final by default ...
    assert "ok 1 (0 new), rejected 1 (0 new)" in capsys.readouterr().out
    assert main(cmd + ["--retry-rejected"]) == 0  # ... unless asked
    assert "ok 2 (1 new), rejected 0 (0 new)" in capsys.readouterr().out
    assert rejected(tmp_path / "out") == {}
    metas = [json.loads(p["json"]) for p in read_shards(tmp_path / "out").values()]
    assert sorted(m["source"] for m in metas) == ["early.mp4", "late.mp4"]
    assert all(m["label"] is None and m["label_name"] is None for m in metas)
    assert not (tmp_path / "out" / "classes.json").exists()
    assert main(cmd) == 0 and "ok 2 (0 new), rejected 0 (0 new)" in capsys.readouterr().out


def test_verify_exit_codes(synth_dir, tmp_path, capsys):
    good = tmp_path / "good"
    shutil.copytree(synth_dir / "val", good)
    assert main(["verify", str(good), "--no-progress", "--workers", "1"]) == 0
    assert "20 ok, 0 bad" in capsys.readouterr().out

    # one mp4 payload overwritten with garbage inside an otherwise valid tar
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    with tarfile.open(bad / "shard-000001.tar") as tf:
        m = tf.getmember("val_000009.mp4")
    with open(bad / "shard-000001.tar", "r+b") as f:
        f.seek(m.offset_data)
        f.write(b"\x00" * m.size)
    assert main(["verify", str(bad), "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "bad: shard-000001.tar/val_000009: open_failed" in out
    assert "shard-000001.tar: sha256 differs from manifest.json" in out and "19 ok, 1 bad" in out

    # a tar cut inside a member, and a shard the manifest lists but that is gone
    cut = tmp_path / "cut"
    shutil.copytree(good, cut)
    data = (cut / "shard-000000.tar").read_bytes()
    (cut / "shard-000000.tar").write_bytes(data[: len(data) // 3])
    (cut / "shard-000002.tar").unlink()
    assert main(["verify", str(cut), "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "shard-000000.tar: unreadable after" in out and "shard-000002.tar: listed in manifest.json but missing" in out

    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert main(["verify", str(tmp_path / "nowhere"), "--no-progress"]) == 2


def test_shard_exits_non_zero_when_nothing_was_written(videos, tmp_path, capsys):
    out = tmp_path / "none"
    assert _shard_csv(videos, ["dogs/zero.mp4"], out) == 1
    err = capsys.readouterr().err
    assert "no video written: all 1 input(s) rejected" in err and "rejected.csv" in err
    assert list(rejected(out).values()) == ["empty: zero-byte file"]
