"""The one training loop, for pretraining and fine-tuning alike, on any :class:`~pretrain.train.runtime.Runtime`.

The trainer knows nothing about models or losses: it calls ``step_fn(model, batch) -> (loss,
metrics)`` once per micro-batch and does the rest — LR schedule, accumulation, clipping, the
non-finite policy, checkpoints and exact resume, metrics, TensorBoard, progress bar, final export.

Example (a fine-tuning entry point)::

    from pretrain.train.runtime import init_runtime
    from pretrain.train.optim import param_groups
    from pretrain.train.trainer import Trainer, seed_everything
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
            export={"model": "my_classifier", "model_kwargs": {...}},
            callbacks=[evaluate_every_1000]).fit()

Semantics:

* One *step* = one optimizer step = ``dist.grad_accum`` micro-batches per rank. ``run.max_steps``,
  ``run.save_every``, ``run.log_every``, ``optim.warmup_steps`` count steps. The LR of step ``s`` is
  :func:`pretrain.train.schedule.lr_at` of ``s`` with the base LR scaled by total batch / 256.
* Non-finite policy: a step whose loss is non-finite on any rank (or whose gradients are) is
  skipped — no update, gradients dropped, the step still counts — and logged; after
  ``run.max_nonfinite`` such steps in a row :class:`NonFiniteError` stops the run naming the steps.
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
  ``trainer.history`` are there to read.
* Run directory: ``config.yaml``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/``,
  ``loss.png``, ``final/model.safetensors`` + ``final/config.json`` (``export`` merged in).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from pretrain.train.checkpoint import (capture_rng, find_latest, list_checkpoints, load_checkpoint, preserved_rng,
                                 read_pointer, restore_rng, save_checkpoint)
from pretrain.config import ConfigError, save_config, to_dict
from pretrain.train.schedule import lr_at, lr_rule, scaled_lr

StepFn = Callable[[torch.nn.Module, dict], tuple]


class NonFiniteError(RuntimeError):
    """Training stopped by the non-finite loss policy."""


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
                 optim, run, config=None, export: Optional[dict] = None,
                 callbacks: Iterable[Callable] = (), desc: str = "train", clips_per_video: int = 1):
        self.runtime, self.step_fn, self.make_loader = runtime, step_fn, make_loader
        self.desc = desc  # progress-bar label
        self.optim, self.run, self.config = optim, run, config
        self.export, self.callbacks = export, list(callbacks)
        self.run_dir = Path(run.dir)
        self.clips_per_video = int(clips_per_video)   # repeated sampling: the LR rule counts videos
        self.base_lr = scaled_lr(optim.blr, optim.lr, runtime.total_batch, self.clips_per_video)
        self.step = 0
        self.is_last = False
        self.history: list[dict] = []
        self.counters = {"nonfinite_total": 0, "nonfinite_run": 0, "overflow_total": 0}
        self._interval = self._new_interval()
        self._last_saved = -1
        self.tracker = None
        self.loader = None
        self._wait_warned_at = None
        if getattr(run, "compile", False):
            runtime.compile()

    # ---- setup -----------------------------------------------------------------------------
    @staticmethod
    def _new_interval() -> dict:
        return {"n": 0, "loss_sum": 0.0, "loss_n": 0, "grad_norm_sum": 0.0, "grad_norm_n": 0, "metrics": {},
                "clips": 0, "time": 0.0, "wait": 0.0}

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
        self.counters = state["counters"]
        self._interval = state["interval"]
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
        rt = self.runtime
        if not rt.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            save_config(self.config, self.run_dir / "config.yaml")
        # metrics.jsonl = exactly the records up to the resumed step (a killed run may have written more)
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        tmp.replace(self.run_dir / "metrics.jsonl")
        if self.run.tracker == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            # purge_step drops events a killed run logged after the checkpoint we resume from
            self.tracker = TensorBoardTracker("tb", self.run_dir, purge_step=self.step + 1 if self.step else None)
            self.tracker.start()
            if self.config is not None and self.step == 0:
                self.tracker.store_init_configuration(_flat_hparams(to_dict(self.config)))

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

        if self.tracker is not None:
            try:
                self.tracker.finish()
            except Exception:  # noqa: BLE001 — already failing; the original error is the one to show
                pass
            self.tracker = None
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
        bar = None
        if rt.is_main and run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=run.max_steps, initial=self.step, desc=self.desc, dynamic_ncols=True)
        rt.model.train()
        try:
            while self.step < run.max_steps:
                batch = self._train_step(batches)
                self.is_last = self.step == run.max_steps
                if self.step % run.log_every == 0 or self.is_last:
                    self._write_metrics(bar)
                if bar is not None:
                    bar.update(1)
                for cb in self.callbacks:
                    with preserved_rng():  # callbacks must not shift the training randomness
                        cb(self, batch)
                if self.step % run.save_every == 0 or self.is_last:
                    self.save()
            if self.step > self._last_saved:  # max_steps reached before (e.g. resumed at the end)
                self.save()
            self._finish()
        finally:
            if bar is not None:
                bar.close()
            if self.tracker is not None:
                self.tracker.finish()
        return self.history

    def _next(self, batches):
        # A DataLoader draws its workers' base seed from the torch RNG when its iterator starts
        # (at the first batch): keep data loading out of the training RNG stream, or a resumed
        # run would draw that seed at a different point than the uninterrupted one.
        with preserved_rng():
            return next(batches)  # train loaders are infinite; StopIteration would be a loader bug

    def _train_step(self, batches) -> dict:
        rt, accum = self.runtime, self.runtime.grad_accum
        t0 = time.perf_counter()
        wait = 0.0
        losses, metric_sums = [], {}
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
        # one all-reduce per step: [sum of finite losses, count of non-finite ones, metric sums...]
        local = torch.stack(losses).double().cpu()
        finite = torch.isfinite(local)
        names = sorted(metric_sums)
        vec = [torch.where(finite, local, 0.0).sum(), (~finite).sum().double()]
        vec += [metric_sums[k].reshape(()) for k in names]
        red = rt.all_reduce_sum(torch.stack(vec)).cpu()
        nonfinite_loss = bool(red[1] > 0)
        lr = lr_at(self.step, self.base_lr, self.optim.min_lr, self.optim.warmup_steps, self.run.max_steps)
        result = rt.step(lr, skip=nonfinite_loss)
        self.step += 1
        n = rt.world_size * accum
        iv = self._interval
        iv["n"] += 1
        iv["lr"] = lr
        iv["clips"] += rt.total_batch
        iv["time"] += time.perf_counter() - t0
        iv["wait"] += wait
        bad = nonfinite_loss or (not result.applied and not result.overflow)
        if bad:
            self.counters["nonfinite_total"] += 1
            self.counters["nonfinite_run"] += 1
            what = "loss" if nonfinite_loss else "gradient norm"
            self._log(f"step {self.step}: non-finite {what}; step skipped (no update), "
                      f"{self.counters['nonfinite_run']} in a row (limit run.max_nonfinite={self.run.max_nonfinite})")
            if self.counters["nonfinite_run"] >= self.run.max_nonfinite:
                self._write_metrics(None)
                last = find_latest(self.run_dir) if rt.is_main else None
                raise NonFiniteError(f"stopping at step {self.step}: {self.counters['nonfinite_run']} consecutive "
                                     f"non-finite steps ({self.step - self.counters['nonfinite_run'] + 1}.."
                                     f"{self.step}); last good checkpoint: {last}")
        else:
            self.counters["nonfinite_run"] = 0
            iv["loss_sum"] += float(red[0]) / n
            iv["loss_n"] += 1
            for k, v in zip(names, red[2:].tolist()):
                iv["metrics"][k] = iv["metrics"].get(k, 0.0) + v / n
            if math.isfinite(result.grad_norm):
                iv["grad_norm_sum"] += result.grad_norm
                iv["grad_norm_n"] += 1
        if result.overflow:
            self.counters["overflow_total"] += 1
        return batch

    # ---- outputs ----------------------------------------------------------------------------
    def _epoch(self) -> Optional[float]:
        per = getattr(self.loader, "batches_per_epoch", None)
        state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        if not per or "batches" not in state:
            return None
        return state["batches"] / per

    def _write_metrics(self, bar) -> None:
        rt, iv = self.runtime, self._interval
        if iv["n"] == 0:
            return
        stats = self.loader.stats() if hasattr(self.loader, "stats") else {}
        skipped = rt.all_reduce_sum(torch.tensor([float(stats.get("skipped", 0))])).item()
        rec = {
            "step": self.step,
            "epoch": self._epoch(),
            "loss": iv["loss_sum"] / iv["loss_n"] if iv["loss_n"] else None,
            "lr": iv["lr"],
            "grad_norm": iv["grad_norm_sum"] / iv["grad_norm_n"] if iv["grad_norm_n"] else None,
            **{k: v / iv["loss_n"] for k, v in iv["metrics"].items() if iv["loss_n"]},
            "clips_per_s": iv["clips"] / iv["time"] if iv["time"] > 0 else None,
            "data_wait": iv["wait"] / iv["time"] if iv["time"] > 0 else None,
            "skipped_samples": int(skipped),
            "nonfinite_steps": self.counters["nonfinite_total"],
        }
        self.history.append(rec)
        self._interval = self._new_interval()
        if not rt.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tracker is not None:
            self.tracker.log({f"train/{k}": v for k, v in rec.items() if isinstance(v, (int, float))
                              and k != "step"}, step=self.step)
        wait, limit = rec["data_wait"], getattr(self.run, "data_wait_warn", 0.10)
        if wait is not None and limit and wait > limit and (
                self._wait_warned_at is None or self.step - self._wait_warned_at >= 10 * self.run.log_every):
            self._wait_warned_at = self.step  # at most once per 10 log intervals
            self._log(f"warning: step {self.step}: waiting for data took {100 * wait:.0f} % of the step time "
                      f"(> {100 * limit:.0f} %; the first interval includes starting the loader workers); raise "
                      f"data.num_workers, pre-shard shorter clips, or read shards from faster storage")
        if bar is not None and rec["loss"] is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                            wait=f"{100 * (wait or 0):.0f}%", refresh=False)

    def save(self) -> Path:
        """Checkpoint the current step (all ranks call)."""
        rt = self.runtime
        trainer_state = {"step": self.step, "history": self.history, "counters": self.counters,
                         "interval": self._interval, "base_lr": self.base_lr,
                         "layout": {"world_size": rt.world_size, "micro_batch": rt.micro_batch,
                                    "grad_accum": rt.grad_accum, "total_batch": rt.total_batch}}
        rank_state = {"rng": capture_rng(), "loader": self.loader.state_dict()}
        path = save_checkpoint(self.runtime, self.run_dir, self.step, trainer_state, rank_state, self.run.keep_last)
        self._last_saved = self.step
        return path

    def _finish(self) -> None:
        """``final/model.safetensors`` + ``config.json`` from the last checkpoint; loss curve."""
        rt = self.runtime
        digests = rt.all_gather_object(rt.weights_digest())
        if digests[0] is not None and len(digests) > 1:
            if len(set(digests)) == 1:
                self._log(f"weights identical on all {len(digests)} ranks (sha256 {digests[0][:16]})")
            else:
                self._log(f"WARNING: the ranks' weights differ: {[d[:16] for d in digests]}")
        last = rt.broadcast_object(str(find_latest(self.run_dir)) if rt.is_main else None)
        sd = rt.full_state_dict(Path(last))
        if rt.is_main:
            from safetensors.torch import save_file

            from pretrain.visualize import plot_loss_curve

            out = self.run_dir / "final"
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
            meta = {**(self.export or {}), "step": self.step}
            (out / "config.json").write_text(json.dumps(meta, indent=1))
            plot_loss_curve(self.history, self.run_dir / "loss.png")
            self._log(f"done: {self.step} steps; final weights in {out}")
        rt.barrier()


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
