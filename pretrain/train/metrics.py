"""The training loop's metrics: one log interval's sums (:class:`Interval`) and where its records go
(:class:`MetricsWriter`: ``metrics.jsonl``, TensorBoard, the progress bar's postfix, the data-wait
warning).

    iv = Interval()
    iv.add_step(lr=1e-3, clips=64, seconds=0.5, wait=0.01)       # every step, skipped or not
    iv.add_good(loss=0.9, metrics={"acc": 0.5}, grad_norm=1.2)    # steps with a finite loss
    rec = iv.record(step=10, epoch=None, skipped_samples=0, nonfinite_steps=0)
    writer.write(rec)                                              # rank 0 writes, the others skip

An interval is part of the checkpoint (``trainer.json`` ``"interval"``): :meth:`Interval.to_dict`
and :meth:`Interval.from_dict` keep the on-disk form (``lr`` absent until the first step).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Interval:
    """Sums over the steps since the last metrics record (all ranks hold the same values)."""

    n: int = 0
    """Steps in the interval (skipped ones too)."""
    loss_sum: float = 0.0
    loss_n: int = 0
    """Steps with a finite loss: ``loss`` and the step metrics are averaged over these."""
    grad_norm_sum: float = 0.0
    grad_norm_n: int = 0
    metrics: dict = field(default_factory=dict)
    """Sum of each step metric (its mean over ranks and micro-batches) over the finite steps."""
    clips: int = 0
    time: float = 0.0
    """Seconds of step time (from the first micro-batch fetch to after the optimizer step)."""
    wait: float = 0.0
    """Seconds of that spent waiting for batches."""
    lr: Optional[float] = None
    """The LR of the last step (None before the first)."""

    def add_step(self, lr: float, clips: int, seconds: float, wait: float) -> None:
        """Count one step (also a skipped one): its LR, clips, duration and data wait."""
        self.n += 1
        self.lr = lr
        self.clips += clips
        self.time += seconds
        self.wait += wait

    def add_good(self, loss: float, metrics: dict, grad_norm: float) -> None:
        """Add a step with a finite loss (means over ranks); a non-finite ``grad_norm`` is left out."""
        self.loss_sum += loss
        self.loss_n += 1
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
        if math.isfinite(grad_norm):
            self.grad_norm_sum += grad_norm
            self.grad_norm_n += 1

    def record(self, step: int, epoch: Optional[float], skipped_samples: int, nonfinite_steps: int) -> dict:
        """The metrics record of this interval (the means; None where nothing was measured)."""
        timed = self.time > 0
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.loss_sum / self.loss_n if self.loss_n else None,
            "lr": self.lr,
            "grad_norm": self.grad_norm_sum / self.grad_norm_n if self.grad_norm_n else None,
            **{k: v / self.loss_n for k, v in self.metrics.items() if self.loss_n},
            "clips_per_s": self.clips / self.time if timed else None,
            "data_wait": self.wait / self.time if timed else None,
            "skipped_samples": int(skipped_samples),
            "nonfinite_steps": nonfinite_steps,
        }

    def to_dict(self) -> dict:
        """The checkpoint form: every field, ``lr`` only once set."""
        d = dataclasses.asdict(self)
        if d["lr"] is None:
            del d["lr"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        """Inverse of :meth:`to_dict` (the ``interval`` of a checkpoint's ``trainer.json``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (dict(v) if k == "metrics" else v) for k, v in d.items() if k in names})


class MetricsWriter:
    """Rank 0's metrics outputs in ``run_dir``: ``metrics.jsonl``, TensorBoard (``tb/``), the
    progress bar and its postfix, and the data-wait warning. On other ranks every method is a no-op.

    ``data_wait_warn``: warn when the data wait share of an interval exceeds it (0 = never), at
    most once per ``10 x log_every`` steps. ``log``: where messages go (the trainer's ``_log``)."""

    def __init__(self, run_dir: Path, is_main: bool, log: Callable[[str], None],
                 data_wait_warn: float = 0.10, log_every: int = 1):
        self.run_dir, self.is_main, self.log = Path(run_dir), is_main, log
        self.data_wait_warn, self.log_every = data_wait_warn, log_every
        self.tracker = None  # accelerate's TensorBoardTracker, once started
        self.bar = None      # tqdm, once opened
        self._wait_warned_at: Optional[int] = None

    def start(self, history: list[dict], step: int, tracker: str = "none", hparams: Optional[dict] = None) -> None:
        """``metrics.jsonl`` = exactly ``history`` (a killed run may have written more); start
        TensorBoard when ``tracker == "tensorboard"`` (``hparams`` stored on a fresh run)."""
        if not self.is_main:
            return
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(self.run_dir / "metrics.jsonl")
        if tracker == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            # purge_step drops events a killed run logged after the checkpoint we resume from
            self.tracker = TensorBoardTracker("tb", self.run_dir, purge_step=step + 1 if step else None)
            self.tracker.start()
            if hparams is not None and step == 0:
                self.tracker.store_init_configuration(hparams)

    def open_bar(self, total: int, initial: int, desc: str) -> None:
        """Show a progress bar (rank 0)."""
        if self.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def advance(self) -> None:
        """One step on the progress bar."""
        if self.bar is not None:
            self.bar.update(1)

    def write(self, rec: dict, postfix: bool = True) -> None:
        """Append ``rec`` to ``metrics.jsonl``, log it to TensorBoard, warn about a slow data
        pipeline, and (``postfix``) show loss / LR / data wait on the progress bar."""
        if not self.is_main:
            return
        step = rec["step"]
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tracker is not None:
            self.tracker.log({f"train/{k}": v for k, v in rec.items() if isinstance(v, (int, float))
                              and k != "step"}, step=step)
        wait, limit = rec["data_wait"], self.data_wait_warn
        if wait is not None and limit and wait > limit and (
                self._wait_warned_at is None or step - self._wait_warned_at >= 10 * self.log_every):
            self._wait_warned_at = step  # at most once per 10 log intervals
            self.log(f"warning: step {step}: waiting for data took {100 * wait:.0f} % of the step time "
                     f"(> {100 * limit:.0f} %; the first interval includes starting the loader workers); raise "
                     f"data.num_workers, pre-shard shorter clips, or read shards from faster storage")
        if postfix and self.bar is not None and rec["loss"] is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                 wait=f"{100 * (wait or 0):.0f}%", refresh=False)

    def close(self, quiet: bool = False) -> None:
        """Close the progress bar and finish TensorBoard (``quiet``: ignore errors of the latter,
        for a run that is already failing)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001
                if not quiet:
                    raise
