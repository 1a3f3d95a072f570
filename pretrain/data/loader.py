"""The clip loader: WebDataset shards -> decoded, augmented uint8 clip batches.

    loader = build_loader(cfg.data, "train", rank=rank, world_size=world, seed=cfg.run.seed,
                          state=ckpt.get("loader"))
    for batch in loader:                     # train: infinite; eval: finite, each sample once
        x = normalize_on_device(batch["video"].to(dev), cfg.data.mean, cfg.data.std)
        ...
        ckpt["loader"] = loader.state_dict()  # position after the last batch -> exact resume

Batch: ``video`` uint8 (B, 3, T, H, W), ``label`` int64 (B,) (-1 unlabeled), ``key`` list[str],
``view`` int64 (B,) (``clip * num_crops + crop`` in eval, 0 in train), and with ``data.flow``
``flow`` float16 (B, 2, T-1, H, W).

How exact resume works. A rank runs ``W = max(1, num_workers)`` *roles*; batch ``i`` of the rank
comes from role ``i % W`` (the DataLoader takes batches from its workers round-robin, in order).
A role's stream is a pure function of (seed, rank, role) -- see :mod:`pretrain.data.stream` -- and
every batch carries its role's position after it (round, samples taken, repeats emitted) plus the
role's cumulative decode/skip counters. The main process keeps the position of the last *consumed*
batch per role, so prefetched batches never leak into the state. On resume after ``k`` batches,
worker ``w`` plays role ``(w + k) % W`` and replays its round up to the recorded position by
reading tar bytes only. Per-sample randomness comes from ``default_rng([seed, N, consumer, round,
index])``, so a skipped sample never shifts the augmentation of the next one.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain.config import ConfigError, DataConfig
from pretrain.data.clips import ClipPlan, SampleSkipped, eval_plans, train_plans
from pretrain.data.flow import farneback_flow
from pretrain.data.shard_writer import read_classes
from pretrain.data.stream import ROUND_SHARDS, TrainOrder, eval_samples, list_shards, manifest_num_samples

STATE_VERSION = 1
MAX_CONSECUTIVE_FAILURES = 1000
"""A role that skips this many samples (or empty rounds) in a row stops with an error: the data,
not a few bad files, is broken."""
_TAG_AUG = 13


def _fresh_position() -> dict:
    return {"round": 0, "taken": 0, "rep": 0, "decoded": 0, "skipped": {}}


def _count(stats: dict, reason: str) -> None:
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1


def _alloc(shape: tuple, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """Batch buffer; in a worker it is allocated in shared memory so that handing the batch to the
    main process copies nothing (what torch's ``default_collate`` does for its stacked output)."""
    if shared:
        try:
            proto = torch.empty(0, dtype=dtype)
            storage = proto._typed_storage()._new_shared(math.prod(shape), device="cpu")
            return proto.new(storage).view(shape)
        except Exception:  # private API moved: fall back to a plain tensor (one copy more)
            pass
    return torch.empty(shape, dtype=dtype)


class _BatchBuilder:
    """Builds one batch in place: each clip is cropped/resized straight into its slot."""

    def __init__(self, cfg: DataConfig, shared: bool):
        b, t, s = cfg.batch_size, cfg.num_frames, cfg.img_size
        self.size, self.with_flow = s, cfg.flow
        self.video = _alloc((b, 3, t, s, s), torch.uint8, shared)
        self.flow = _alloc((b, 2, max(t - 1, 0), s, s), torch.float16, shared) if cfg.flow else None
        self.labels: list[int] = []
        self.keys: list[str] = []
        self.views: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def full(self) -> bool:
        return len(self.keys) == self.video.shape[0]

    def add(self, frames: torch.Tensor, plan: ClipPlan, label: int, key: str) -> None:
        i = len(self.keys)
        clip = plan.build(frames, self.size, out=self.video[i])
        if self.flow is not None:
            self.flow[i] = farneback_flow(clip)
        self.labels.append(label)
        self.keys.append(key)
        self.views.append(plan.view)

    def finish(self, meta: dict) -> dict:
        n = len(self.keys)
        batch = {"video": self.video[:n], "label": torch.tensor(self.labels, dtype=torch.int64),
                 "key": self.keys, "view": torch.tensor(self.views, dtype=torch.int64), "_meta": meta}
        if self.flow is not None:
            batch["flow"] = self.flow[:n]
        return batch


class ClipStream(IterableDataset):
    """Worker side: yields whole batches (plus a ``_meta`` entry the :class:`Loader` strips)."""

    def __init__(self, cfg: DataConfig, mode: str, urls: list[str], rank: int, world_size: int, seed: int,
                 roles: list[dict], first_batch: int, num_clips: int, num_crops: int, cache=None):
        super().__init__()
        self.cache = cache  # a ClipCache (data.cache) or None
        self.cfg, self.mode, self.urls = cfg, mode, urls
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_roles = max(1, cfg.num_workers)
        self.roles, self.first_batch = roles, first_batch
        self.num_clips, self.num_crops = num_clips, num_crops
        self._shared = False  # batch buffers in shared memory (set per process in __iter__)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        self._shared = info is not None
        if info is not None:
            import cv2

            cv2.setNumThreads(1)  # one core per worker; the DataLoader already sets torch to 1
        if self.mode == "train":
            return self._train((worker + self.first_batch) % self.num_roles)
        return self._eval(worker)

    # ---------------------------------------------------------------- train
    def _train(self, role: int):
        cfg, R = self.cfg, self.cfg.num_repeats
        pos = copy.deepcopy(self.roles[role])
        n_cons = self.world_size * self.num_roles
        consumer = self.rank * self.num_roles + role
        order = TrainOrder(self.urls, self.seed, consumer, n_cons, cfg.shuffle_buffer)
        counting = [True]  # shard events seen while replaying to a resume position are already counted

        def on_event(reason: str) -> None:
            if counting[0]:
                _count(pos, reason)

        def plans_of(raw, k: int, index: int, first: int = 0):
            rng = np.random.default_rng([_TAG_AUG, self.seed, n_cons, consumer, k, index])
            return train_plans(raw, cfg, rng, first, cache=self.cache)

        batch = _BatchBuilder(cfg, self._shared)
        failures = 0
        k, resume_taken, resume_rep = pos["round"], pos["taken"], pos["rep"]
        while True:
            samples = order.round(k, on_event)
            start = 0
            if resume_taken:
                counting[0] = False
                last = None
                for _ in range(resume_taken):
                    last = next(samples, None)
                counting[0] = True
                if last is not None and 0 < resume_rep < R:
                    try:  # the rest of a sample whose first repeats went into the last batch
                        frames, plans = plans_of(last, k, resume_taken - 1, first=resume_rep)
                    except SampleSkipped:  # only a timeout can differ from the first run
                        plans = []
                    for r, plan in enumerate(plans, resume_rep):
                        pos["rep"] = r + 1
                        batch.add(frames, plan, last.label, last.key)
                        if batch.full():
                            yield batch.finish({"role": role, "pos": copy.deepcopy(pos)})
                            batch = _BatchBuilder(cfg, self._shared)
                start, resume_taken = resume_taken, 0
            got = 0
            for index, raw in enumerate(samples, start):
                got += 1
                pos["taken"], pos["rep"] = index + 1, 0
                hits = self.cache.hits if self.cache is not None else 0
                try:
                    frames, plans = plans_of(raw, k, index)
                except SampleSkipped as e:
                    _count(pos, e.reason)
                    failures += 1
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"{failures} samples in a row could not be used (last: {raw.key} "
                                           f"{e.reason}; skipped so far: {pos['skipped']}); check data.shards")
                    continue
                failures = 0
                pos["decoded"] += 1
                if self.cache is not None and self.cache.hits > hits:
                    pos["cached"] = pos.get("cached", 0) + 1  # served from the decoded-clip cache
                for r, plan in enumerate(plans):
                    pos["rep"] = r + 1
                    batch.add(frames, plan, raw.label, raw.key)
                    if batch.full():
                        yield batch.finish({"role": role, "pos": copy.deepcopy(pos)})
                        batch = _BatchBuilder(cfg, self._shared)
            if got == 0:
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"no readable samples in {failures} rounds (skipped: {pos['skipped']}); "
                                       f"check data.shards")
            k += 1
            pos.update(round=k, taken=0, rep=0)

    # ---------------------------------------------------------------- eval
    def _eval(self, worker: int):
        stats = {"decoded": 0, "skipped": {}}
        consumer = self.rank * self.num_roles + worker
        n_cons = self.world_size * self.num_roles

        def meta(final: bool) -> dict:
            return {"worker": worker, "stats": copy.deepcopy(stats), "final": final}

        batch = _BatchBuilder(self.cfg, self._shared)
        for raw in eval_samples(self.urls, consumer, n_cons, lambda reason: _count(stats, reason)):
            hits = self.cache.hits if self.cache is not None else 0
            try:
                frames, plans = eval_plans(raw, self.cfg, self.num_clips, self.num_crops, cache=self.cache)
            except SampleSkipped as e:
                _count(stats, e.reason)
                continue
            stats["decoded"] += 1
            if self.cache is not None and self.cache.hits > hits:
                stats["cached"] = stats.get("cached", 0) + 1
            for plan in plans:
                batch.add(frames, plan, raw.label, raw.key)
                if batch.full():
                    yield batch.finish(meta(False))
                    batch = _BatchBuilder(self.cfg, self._shared)
        if len(batch):
            yield batch.finish(meta(False))
        yield {"_meta": meta(True)}  # counters of trailing skips reach the main process too


def _identity(x):
    return x


def _open_cache(cfg: DataConfig, urls: list[str], spec: str):
    """``data.cache`` -> a :class:`~pretrain.data.cache.ClipCache` (directory keyed on the shards'
    content, created here in the main process), or None when off."""
    if not cfg.cache:
        return None
    from pretrain.data.cache import ClipCache, register_ram_cleanup, resolve_cache_dir

    try:
        d = resolve_cache_dir(cfg.cache, urls, spec, cfg.backend)
    except OSError as e:
        raise ConfigError(f"data.cache: cannot use {cfg.cache!r}: {e}") from None
    ram = cfg.cache == "ram"
    if ram:
        register_ram_cleanup(d)
    return ClipCache(d, int(cfg.cache_max_gb * 1e9), ram=ram)


class Loader:
    """Iterable over batches; see the module docstring. Build with :func:`build_loader`."""

    def __init__(self, cfg: DataConfig, mode: str, urls: list[str], *, spec: str, rank: int, world_size: int,
                 seed: int, num_clips: int, num_crops: int, state: dict | None = None):
        self.cfg, self.mode, self.urls, self.spec = cfg, mode, urls, spec
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_clips, self.num_crops = num_clips, num_crops
        self.num_roles = max(1, cfg.num_workers)
        self.num_samples = manifest_num_samples(spec)
        """Samples in the shard directory (from manifest.json), None when unknown."""
        self.classes = read_classes(spec) if self.num_samples is not None else None
        """Class names from classes.json, None when absent."""
        self._batches = 0
        self._roles = [_fresh_position() for _ in range(self.num_roles)]
        self._eval_done = {"decoded": 0, "skipped": {}}
        self._eval_live: dict[int, dict] = {}
        self.cache = _open_cache(cfg, urls, spec)
        """The decoded-clip cache (``data.cache``) shared by this loader's workers, or None."""
        if state:
            self.load_state_dict(state)

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches per rank covering the data once: train ``num_samples * num_repeats`` clips over
        all ranks (every rank gets exactly this many per epoch); eval an estimate (ranks may differ
        by a batch or so, skips lower it). None when the sample count is unknown (no manifest)."""
        if self.num_samples is None:
            return None
        clips = self.num_samples * (self.cfg.num_repeats if self.mode == "train" else self.num_clips * self.num_crops)
        return max(1, math.ceil(clips / (self.world_size * self.cfg.batch_size)))

    def __iter__(self):
        ds = ClipStream(self.cfg, self.mode, self.urls, self.rank, self.world_size, self.seed,
                        copy.deepcopy(self._roles), self._batches, self.num_clips, self.num_crops,
                        cache=self.cache)
        workers = self.cfg.num_workers
        dl = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_identity,
                        pin_memory=torch.cuda.is_available(), persistent_workers=False,
                        prefetch_factor=2 if workers else None)
        if self.mode == "train":
            return self._iter_train(dl)
        return self._iter_eval(dl)

    def _iter_train(self, dl):
        for batch in dl:
            meta = batch.pop("_meta")
            if meta["role"] != self._batches % self.num_roles:  # the round-robin contract broke
                raise RuntimeError(f"batch {self._batches} came from role {meta['role']}, "
                                   f"expected {self._batches % self.num_roles}")
            self._roles[meta["role"]] = meta["pos"]
            self._batches += 1
            yield batch

    def _iter_eval(self, dl):
        self._eval_live = {}
        try:
            for batch in dl:
                meta = batch.pop("_meta")
                self._eval_live[meta["worker"]] = meta["stats"]
                if not meta["final"]:
                    yield batch
        finally:
            for s in self._eval_live.values():
                self._eval_done["decoded"] += s["decoded"]
                if "cached" in s:
                    self._eval_done["cached"] = self._eval_done.get("cached", 0) + s["cached"]
                for r, n in s["skipped"].items():
                    self._eval_done["skipped"][r] = self._eval_done["skipped"].get(r, 0) + n
            self._eval_live = {}

    def stats(self) -> dict:
        """``{"decoded", "skipped", "skipped_by_reason"}`` over the batches consumed so far (train:
        since the start of the run, resume included; eval: over all passes); with ``data.cache`` also
        ``cached``: how many of the ``decoded`` samples came from the cache instead of the decoder."""
        if self.mode == "train":
            parts = self._roles
        else:
            parts = [self._eval_done, *self._eval_live.values()]
        by_reason: dict[str, int] = {}
        for p in parts:
            for r, n in p["skipped"].items():
                by_reason[r] = by_reason.get(r, 0) + n
        out = {"decoded": sum(p["decoded"] for p in parts), "skipped": sum(by_reason.values()),
               "skipped_by_reason": dict(sorted(by_reason.items()))}
        if self.cache is not None:
            out["cached"] = sum(p.get("cached", 0) for p in parts)
        return out

    def state_dict(self) -> dict:
        """Position after the last batch yielded (train); plain data, JSON/torch.save friendly."""
        return {"version": STATE_VERSION, "mode": self.mode, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_roles": self.num_roles, "num_shards": len(self.urls),
                "batches": self._batches, "roles": copy.deepcopy(self._roles)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (of a loader built with the same data, seed, rank layout)."""
        if self.mode != "train":
            return  # eval passes always start at the beginning
        if "relayout" in state:  # saved by another number of ranks (elastic resume)
            self._relayout(state["relayout"])
            return
        if state.get("version") != STATE_VERSION or state.get("mode") != "train":
            raise ValueError(f"loader state: expected a train state of version {STATE_VERSION}, got "
                             f"version={state.get('version')} mode={state.get('mode')}")
        expect = {"seed": (self.seed, "seed"), "rank": (self.rank, "rank"),
                  "world_size": (self.world_size, "world_size"),
                  "num_roles": (self.num_roles, "data.num_workers (max 1)"),
                  "num_shards": (len(self.urls), "number of shards in data.shards")}
        for k, (mine, name) in expect.items():
            if state.get(k) != mine:
                raise ValueError(f"loader state: {name} was {state.get(k)} when saved, is {mine} now; "
                                 "exact resume needs the same value")
        self._batches = int(state["batches"])
        self._roles = copy.deepcopy(state["roles"])

    def _relayout(self, olds: list[dict]) -> None:
        """Positions for this rank from the train states of *all* ranks of a run with another
        rank and/or worker layout (``state={"relayout": [state of rank 0, 1, ...]}``).

        Guarantee: the shard sequence of every epoch is one seeded permutation whatever the
        layout, and consumer ``c`` of ``N`` reads its positions ``c, c+N, ...`` in rounds of
        ``P = min(ROUND_SHARDS, shards)``. ``G`` = the first global position that some old consumer
        had not finished (the start of its current round): every sample before ``G`` went into a
        consumed batch. Each new consumer restarts at the start of the round holding its first
        position ``>= G - P*N'``, so every position ``>= G`` is read by exactly one new consumer and
        nothing is skipped; positions in ``[G - P*N', G)`` and the rounds the old consumers were in
        the middle of may be read a second time (at most about one round per consumer, old and
        new). Augmentation draws differ from any single-layout run.
        """
        if not olds:
            raise ValueError("loader state: relayout without the saved states")
        n_old = len(olds) * max(1, int(olds[0].get("num_roles", 1)))
        for st in olds:
            if st.get("version") != STATE_VERSION or st.get("mode") != "train":
                raise ValueError(f"loader state: expected train states of version {STATE_VERSION}")
            for k, mine, name in (("seed", self.seed, "seed"), ("num_shards", len(self.urls),
                                                                "number of shards in data.shards")):
                if st.get(k) != mine:
                    raise ValueError(f"loader state: {name} was {st.get(k)} when saved, is {mine} now; "
                                     "resume needs the same value")
        per = max(1, min(ROUND_SHARDS, len(self.urls)))
        start = min(st["rank"] * st["num_roles"] + role + pos["round"] * per * n_old
                    for st in olds for role, pos in enumerate(st["roles"]))
        n_new = self.world_size * self.num_roles
        self._roles = []
        for role in range(self.num_roles):
            c = self.rank * self.num_roles + role
            pos = _fresh_position()
            pos["round"] = max(0, (start - c) // (per * n_new))
            self._roles.append(pos)
        if self.rank == 0:  # the run's decode/skip counters continue (summed over ranks anyway)
            for st in olds:
                for pos in st["roles"]:
                    self._roles[0]["decoded"] += pos["decoded"]
                    for r, n in pos["skipped"].items():
                        self._roles[0]["skipped"][r] = self._roles[0]["skipped"].get(r, 0) + n
        self._batches = sum(int(st["batches"]) for st in olds) // self.world_size  # the epoch continues
        self.relayout_from = {"ranks": len(olds), "consumers": n_old, "position": start}


def _shard_spec(cfg: DataConfig, mode: str, shards: str | None) -> tuple[str, str]:
    """``(config field, shard spec)`` a loader of ``mode`` reads: ``shards`` if given, else the config's."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if shards is not None:
        return "shards", shards
    return ("data.shards", cfg.shards) if mode == "train" else ("data.val_shards", cfg.val_shards)


def resolve_shards(cfg: DataConfig, mode: str, shards: str | None = None) -> list[str]:
    """The shard files a ``build_loader(cfg, mode, shards=...)`` would read; a ``ConfigError``
    naming the field when there are none. Entry points call it before writing anything."""
    field, spec = _shard_spec(cfg, mode, shards)
    if not spec:
        raise ConfigError(f"{field}: no shards given")
    try:
        return list_shards(spec)
    except FileNotFoundError as e:
        raise ConfigError(f"{field}: {e}") from None


def build_loader(cfg: DataConfig, mode: str, *, shards: str | None = None, rank: int = 0, world_size: int = 1,
                 seed: int = 0, state: dict | None = None, num_clips: int | None = None,
                 num_crops: int | None = None) -> Loader:
    """Loader over ``shards`` (default ``cfg.shards`` for train, ``cfg.val_shards`` for eval).

    mode: ``train`` (infinite, resampled, shuffled, exact resume from ``state``) or ``eval`` (each
    sample once over all ranks and workers, ``num_clips x num_crops`` views per video).
    """
    urls = resolve_shards(cfg, mode, shards)
    spec = _shard_spec(cfg, mode, shards)[1]
    if not (0 <= rank < world_size):
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    num_clips = cfg.test_num_clips if num_clips is None else num_clips
    num_crops = cfg.test_num_crops if num_crops is None else num_crops
    if num_clips < 1 or num_crops not in (1, 3):
        raise ValueError(f"num_clips must be >= 1 and num_crops 1 or 3, got {num_clips}, {num_crops}")
    return Loader(cfg, mode, urls, spec=spec, rank=rank, world_size=world_size, seed=seed,
                  num_clips=num_clips, num_crops=num_crops, state=state)
