"""Process setup and the backend behind the training loop: plain torch (DDP when multi-process) or
a DeepSpeed engine (ZeRO 0-3). The trainer sees only :class:`Runtime`; there is no second loop.

    rt = init_runtime(cfg.dist, cfg.optim, cfg.data.batch_size)   # before building the model
    rt.setup(model, param_groups(model, 0.05))                     # wraps model + torch AdamW
    with rt.micro_step(boundary=True):
        with rt.autocast():
            loss = loss_fn(rt.model, batch)
        rt.backward(loss)
    result = rt.step(lr=1e-3, skip=not finite)                     # clip + update, or a clean skip

Process setup goes through accelerate's ``PartialState`` (env from ``accelerate launch`` /
torchrun: gloo on CPU, NCCL on GPU). On a CPU machine ``DS_ACCELERATOR=cpu`` is set before
DeepSpeed is imported. ``python -m pretrain`` with ``dist.deepspeed=true`` and no launcher gets a
one-process group of its own.

Non-finite steps: the loop always runs backward (collectives stay in lock-step across ranks) and
decides at the optimizer step. A skipped step never updates: plain torch and ZeRO-0 drop the
gradients; ZeRO 1-3 find the non-finite gradients themselves and skip (``was_step_applied``).
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as tdist
import torch.nn as nn

from pretrain.train.dist_config import (apply_launcher_env, check_dist, check_launch_layout, load_template,
                                  resolve_precision, to_deepspeed_config)
from pretrain.models.state_dict import unshare
from pretrain.train.optim import build_optimizer

__all__ = ["DeepSpeedRuntime", "Runtime", "StepResult", "TorchRuntime", "init_runtime", "process_state"]

DS_TAG = "ds"  # DeepSpeed's sub-directory inside one of our checkpoint directories
ELASTIC_FILE = "elastic.pt"
"""World-size-free model + optimizer state written next to DeepSpeed's sharded files (ZeRO 1-3):
``{"format": 1, "step", "params": {name: fp32 master}, "buffers": {name: tensor},
"state": {key: {name: full tensor}}}`` with the AdamW moments (``exp_avg``, ``exp_avg_sq``)."""


@dataclass
class StepResult:
    """Outcome of one optimizer step."""

    applied: bool
    """Whether the parameters were updated."""
    grad_norm: float
    """Global gradient norm before clipping (nan when unknown/skipped)."""
    overflow: bool = False
    """fp16 dynamic loss scaling skipped the step (expected now and then; not a failure)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runtime(abc.ABC):
    """Rank/device facts plus the backend operations the training loop needs.

    The base holds what every backend shares: the facts (rank, device, precision, batch layout),
    the collectives, autocast, the LR setter, the finiteness check, ``compile`` and the model
    signature. A backend (:class:`TorchRuntime`, :class:`DeepSpeedRuntime`) implements the
    abstract methods: wrapping (``setup``), one step (``micro_step``, ``backward``, ``step``) and
    its checkpoint files (``save``, ``load``, ``load_elastic``, ``full_state_dict``). After
    ``setup`` it sets ``model`` (what the loop calls), ``module`` (the bare model), ``optimizer``
    (whose ``param_groups`` ``set_lr`` writes) and, for DeepSpeed, ``engine``.
    """

    def __init__(self, state, dist_cfg, optim_cfg, micro_batch: int, notes: list[str]):
        self.state = state  # accelerate.PartialState
        self.dist = dist_cfg
        self.optim_cfg = optim_cfg
        self.micro_batch = micro_batch
        self.notes = notes
        self.rank: int = state.process_index
        self.world_size: int = state.num_processes
        self.device: torch.device = state.device
        self.is_main: bool = state.is_main_process
        self.precision = resolve_precision(dist_cfg.precision, self.device.type)
        self.grad_accum: int = dist_cfg.grad_accum
        self.model: nn.Module | None = None  # what the loop calls (DDP / DeepSpeed engine / module)
        self.module: nn.Module | None = None  # the bare model
        self.optimizer: torch.optim.Optimizer | None = None
        self.engine = None

    # ---- facts ---------------------------------------------------------------------------
    @property
    def total_batch(self) -> int:
        """Clips per optimizer step over all ranks: micro x accumulation x world size."""
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def backend(self) -> str:
        if self.dist.deepspeed:
            return f"DeepSpeed ZeRO-{self.dist.zero_stage}" + (" + optimizer offload" if self.dist.offload_optimizer else "")
        return "DDP" if self.world_size > 1 else "single process"

    def describe(self) -> str:
        return (f"{self.backend}, {self.world_size} process(es) on {self.device.type}, "
                f"{self.state.backend or 'no'} collectives, {self.precision}")

    # ---- collectives (no-ops in one process) ------------------------------------------------
    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of a float64 CPU/device tensor over ranks (returns a new tensor)."""
        t = t.detach().to(self.device, torch.float64).clone()
        if self.world_size > 1:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def weights_digest(self) -> Optional[str]:
        """sha256 of this rank's model parameters and buffers (None under ZeRO-3, whose ranks
        hold different partitions)."""
        if getattr(self.dist, "deepspeed", False) and self.dist.zero_stage == 3:
            return None
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def close(self) -> None:
        """Leave the process group (no barrier: also safe after an error on one rank)."""
        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()

    # ---- wrapping ---------------------------------------------------------------------------
    @abc.abstractmethod
    def setup(self, model: nn.Module, groups: list[dict]) -> None:
        """Move ``model`` to the device, build torch AdamW over ``groups``, wrap for the backend."""

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype of ``precision`` (``None`` in fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """bf16/fp16 autocast on the device; a no-op in fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def set_lr(self, lr: float) -> None:
        """Scheduled LR into every group (times its ``lr_scale`` from layer decay)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def params_finite(self) -> bool:
        """All parameters (this rank's shards under ZeRO-3) finite on every rank."""
        ok = True
        for p in self.module.parameters():
            t = getattr(p, "ds_tensor", p)  # ZeRO-3 keeps only a partition per rank
            if t.numel() and not bool(torch.isfinite(t).all()):
                ok = False
                break
        return not self.any(not ok)

    def compile(self) -> None:
        """``torch.compile`` what the loop calls (the checkpointed module stays the plain one)."""
        if self.engine is not None:
            self.engine.compile()
        else:
            self.model = torch.compile(self.model)

    # ---- one step (abstract) ------------------------------------------------------------------
    @abc.abstractmethod
    def micro_step(self, boundary: bool):
        """Context manager around one micro-batch's forward + backward; ``boundary``: the last
        micro-batch of the step (where gradients are reduced over ranks)."""

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's ``loss`` (scaled by 1 / ``grad_accum``); also when the
        loss is non-finite, so the ranks' collectives stay in step."""

    @abc.abstractmethod
    def step(self, lr: float, skip: bool) -> StepResult:
        """The optimizer step at ``lr`` after the boundary micro-step: clip, then update unless
        ``skip`` (a non-finite loss) or the gradients are non-finite; the gradients are dropped
        either way."""

    # ---- checkpoint files (abstract) -----------------------------------------------------------
    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Model + optimizer state into ``directory`` (all ranks call)."""

    @abc.abstractmethod
    def load(self, directory: Path) -> None:
        """Model + optimizer state from ``directory``, written by this many processes (all ranks call)."""

    @abc.abstractmethod
    def full_state_dict(self, directory: Path) -> Optional[dict]:
        """fp32 state dict of the whole model from the checkpoint in ``directory`` (rank 0; else None)."""

    @abc.abstractmethod
    def load_elastic(self, directory: Path) -> None:
        """Model + optimizer state from a checkpoint written by a different number of processes
        (all ranks call); raises RuntimeError naming what is missing."""

    def model_signature(self) -> dict:
        """Parameter count and a digest of every parameter/buffer name and shape: what a
        checkpoint must match to be loaded into this model."""
        import hashlib

        items = [(n, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self.module.named_parameters()]
        items += [(n, tuple(b.shape)) for n, b in self.module.named_buffers()]
        digest = hashlib.sha256(repr(sorted(items)).encode()).hexdigest()[:16]
        numel = sum(math.prod(s) for n, s in items)
        return {"tensors": len(items), "numel": int(numel), "digest": digest}


def _grad_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))


class TorchRuntime(Runtime):
    """Plain torch: one process, or DDP over the launched processes."""

    def setup(self, model, groups):
        self.module = model.to(self.device)
        self.optimizer = build_optimizer(groups, self.optim_cfg)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.model = self.module
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def micro_step(self, boundary):
        # DDP all-reduces gradients only on the last micro-step of an accumulation window
        if self.world_size > 1 and not boundary:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss):
        (loss / self.grad_accum).backward()

    def step(self, lr, skip):
        self.set_lr(lr)
        norm = float("nan")
        if not skip:
            clip = self.optim_cfg.clip_grad
            if clip:
                norm = float(torch.nn.utils.clip_grad_norm_(self._params, clip))
            else:
                norm = _grad_norm(self._params)
            skip = not math.isfinite(norm)
        if not skip:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(applied=not skip, grad_norm=norm)

    def save(self, directory):
        from safetensors.torch import save_file

        if self.is_main:
            save_file(unshare(self.module.state_dict()), str(directory / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

    def load(self, directory):
        from safetensors.torch import load_file

        dev = "cpu" if self.device.type == "cpu" else str(self.device)  # safetensors refuses "cpu:1"
        self.module.load_state_dict(load_file(str(directory / "model.safetensors"), device=dev))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=dev,
                                                  weights_only=True))

    def full_state_dict(self, directory):
        if not self.is_main:
            return None
        return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                for k, v in self.module.state_dict().items()}

    def load_elastic(self, directory):
        if (directory / "model.safetensors").is_file():
            self.load(directory)  # the full model and the full optimizer: any number of processes
            return
        if (directory / ELASTIC_FILE).is_file():  # written by a DeepSpeed run: DeepSpeed -> DDP
            _load_elastic_blob_torch(self, directory / ELASTIC_FILE)
            return
        raise RuntimeError(f"{directory} holds neither model.safetensors nor {ELASTIC_FILE}")


class DeepSpeedRuntime(Runtime):
    """A DeepSpeed engine around the model and a torch AdamW (ZeRO stage from the config)."""

    def setup(self, model, groups):
        import deepspeed

        template = load_template(self.dist.deepspeed_config) if self.dist.deepspeed_config else None
        self.ds_config = to_deepspeed_config(self.dist, self.micro_batch, self.optim_cfg.clip_grad, self.world_size,
                                             template, self.device.type)
        optimizer = build_optimizer(groups, self.optim_cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=self.ds_config)
        # fp32 ZeRO-0 steps our AdamW directly, with no finiteness check; every other setup wraps
        # it (ZeRO, bf16, fp16 optimizers), and the wrapper skips steps with non-finite gradients
        self._raw_optimizer = self.engine.optimizer is optimizer
        self.model = self.engine
        self.module = self.engine.module

    def micro_step(self, boundary):
        return _DeepSpeedMicroStep(self, boundary)

    def backward(self, loss):
        self.engine.backward(loss)  # scales by 1/accumulation itself

    def step(self, lr, skip):
        self.set_lr(lr)
        assert self.engine.is_gradient_accumulation_boundary(), "DeepSpeed micro-step count out of step"
        norm = float("nan")
        if self._raw_optimizer:
            # the gradients are already averaged over ranks: measure them and drop non-finite ones
            norm = _grad_norm(self.module.parameters())
            skip = skip or not math.isfinite(norm)
        if self._raw_optimizer and skip:
            self.engine.optimizer.zero_grad(set_to_none=True)  # AdamW updates no param without grad
            with self._no_clipping():
                self.engine.step()  # still called: DeepSpeed's step counters stay in line with ours
        else:
            self.engine.step()
        applied = bool(self.engine.was_step_applied()) and not (self._raw_optimizer and skip)
        if not self._raw_optimizer:
            g = self.engine.get_global_grad_norm()
            norm = float(g) if g is not None else float("nan")
        if skip and applied:
            print(f"[tubelet] rank {self.rank}: warning: the loss was non-finite but the gradients were "
                  f"finite, and DeepSpeed applied the step", flush=True)
        overflow = self.precision == "fp16" and not applied and not skip
        return StepResult(applied=applied, grad_norm=norm, overflow=overflow)

    @contextlib.contextmanager
    def _no_clipping(self):
        """DeepSpeed's gradient clipping off for the ``engine.step()`` inside (restored after).

        ZeRO-0 with our raw AdamW clips in ``engine.step()``, and that clip fails when no parameter
        has a gradient -- which is how a skipped step looks (its gradients were dropped).
        DeepSpeed has no public switch for it, so this sets the private
        ``engine._config.gradient_clipping``: the one place that touches it."""
        config = self.engine._config
        clip = config.gradient_clipping
        config.gradient_clipping = 0.0
        try:
            yield
        finally:
            config.gradient_clipping = clip

    def save(self, directory):
        self.engine.save_checkpoint(str(directory), tag=DS_TAG, client_state={}, save_latest=False)
        if getattr(self.dist, "elastic", True) and self.dist.zero_stage >= 1:
            blob = self._gather_elastic()  # collective: every rank takes part, rank 0 writes
            if self.is_main:
                torch.save(blob, directory / ELASTIC_FILE)

    # ---- world-size-free state (elastic resume) ----------------------------------------------
    def _flat_partitions(self) -> list:
        """The optimizer's fp32 flat partitions (the keys of the torch AdamW state)."""
        opt = self.engine.optimizer
        for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if hasattr(opt, attr):
                return list(getattr(opt, attr))
        raise RuntimeError(f"unknown DeepSpeed optimizer wrapper {type(opt).__name__}")

    def _link_optimizer_fragments(self) -> None:
        """(Re)point ZeRO-1/2 / bf16 parameter fragments at the AdamW state tensors (DeepSpeed
        links them lazily; the fragment getters/setters need them)."""
        opt = self.engine.optimizer
        if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()

    def _trainable(self):
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def _gather_elastic(self) -> dict:
        """Full fp32 masters and AdamW moments of every parameter (collective; rank 0 keeps them)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        base = self.engine.optimizer.optimizer
        flats = self._flat_partitions()
        state0 = base.state.get(flats[0], {}) if flats else {}
        keys = sorted(k for k, v in state0.items() if torch.is_tensor(v) and v.shape == flats[0].shape)
        # every rank's partitions hold the same keys; agree on them explicitly all the same
        keys = self.broadcast_object(keys)
        if keys:
            self._link_optimizer_fragments()
        step = state0.get("step") if state0 else None
        step = self.broadcast_object(float(step) if step is not None else None)
        blob = {"format": 1, "step": step, "params": {}, "state": {k: {} for k in keys},
                "buffers": {n: b.detach().cpu().clone() for n, b in self.module.named_buffers()}}
        for name, p in self._trainable():
            full = safe_get_full_fp32_param(p)
            if self.is_main:
                blob["params"][name] = full.detach().float().cpu().clone()
            for k in keys:
                full = safe_get_full_optimizer_state(p, k)
                if self.is_main:
                    blob["state"][k][name] = full.detach().float().cpu().clone()
        return blob

    def load_elastic(self, directory):
        if self.dist.zero_stage == 0:
            # ZeRO-0: DeepSpeed's model file holds the full model and optimizer (no shards)
            self.load(directory)
            return
        if not (directory / ELASTIC_FILE).is_file():
            raise RuntimeError(f"{directory} has no {ELASTIC_FILE} (written with dist.elastic=false, or by an older "
                               f"version): its ZeRO-{self.dist.zero_stage} optimizer shards only load with the "
                               f"number of processes that wrote them")
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        blob = torch.load(directory / ELASTIC_FILE, map_location="cpu", weights_only=True)
        named = self._trainable()
        missing = [n for n, _ in named if n not in blob["params"]]
        if missing or len(named) != len(blob["params"]):
            raise RuntimeError(f"{directory / ELASTIC_FILE} does not fit this model (missing {missing[:4]})")
        # 1. the model's (low-precision) weights and buffers
        with torch.no_grad():
            if self.dist.zero_stage == 3:
                for n, p in named:  # one parameter at a time: never the whole model on one device
                    with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                        if self.is_main:
                            p.data.copy_(blob["params"][n].to(p.device, p.dtype))
            else:
                for n, p in named:
                    p.data.copy_(blob["params"][n].to(p.device, p.dtype))
            for n, b in self.module.named_buffers():
                if n in blob["buffers"]:
                    b.copy_(blob["buffers"][n].to(b.device, b.dtype))
        # 2. the optimizer: create AdamW's (lazy) state on the flat partitions, then fill it
        keys = sorted(blob["state"])
        if keys:
            base = self.engine.optimizer.optimizer
            for flat in self._flat_partitions():
                st = base.state[flat]
                st["step"] = torch.tensor(float(blob["step"]), dtype=torch.float32)
                for k in keys:
                    if k not in st:
                        st[k] = torch.zeros_like(flat)
            self._link_optimizer_fragments()
        for n, p in named:
            if self.dist.zero_stage == 3:  # DeepSpeed's setter overruns the padded last partition
                self._set_z3_partition(p, blob["params"][n], None)
                for k in keys:
                    self._set_z3_partition(p, blob["state"][k][n], k)
                continue
            safe_set_full_fp32_param(p, blob["params"][n].to(self.device))
            for k in keys:
                safe_set_full_optimizer_state(p, blob["state"][k][n].to(self.device), k)

    def _set_z3_partition(self, p, full: torch.Tensor, key) -> None:
        """This rank's slice of ``full`` into ZeRO-3's fp32 master (key None) or AdamW state ``key``."""
        opt = self.engine.optimizer
        frag, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
        flat = full.flatten().to(frag.device, frag.dtype)
        start = frag.numel() * opt._get_param_partition_rank(p)
        take = max(0, min(frag.numel(), flat.numel() - start))
        with torch.no_grad():
            frag.zero_()
            frag[:take].copy_(flat[start:start + take])

    def load(self, directory):
        path, _ = self.engine.load_checkpoint(str(directory), tag=DS_TAG, load_module_strict=True,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory / DS_TAG}")

    def full_state_dict(self, directory):
        if not self.is_main:
            return None
        from pretrain.train.checkpoint import deepspeed_state_dict

        return deepspeed_state_dict(directory, DS_TAG)


class _DeepSpeedMicroStep:
    """DeepSpeed counts micro-steps in ``engine.step()``: call it after every non-final one."""

    def __init__(self, rt: DeepSpeedRuntime, boundary: bool):
        self.rt, self.boundary = rt, boundary

    def __enter__(self):
        if self.rt.engine.is_gradient_accumulation_boundary() != self.boundary:
            raise RuntimeError("DeepSpeed's accumulation boundary disagrees with the loop's")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self.boundary:
            self.rt.engine.step()  # no update: only advances DeepSpeed's micro-step counter
        return False


def _load_elastic_blob_torch(rt: "TorchRuntime", path: Path) -> None:
    """A DeepSpeed run's world-size-free state into a plain torch model + AdamW."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    names = {id(p): n for n, p in rt.module.named_parameters()}
    with torch.no_grad():
        for n, p in rt.module.named_parameters():
            if n in blob["params"]:
                p.copy_(blob["params"][n].to(p.device, p.dtype))
        for n, b in rt.module.named_buffers():
            if n in blob["buffers"]:
                b.copy_(blob["buffers"][n].to(b.device, b.dtype))
    for group in rt.optimizer.param_groups:
        for p in group["params"]:
            n = names[id(p)]
            if blob["state"] and n in blob["state"].get("exp_avg", {}):
                rt.optimizer.state[p] = {"step": torch.tensor(float(blob["step"]), dtype=torch.float32),
                                         **{k: v[n].to(p.device).clone() for k, v in blob["state"].items()}}


def process_state(timeout_s: float = 600.0):
    """This process's place in the job: accelerate's ``PartialState`` (``process_index``,
    ``num_processes``, ``device``), joining the process group when ``accelerate launch`` / torchrun
    started us (gloo on CPU, NCCL on GPU) and standing alone otherwise. The one process setup of
    training, evaluation, probing and extraction. ``timeout_s`` bounds every collective, so a rank
    whose peer died fails instead of hanging."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s))


def init_runtime(dist_cfg, optim_cfg, micro_batch: int, environ=None) -> Runtime:
    """Start (or join) the process group and pick the backend; call before building the model.

    ``dist_cfg`` is first updated from the ``accelerate launch`` environment (see
    :func:`pretrain.train.dist_config.apply_launcher_env`); the effective config is ``runtime.dist``.
    """
    from pretrain.config import ConfigError

    environ = os.environ if environ is None else environ
    dist_cfg, notes = apply_launcher_env(dist_cfg, environ)
    check_dist(dist_cfg)
    check_launch_layout(environ)
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed
    if dist_cfg.deepspeed and "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
        # not launched: DeepSpeed still needs a process group, so make a one-process one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if dist_cfg.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:  # pragma: no cover - deepspeed is a dependency
            raise ConfigError(f"dist.deepspeed: DeepSpeed is not importable ({e})") from e
    state = process_state(float(getattr(dist_cfg, "timeout_s", 600.0)))
    cls = DeepSpeedRuntime if dist_cfg.deepspeed else TorchRuntime
    return cls(state, dist_cfg, optim_cfg, micro_batch, notes)
