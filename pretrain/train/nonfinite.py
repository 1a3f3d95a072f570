"""The non-finite loss policy of the training loop.

A step whose loss is non-finite on any rank (or whose gradients are) is skipped -- no update,
the step still counts -- and logged; after ``run.max_nonfinite`` such steps in a row the run stops
with :class:`NonFiniteError` naming the steps and the last good checkpoint. fp16 loss-scale
overflows are counted apart (expected now and then; not a failure).

    policy = NonFinitePolicy(max_nonfinite=3)
    policy.observe(bad=True, overflow=False)
    policy.exhausted          # False: 1 bad step in a row
    policy.to_dict()          # {"nonfinite_total": 1, "nonfinite_run": 1, "overflow_total": 0}

The counters are part of the checkpoint (``trainer.json`` ``"counters"``), in the form of
:meth:`NonFinitePolicy.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class NonFiniteError(RuntimeError):
    """Training stopped by the non-finite loss policy."""


@dataclass
class NonFinitePolicy:
    """Counters of bad steps and the stop rule (every rank holds the same values)."""

    max_nonfinite: int
    """Stop after this many consecutive bad steps."""
    total: int = 0
    """Bad (skipped) steps in the whole run."""
    in_a_row: int = 0
    """Consecutive bad steps up to the last one (0 after a good step)."""
    overflow_total: int = 0
    """fp16 overflow skips in the whole run (not bad steps)."""

    def observe(self, bad: bool, overflow: bool = False) -> None:
        """Count one step: ``bad`` (skipped for a non-finite loss / gradient norm) or good, and
        whether fp16 loss scaling skipped it."""
        if bad:
            self.total += 1
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        if overflow:
            self.overflow_total += 1

    @property
    def exhausted(self) -> bool:
        """``max_nonfinite`` bad steps in a row: the run must stop."""
        return self.in_a_row >= self.max_nonfinite

    def skip_message(self, step: int, what: str) -> str:
        """The log line of bad step ``step`` (``what``: "loss" or "gradient norm")."""
        return (f"step {step}: non-finite {what}; step skipped (no update), {self.in_a_row} in a row "
                f"(limit run.max_nonfinite={self.max_nonfinite})")

    def error(self, step: int, last_checkpoint: Optional[object]) -> NonFiniteError:
        """The error that stops the run at ``step`` (the last of the bad ones)."""
        return NonFiniteError(f"stopping at step {step}: {self.in_a_row} consecutive non-finite steps "
                              f"({step - self.in_a_row + 1}..{step}); last good checkpoint: {last_checkpoint}")

    def to_dict(self) -> dict:
        """The checkpoint form (``trainer.json`` ``"counters"``)."""
        return {"nonfinite_total": self.total, "nonfinite_run": self.in_a_row, "overflow_total": self.overflow_total}

    @classmethod
    def from_dict(cls, d: dict, max_nonfinite: int) -> "NonFinitePolicy":
        """Inverse of :meth:`to_dict`, with this run's limit."""
        return cls(max_nonfinite, total=int(d.get("nonfinite_total", 0)), in_a_row=int(d.get("nonfinite_run", 0)),
                   overflow_total=int(d.get("overflow_total", 0)))
