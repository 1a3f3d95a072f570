"""The trainer's small parts on their own: one log interval (sums, means, checkpoint form), the
metrics writer (metrics.jsonl, the data-wait warning), the non-finite policy (counting, stopping,
resetting, checkpoint form), and the Runtime interface."""

from __future__ import annotations

import json

import pytest

from pretrain.train.metrics import Interval, MetricsWriter
from pretrain.train.nonfinite import NonFinitePolicy
from pretrain.train.runtime import DeepSpeedRuntime, Runtime, TorchRuntime
from pretrain.train.trainer import NonFiniteError


def test_interval_means_and_none_where_nothing_was_measured():
    iv = Interval()
    assert iv.record(5, None, 0, 0)["loss"] is None
    iv.add_step(lr=1e-3, clips=8, seconds=0.5, wait=0.1)
    iv.add_good(loss=2.0, metrics={"acc": 0.25}, grad_norm=3.0)
    iv.add_step(lr=2e-3, clips=8, seconds=1.5, wait=0.3)
    iv.add_good(loss=1.0, metrics={"acc": 0.75}, grad_norm=float("nan"))  # norm unknown: left out
    iv.add_step(lr=3e-3, clips=8, seconds=2.0, wait=0.0)                 # a skipped step: no loss
    rec = iv.record(step=3, epoch=0.5, skipped_samples=2.0, nonfinite_steps=1)
    assert rec == {"step": 3, "epoch": 0.5, "loss": 1.5, "lr": 3e-3, "grad_norm": 3.0, "acc": 0.5,
                   "clips_per_s": 24 / 4.0, "data_wait": pytest.approx(0.4 / 4.0), "skipped_samples": 2,
                   "nonfinite_steps": 1}
    assert list(rec)[:5] == ["step", "epoch", "loss", "lr", "grad_norm"]
    assert isinstance(rec["skipped_samples"], int)

    only_bad = Interval()
    only_bad.add_step(lr=1e-3, clips=8, seconds=1.0, wait=0.0)
    rec = only_bad.record(1, None, 0, 1)
    assert rec["loss"] is None and rec["grad_norm"] is None and rec["clips_per_s"] == 8.0


def test_interval_checkpoint_form_round_trips_and_reads_old_checkpoints():
    # the dict the trainer saved in trainer.json before Interval existed ("lr" only after a step)
    old_fresh = {"n": 0, "loss_sum": 0.0, "loss_n": 0, "grad_norm_sum": 0.0, "grad_norm_n": 0, "metrics": {},
                 "clips": 0, "time": 0.0, "wait": 0.0}
    assert Interval().to_dict() == old_fresh and list(Interval().to_dict()) == list(old_fresh)
    old = {**old_fresh, "n": 2, "loss_sum": 1.5, "loss_n": 2, "metrics": {"acc": 0.9}, "clips": 16, "time": 0.7,
           "wait": 0.1, "lr": 1e-4}
    iv = Interval.from_dict(json.loads(json.dumps(old)))
    assert iv.to_dict() == old and list(iv.to_dict()) == list(old)
    aliased = Interval.from_dict(old)
    aliased.add_good(loss=0.5, metrics={"acc": 0.1}, grad_norm=1.0)
    assert old["metrics"] == {"acc": 0.9}, "from_dict must not alias the checkpoint's dict"
    iv.add_good(loss=0.5, metrics={"acc": 0.1}, grad_norm=1.0)
    assert Interval.from_dict(iv.to_dict()) == iv


def test_policy_stops_after_max_consecutive_and_resets_after_a_good_step():
    p = NonFinitePolicy(max_nonfinite=3)
    for _ in range(2):
        p.observe(bad=True)
    assert not p.exhausted and p.in_a_row == 2
    p.observe(bad=False)                               # a good step resets the run of bad ones
    assert p.in_a_row == 0 and p.total == 2 and not p.exhausted
    for i in range(3):
        p.observe(bad=True)
        assert p.exhausted == (i == 2)
    assert p.skip_message(7, "loss") == ("step 7: non-finite loss; step skipped (no update), 3 in a row "
                                         "(limit run.max_nonfinite=3)")
    err = p.error(7, "/run/checkpoints/step_00000004")
    assert isinstance(err, NonFiniteError)
    assert str(err) == ("stopping at step 7: 3 consecutive non-finite steps (5..7); "
                        "last good checkpoint: /run/checkpoints/step_00000004")
    p.observe(bad=False, overflow=True)               # fp16 overflow: counted apart, not a bad step
    assert p.to_dict() == {"nonfinite_total": 5, "nonfinite_run": 0, "overflow_total": 1}


def test_policy_checkpoint_form_round_trips():
    saved = {"nonfinite_total": 4, "nonfinite_run": 2, "overflow_total": 7}
    p = NonFinitePolicy.from_dict(json.loads(json.dumps(saved)), max_nonfinite=3)
    assert p.to_dict() == saved and list(p.to_dict()) == list(saved)
    p.observe(bad=True)
    assert p.exhausted  # the run of bad steps continues across the resume


def test_metrics_writer_appends_and_warns_at_most_once_per_ten_intervals(tmp_path):
    logged = []
    w = MetricsWriter(tmp_path, is_main=True, log=logged.append, data_wait_warn=0.1, log_every=2)
    w.start([{"step": 2, "loss": 1.0}], step=2)
    for step in (4, 6, 24):
        w.write({"step": step, "loss": 0.5, "lr": 1e-3, "data_wait": 0.5})
    w.close()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6, 24]
    warned = [m for m in logged if "waiting for data took 50 %" in m]
    assert [m.split(":")[1].strip() for m in warned] == ["step 4", "step 24"]

    other = MetricsWriter(tmp_path / "other", is_main=False, log=logged.append)
    other.start([], step=0)
    other.write({"step": 1, "loss": None, "lr": 1.0, "data_wait": 0.9})
    assert not (tmp_path / "other").exists()  # not rank 0: writes nothing


def test_runtime_is_an_interface():
    with pytest.raises(TypeError, match="abstract"):
        Runtime(None, None, None, 1, [])  # the base cannot be instantiated
    required = {"setup", "micro_step", "backward", "step", "save", "load", "full_state_dict", "load_elastic"}
    assert Runtime.__abstractmethods__ == required
    assert not TorchRuntime.__abstractmethods__ and not DeepSpeedRuntime.__abstractmethods__
    assert not hasattr(Runtime, "zero_grad")
