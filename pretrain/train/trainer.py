"""The one training loop, for pretraining and fine-tuning alike, on any :class:`~pretrain.train.runtime.Runtime`.

The trainer knows nothing about models or losses: it calls ``step_fn(model, batch) -> (loss,
metrics)`` once per micro-batch and does the rest — LR schedule, accumulation, clipping, the
non-finite policy (:mod:`pretrain.train.nonfinite`), checkpoints and exact resume, metrics,
TensorBoard, progress bar (:mod:`pretrain.train.metrics`), and at the end the ``on_finish`` hook
(by default :func:`export_final`).

Example (a fine-tuning entry point)::

    from functools import partial

    from pretrain.train.runtime import init_runtime
    from pretrain.train.optim import param_groups
    from pretrain.train.trainer import Trainer, export_final, seed_everything
    from pretrain.data.loader import build_loader
    from pretrain.data.transforms import normalize_on_device

    rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)    # processes, device, backend
    seed_everything(cfg.run.seed)                                   # same init on every rank
    model = build_classifier(...)
    rt.setup(model, param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay))

    def step_fn(model, batch):                                      # batch from the loader
        x = normalize_on_device(batch["video"].to(rt.device), cfg.data.mean, cfg.data.std)
        y = batch["label"].to(rt.device)
        logits = model(x)
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(-1) == y).float().mean()}

    Trainer(rt, step_fn,
            make_loader=lambda state: build_loader(cfg.data, "train", rank=rt.rank,
                                                   world_size=rt.world_size, seed=cfg.run.seed, state=state),
            optim=cfg.optim, run=cfg.run, config=cfg,
            on_finish=partial(export_final, meta={"model": "my_classifier", "model_kwargs": {...}}),
            callbacks=[evaluate_every_1000]).fit()

Semantics:

* One *step* = one optimizer step = ``dist.grad_accum`` micro-batches per rank. ``run.max_steps``,
  ``run.save_every``, ``run.log_every``, ``optim.warmup_steps`` count steps. The LR of step ``s`` is
  :func:`pretrain.train.schedule.lr_at` of ``s`` with the base LR scaled by total batch / 256.
* Non-finite policy: a step whose loss is non-finite on any rank (or whose gradients are) is
  skipped — no update, gradients dropped, the step still counts — and logged; after
  ``run.max_nonfinite`` such steps in a row :class:`NonFiniteError` stops the run naming the steps
  (:class:`~pretrain.train.nonfinite.NonFinitePolicy`).
  A model with non-finite parameters is never checkpointed.
* Checkpoints (:mod:`pretrain.train.checkpoint`) every ``run.save_every`` steps and at the end hold the
  model, optimizer, step, every rank's RNG and data position, counters and the metrics so far;
  with ``run.resume`` the newest complete one in ``run.dir`` is loaded and training continues
  bitwise as if never interrupted (CPU, same number of processes). With another number of
  processes it continues elastically (same step, weights, optimizer moments, LR schedule; data
  from the global shard position; new RNG streams; a loud warning when the effective batch
  changes) -- see :mod:`pretrain.train.checkpoint`.
* Data wait: the share of step time spent waiting for batches is ``data_wait`` in every metrics
  record (and on the progress bar); above ``run.data_wait_warn`` (10 %) a warning says so.
* ``run.compile``: ``torch.compile`` of what the loop calls (:meth:`Runtime.compile`).
* ``make_loader(state)`` returns an endless iterable of batches with ``state_dict()`` (the data
  position after the last batch, passed back as ``state`` on resume); ``stats()["skipped"]`` and
  ``batches_per_epoch`` are used when present. Fetching batches cannot change the RNG state.
* ``callbacks``: ``fn(trainer, batch)`` after every step on every rank (collective model calls
  are allowed); the RNG state is restored after each, so they cannot change the training
  randomness. ``trainer.step``, ``trainer.is_last``, ``trainer.runtime``, ``trainer.run_dir``,
  ``trainer.history``, ``trainer.tracker`` (TensorBoard on rank 0, or None) are there to read.
* ``on_finish(trainer)``: called on every rank after the last checkpoint (collectives allowed);
  :func:`export_final` unless told, with the entry point's metadata bound (``functools.partial``).
* Run directory: ``config.yaml``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/``, and
  from :func:`export_final` ``loss.png``, ``final/model.safetensors`` + ``final/config.json``
  (its ``meta`` merged in).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from pretrain.config import ConfigError, save_config, to_dict
from pretrain.models.state_dict import unshare
from pretrain.train.checkpoint import (capture_rng, find_latest, list_checkpoints, load_checkpoint, preserved_rng,
                                       read_pointer, restore_rng, save_checkpoint)
from pretrain.train.metrics import Interval, MetricsWriter
from pretrain.train.nonfinite import NonFiniteError, NonFinitePolicy
from pretrain.train.schedule import lr_at, lr_rule, scaled_lr

__all__ = ["NonFiniteError", "Trainer", "export_final", "seed_everything"]

StepFn = Callable[[torch.nn.Module, dict], tuple]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rank_seed(seed: int, rank: int) -> int:
    # distinct per rank (masks, drop path) and distinct from the model-init seed
    return (seed * 1_000_003 + 7919 * (rank + 1)) % 2 ** 63


class Trainer:
    """See the module docstring. ``fit()`` returns the list of metric records."""

    def __init__(self, runtime, step_fn: StepFn, make_loader: Callable[[Optional[dict]], Iterable],
                 optim, run, config=None, on_finish: Optional[Callable[["Trainer"], None]] = None,
                 callbacks: Iterable[Callable] = (), desc: str = "train", clips_per_video: int = 1):
        self.runtime, self.step_fn, self.make_loader = runtime, step_fn, make_loader
        self.desc = desc  # progress-bar label
        self.optim, self.run, self.config = optim, run, config
        self.on_finish = on_finish if on_finish is not None else export_final
        self.callbacks = list(callbacks)
        self.run_dir = Path(run.dir)
        self.clips_per_video = int(clips_per_video)   # repeated sampling: the LR rule counts videos
        self.base_lr = scaled_lr(optim.blr, optim.lr, runtime.total_batch, self.clips_per_video)
        self.step = 0
        self.is_last = False
        self.history: list[dict] = []
        self.nonfinite = NonFinitePolicy(run.max_nonfinite)
        self.interval = Interval()
        self.writer = MetricsWriter(self.run_dir, runtime.is_main, self._log,
                                    data_wait_warn=getattr(run, "data_wait_warn", 0.10), log_every=run.log_every)
        self._last_saved = -1
        self.loader = None
        if getattr(run, "compile", False):
            runtime.compile()

    @property
    def tracker(self):
        """The TensorBoard tracker (rank 0, ``run.tracker=tensorboard``; else None), for callbacks."""
        return self.writer.tracker

    # ---- setup -----------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.runtime.is_main:
            print(f"[tubelet] {msg}", flush=True)

    def _resume(self) -> Optional[dict]:
        """Load the newest checkpoint (model, optimizer, counters); its per-rank state or None."""
        rt = self.runtime
        path = None
        if self.run.resume:
            path = rt.broadcast_object(find_latest(self.run_dir) if rt.is_main else None)
        elif list_checkpoints(self.run_dir):  # every rank sees the (shared) run dir: all stop
            raise ConfigError(f"run.resume: false, but {self.run_dir} already holds checkpoints; resume (true), "
                              f"or choose a new run.dir")
        if path is None:
            seed_everything(_rank_seed(self.run.seed, rt.rank))
            return None
        if rt.is_main and read_pointer(self.run_dir) != Path(path).name:
            self._log(f"note: checkpoints/latest names {read_pointer(self.run_dir)!r}, not the newest complete "
                      f"checkpoint {Path(path).name} (interrupted save or damaged pointer); using the latter")
        state, rank_state = load_checkpoint(rt, Path(path), elastic=bool(getattr(rt.dist, "elastic", True)))
        self.step = self._last_saved = int(state["step"])
        self.history = state["history"]
        self.nonfinite = NonFinitePolicy.from_dict(state["counters"], self.run.max_nonfinite)
        self.interval = Interval.from_dict(state["interval"])
        self._log(f"resumed from {path} at step {self.step}")
        if "elastic_from" in rank_state:
            if self.optim.lr is None and state.get("base_lr") is not None and state["base_lr"] != self.base_lr:
                # the LR schedule continues unchanged although the new layout's batch would scale it
                self._log(f"note: base LR {state['base_lr']:.6g} from the checkpoint (this layout's rule would "
                          f"give {self.base_lr:.6g}; set optim.lr to choose another)")
                self.base_lr = float(state["base_lr"])
            self._elastic_banner(rank_state["elastic_from"], state.get("layout") or {})
            # no RNG state exists for this layout: a fresh per-rank stream, distinct from the first run's
            seed_everything(_rank_seed(self.run.seed + 104_729 * (self.step + 1), rt.rank))
            return {"loader": {"relayout": rank_state["loaders"]}}
        return rank_state

    def _elastic_banner(self, old_world: int, old: dict) -> None:
        rt = self.runtime
        old_total = old.get("total_batch")
        lines = [f"ELASTIC RESUME: the checkpoint was written by {old_world} process(es), this run has "
                 f"{rt.world_size}; model, optimizer moments, step and LR schedule continue; the data stream "
                 f"continues from the global shard position; masks/augmentation draw new random numbers"]
        if old_total is not None and old_total != rt.total_batch:
            fix = old_total / (rt.micro_batch * rt.world_size)
            hint = (f"set dist.grad_accum={int(fix)} to keep it" if fix == int(fix) and fix >= 1 else
                    "no integer dist.grad_accum keeps it with this data.batch_size")
            lines.append(f"WARNING: the effective batch changes from {old_total} (= {old.get('micro_batch')} x "
                         f"{old.get('grad_accum')} x {old_world}) to {rt.total_batch} (= {rt.micro_batch} x "
                         f"{rt.grad_accum} x {rt.world_size}); {hint}")
        elif old_total is not None:
            lines.append(f"effective batch unchanged: {rt.total_batch}")
        if rt.is_main:
            import sys

            for line in lines:
                print(f"[tubelet] {line}", flush=True)
                print(f"[tubelet] {line}", file=sys.stderr, flush=True)

    def _start_outputs(self) -> None:
        if not self.runtime.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            save_config(self.config, self.run_dir / "config.yaml")
        hparams = _flat_hparams(to_dict(self.config)) if self.config is not None and self.step == 0 else None
        self.writer.start(self.history, self.step, self.run.tracker, hparams)

    def _banner(self) -> None:
        rt, o = self.runtime, self.optim
        how = lr_rule(o.blr, o.lr, rt.total_batch, self.clips_per_video)
        self._log(f"{rt.describe()}")
        self._log(f"effective batch {rt.total_batch} = {rt.micro_batch} per process x {rt.grad_accum} accumulation "
                  f"x {rt.world_size} process(es); {how}; {self.run.max_steps} steps, warmup {o.warmup_steps}, "
                  f"cosine to {min(o.min_lr, self.base_lr):.3g}")
        for note in rt.notes:
            self._log(note)

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        rt = self.runtime
        rank_state = self._resume()
        fresh = rt.is_main and not (self.run_dir / "config.yaml").exists()
        self._start_outputs()
        try:
            self._banner()
            self.loader = self.make_loader(rank_state["loader"] if rank_state else None)
            batches = iter(self.loader)
            return self._loop(batches, rank_state)
        except Exception:
            # failed before its first step (bad data, a setup error): nothing it wrote is worth keeping;
            # a run that trained keeps its metrics (e.g. the losses before a non-finite stop)
            if fresh and self.step == 0 and self._last_saved < 0 and not list_checkpoints(self.run_dir):
                self._remove_outputs()
            raise

    START_OUTPUTS = ("config.yaml", "metrics.jsonl", "recipe.json", "tb", "checkpoints")

    def _remove_outputs(self) -> None:
        """A new run that fails before its first step leaves nothing behind: the files it started
        (``START_OUTPUTS``) go, and the run directory too when that leaves it empty."""
        import shutil

        self.writer.close(quiet=True)  # already failing; the original error is the one to show
        for name in self.START_OUTPUTS:
            p = self.run_dir / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        try:
            self.run_dir.rmdir()
        except OSError:
            pass

    def _loop(self, batches, rank_state) -> list[dict]:
        rt, run = self.runtime, self.run
        if rank_state and rank_state.get("rng") is not None:
            restore_rng(rank_state["rng"])
        if run.progress:
            self.writer.open_bar(run.max_steps, self.step, self.desc)
        rt.model.train()
        try:
            while self.step < run.max_steps:
                batch = self._train_step(batches)
                self.is_last = self.step == run.max_steps
                if self.step % run.log_every == 0 or self.is_last:
                    self._log_interval()
                self.writer.advance()
                for cb in self.callbacks:
                    with preserved_rng():  # callbacks must not shift the training randomness
                        cb(self, batch)
                if self.step % run.save_every == 0 or self.is_last:
                    self.save()
            if self.step > self._last_saved:  # max_steps reached before (e.g. resumed at the end)
                self.save()
            self.on_finish(self)
        finally:
            self.writer.close()
        return self.history

    def _next(self, batches):
        # A DataLoader draws its workers' base seed from the torch RNG when its iterator starts
        # (at the first batch): keep data loading out of the training RNG stream, or a resumed
        # run would draw that seed at a different point than the uninterrupted one.
        with preserved_rng():
            return next(batches)  # train loaders are infinite; StopIteration would be a loader bug

    def _train_step(self, batches) -> dict:
        """One optimizer step (``grad_accum`` micro-batches per rank), skipped when non-finite;
        returns the last batch."""
        rt, t0 = self.runtime, time.perf_counter()
        batch, losses, metric_sums, wait = self._forward_backward(batches)
        loss, nonfinite_loss, metrics = self._reduce(losses, metric_sums)
        lr = lr_at(self.step, self.base_lr, self.optim.min_lr, self.optim.warmup_steps, self.run.max_steps)
        result = rt.step(lr, skip=nonfinite_loss)
        self.step += 1
        self.interval.add_step(lr, rt.total_batch, time.perf_counter() - t0, wait)
        bad = nonfinite_loss or (not result.applied and not result.overflow)
        self.nonfinite.observe(bad, result.overflow)
        if not bad:
            self.interval.add_good(loss, metrics, result.grad_norm)
            return batch
        self._log(self.nonfinite.skip_message(self.step, "loss" if nonfinite_loss else "gradient norm"))
        if self.nonfinite.exhausted:
            self._log_interval(postfix=False)
            raise self.nonfinite.error(self.step, find_latest(self.run_dir) if rt.is_main else None)
        return batch

    def _forward_backward(self, batches) -> tuple[dict, list, dict, float]:
        """Forward and backward of this rank's ``grad_accum`` micro-batches: the last batch, the
        losses, the sums of the step metrics and the seconds spent waiting for batches."""
        rt, accum = self.runtime, self.runtime.grad_accum
        wait, losses, metric_sums = 0.0, [], {}
        for i in range(accum):
            tw = time.perf_counter()
            batch = self._next(batches)
            wait += time.perf_counter() - tw
            with rt.micro_step(boundary=i == accum - 1):
                with rt.autocast():
                    loss, metrics = self.step_fn(rt.model, batch)
                rt.backward(loss)  # also when non-finite: keeps ranks' collectives in step
            losses.append(loss.detach().float().reshape(()))
            for k, v in (metrics or {}).items():
                metric_sums[k] = metric_sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64).detach().cpu()
        return batch, losses, metric_sums, wait

    def _reduce(self, losses: list, metric_sums: dict) -> tuple[float, bool, dict]:
        """One all-reduce per step of [sum of finite losses, count of non-finite ones, metric sums...]:
        the mean loss and metrics over ranks and micro-batches, and whether any loss was non-finite."""
        rt = self.runtime
        local = torch.stack(losses).double().cpu()
        finite = torch.isfinite(local)
        names = sorted(metric_sums)
        vec = [torch.where(finite, local, 0.0).sum(), (~finite).sum().double()]
        vec += [metric_sums[k].reshape(()) for k in names]
        red = rt.all_reduce_sum(torch.stack(vec)).cpu()
        n = rt.world_size * rt.grad_accum
        return float(red[0]) / n, bool(red[1] > 0), {k: v / n for k, v in zip(names, red[2:].tolist())}

    # ---- outputs ----------------------------------------------------------------------------
    def _epoch(self) -> Optional[float]:
        per = getattr(self.loader, "batches_per_epoch", None)
        state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        if not per or "batches" not in state:
            return None
        return state["batches"] / per

    def _log_interval(self, postfix: bool = True) -> None:
        """Close the current interval (all ranks call: the skipped-sample count is summed over
        them): its record into the history, and to the outputs on rank 0."""
        if self.interval.n == 0:
            return
        stats = self.loader.stats() if hasattr(self.loader, "stats") else {}
        skipped = self.runtime.all_reduce_sum(torch.tensor([float(stats.get("skipped", 0))])).item()
        rec = self.interval.record(self.step, self._epoch(), int(skipped), self.nonfinite.total)
        self.history.append(rec)
        self.interval = Interval()
        self.writer.write(rec, postfix=postfix)

    def save(self) -> Path:
        """Checkpoint the current step (all ranks call)."""
        rt = self.runtime
        trainer_state = {"step": self.step, "history": self.history, "counters": self.nonfinite.to_dict(),
                         "interval": self.interval.to_dict(), "base_lr": self.base_lr,
                         "layout": {"world_size": rt.world_size, "micro_batch": rt.micro_batch,
                                    "grad_accum": rt.grad_accum, "total_batch": rt.total_batch}}
        rank_state = {"rng": capture_rng(), "loader": self.loader.state_dict()}
        path = save_checkpoint(self.runtime, self.run_dir, self.step, trainer_state, rank_state, self.run.keep_last)
        self._last_saved = self.step
        return path


def export_final(trainer: Trainer, meta: Optional[dict] = None) -> Path:
    """The default ``on_finish`` (every rank calls): check that the ranks' weights agree, write the
    last checkpoint's fp32 model to ``final/model.safetensors`` and ``meta`` plus ``step`` to
    ``final/config.json``, and draw ``loss.png``. Returns the ``final`` directory."""
    rt, out = trainer.runtime, trainer.run_dir / "final"
    digests = rt.all_gather_object(rt.weights_digest())
    if digests[0] is not None and len(digests) > 1:
        if len(set(digests)) == 1:
            trainer._log(f"weights identical on all {len(digests)} ranks (sha256 {digests[0][:16]})")
        else:
            trainer._log(f"WARNING: the ranks' weights differ: {[d[:16] for d in digests]}")
    last = rt.broadcast_object(str(find_latest(trainer.run_dir)) if rt.is_main else None)
    sd = rt.full_state_dict(Path(last))
    if rt.is_main:
        from safetensors.torch import save_file

        from pretrain.visualize import plot_loss_curve

        out.mkdir(parents=True, exist_ok=True)
        save_file(unshare(sd), str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps({**(meta or {}), "step": trainer.step}, indent=1))
        plot_loss_curve(trainer.history, trainer.run_dir / "loss.png")
        trainer._log(f"done: {trainer.step} steps; final weights in {out}")
    rt.barrier()
    return out


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = v if v is not None else "null"
        else:
            out[key] = str(v)
    return out
