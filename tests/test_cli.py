"""The command line a user meets: one line on stderr and a non-zero exit for bad input (a traceback
only with --debug), overrides anywhere among the options, defaults in --help, nothing left behind
by a run that fails before its first checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main

REPO = Path(__file__).resolve().parents[1]


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("[tubelet]")
            and "it/s]" not in ln and "%|" not in ln]


def test_random_bytes_shard_is_one_line_and_leaves_no_run_dir(tmp_path, capsys):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(os.urandom(5000))
    run_dir = tmp_path / "run"
    # overrides before, between and after the options
    rc = main(["pretrain", f"data.shards={bad}", "--config", "synth_tiny", f"run.dir={run_dir}",
               "run.max_steps=2", "data.num_workers=0", "run.progress=false"])
    lines = _err_lines(capsys)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("tubelet pretrain: error: no readable samples") and "data.shards" in lines[0]
    assert "Traceback" not in lines[0]
    assert not run_dir.exists(), "a run that failed before its first checkpoint leaves nothing behind"


def test_failed_run_keeps_a_users_existing_directory(tmp_path, capsys):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(os.urandom(3000))
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    rc = main(["pretrain", "--config", "synth_tiny", f"data.shards={bad}", f"run.dir={run_dir}",
               "run.max_steps=2", "data.num_workers=0", "run.progress=false"])
    assert rc == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_missing_inputs_fail_before_anything_is_written(tmp_path, capsys):
    rc = main(["pretrain", "--config", "synth_tiny", f"data.shards={tmp_path / 'nowhere'}",
               f"run.dir={tmp_path / 'run'}"])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("tubelet pretrain: config error: data.shards:")
    assert not (tmp_path / "run").exists()
    rc = main(["finetune", "--init", str(tmp_path / "missing"), f"data.shards={tmp_path / 'nowhere'}",
               "head.num_classes=3", f"run.dir={tmp_path / 'ft'}"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and "tubelet finetune:" in lines[0] and "nowhere" in lines[0]
    assert not (tmp_path / "ft").exists()
    rc = main(["evaluate", "--model", str(tmp_path / "missing"), "--shards", str(tmp_path)])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and "missing" in lines[0] and "Traceback" not in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "launch", "evaluate", "--model", str(tmp_path / "missing"), "--shards", str(tmp_path)]
    quiet = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(args + ["--debug"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode != 0 and "Traceback" not in quiet.stderr and "--debug" in quiet.stderr
    assert loud.returncode != 0 and "Traceback (most recent call last)" in loud.stderr


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["shard", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 256)" in out and "(default: 8)" in out     # --shard-size, --keyint
    assert "--debug" in out


def test_compare_without_results_errs_on_stderr(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert "no results.json" in cap.err and "no results.json" not in cap.out


@pytest.mark.parametrize("stage,preset", [("pretrain", "synth_tiny"), ("finetune", "synth_vit")])
def test_config_show_documents_every_key_and_reads_back(stage, preset, tmp_path, capsys):
    """``tubelet config STAGE`` is the key reference: every key has its documentation above it,
    and the output is YAML that ``--config`` reads back into the same config."""
    from launch.config_cmd import config_class
    from pretrain.config import load_config, to_dict

    assert main(["config", stage, "--config", preset, "run.seed=3"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    keys = [i for i, ln in enumerate(lines) if ln.startswith("  ") and not ln.lstrip().startswith("#")]
    assert len(keys) > 40 and all(lines[i - 1].lstrip().startswith("#") for i in keys)
    (tmp_path / "c.yaml").write_text(text)
    cls = config_class(stage)
    assert to_dict(load_config(cls, tmp_path / "c.yaml")) == to_dict(load_config(cls, preset, ["run.seed=3"]))
    assert main(["config", stage, "--brief"]) == 0
    assert "#" not in capsys.readouterr().out.split("shards")[0]
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    assert f"tubelet config {stage}" in capsys.readouterr().out


def test_one_flag_name_per_idea_old_names_hidden(capsys):
    """``--model`` names the model a command reads (evaluate, extract); ``--workers`` the decoding
    processes. The old ``extract --encoder`` / ``--num-workers`` still parse but are not advertised."""
    from finetune import extract
    from pretrain.cli_util import build_parser, parse

    p = build_parser(extract, "tubelet extract")
    new = parse(p, ["--model", "m", "--shards", "s", "--out", "o.npy", "--workers", "3"])
    old = parse(p, ["--encoder", "m", "--shards", "s", "--out", "o.npy", "--num-workers", "3"])
    assert vars(new) == vars(old) and new.model == "m" and new.workers == 3
    text = p.format_help()
    assert "--model" in text and "--workers" in text and "--encoder" not in text and "--num-workers" not in text


def test_a_bad_flag_value_is_a_usage_error_not_a_config_error(tmp_path, capsys):
    assert main(["export", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()][0]
    assert line.startswith("tubelet export: usage error: --from:") and "does not exist" in line


@pytest.mark.parametrize("argv, start", [
    (["extract", "--model", "M", "--shards", "S", "--out", "o.npy", "--num-clips", "0"],
     "tubelet extract: usage error: --num-clips must be >= 1"),
    (["extract", "--model", "MISSING", "--shards", "S", "--out", "o.npy"], "tubelet extract: usage error: --model:"),
    (["evaluate", "--probe", "knn", "--model", "MISSING", "--shards", "S"], "tubelet evaluate: usage error: --model:"),
    (["evaluate", "--probe", "knn", "--model", "MISSING"], "tubelet evaluate: usage error: --probe needs --shards"),
    (["verify", "S", "--workers", "0"], "tubelet verify: usage error: --workers must be >= 1"),
    (["shard", "--input", "MISSING.csv", "--out", "OUT"], "tubelet shard: usage error: --input/--out:"),
    (["pretrain", "--config", "no_such_preset"], "tubelet pretrain: usage error: --config: no preset"),
])
def test_usage_errors_name_the_flag_in_one_line(argv, start, tmp_path, capsys, monkeypatch):
    """Every command reports a bad flag value as one ``usage error`` line (exit 2) and writes nothing."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []
