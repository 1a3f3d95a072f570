"""Frozen-encoder probes: is the pretraining learning anything a classifier can use?

Three probes on labeled clips, each fitted on one set of videos and scored on another:

- ``knn``: cosine k-nearest neighbours on L2-normalised mean-pooled tokens, ``k=20``, votes
  weighted by ``exp(similarity / T)`` with ``T=0.07`` (DINO's weighted k-NN classifier);
- ``linear``: BatchNorm without affine + a linear layer on the mean-pooled tokens (MAE's linear
  probing recipe), trained with AdamW on the extracted features;
- ``attentive``: one learned query cross-attends over *all* tokens, then a linear layer (V-JEPA's
  attentive probe; mean pooling can hide a small moving object among background tokens).

The encoder runs once per video (one centre clip) in eval mode; features are gathered by video key
across ranks, exactly once (a key seen twice is an error), then every rank fits the same probe on
the same features with a fixed seed, so all ranks agree without further communication.

    feats = extract_features(encoder, loader, mean, std, tokens=True)
    fit, score = split_by_key(feats, score_share=0.2)
    top1 = run_probe("knn", fit, score, num_classes=10)
"""

from __future__ import annotations

import zlib
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

PROBES = ("knn", "linear", "attentive")


class ProbeError(RuntimeError):
    """The probe's data is unusable (no labeled videos, a key counted twice)."""


# ------------------------------------------------------------------------------------------------
# features


def pooled_tokens(encoder: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``video: (B, C, T, H, W)`` -> ``(tokens (B, N, D), mean over tokens (B, D))`` (prefix tokens dropped)."""
    tokens = encoder.forward_features(video)
    tokens = tokens[:, getattr(encoder, "num_prefix_tokens", 0):]
    return tokens, tokens.mean(1)


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: Iterable, mean, std, device="cpu", tokens: bool = False,
                     autocast_dtype=None, max_videos: int = 0, progress=None) -> dict[str, dict]:
    """``{key: {"feat": (D,), "tokens": (N, D) or None, "label": int}}`` over an eval loader,
    gathered across ranks (exactly once). One view per video: build the loader with
    ``num_clips=1, num_crops=1``."""
    from pretrain.data.transforms import normalize_on_device

    was_training = encoder.training
    encoder.eval()
    out: dict[str, dict] = {}
    try:
        for batch in loader:
            video = normalize_on_device(batch["video"].to(device, non_blocking=True), mean, std)
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                tok, feat = pooled_tokens(encoder, video)
            for i, (key, label) in enumerate(zip(batch["key"], batch["label"].tolist())):
                if key in out:
                    raise ProbeError(f"video {key!r} came twice out of the probe loader (use one view per video)")
                out[key] = {"feat": feat[i].float().cpu(), "label": int(label),
                            "tokens": tok[i].float().cpu() if tokens else None}
            if progress is not None:
                progress.update(len(batch["key"]))
            if max_videos and len(out) >= max_videos:
                break
    finally:
        encoder.train(was_training)
    return gather_by_key(out)


class ViewSums:
    """Per-view values summed per video, each ``(video, view)`` counted exactly once.

    One home for "sum scores / embeddings per video over its views" (``finetune.evaluate`` sums
    softmax scores, ``finetune.extract`` clip embeddings). ``records`` is ``{key: {"label": int,
    "views": int, **sums}}``; merge ranks with :func:`gather_by_key` (or :func:`merge_by_key`).
    """

    def __init__(self, what: str = "video", error: type = None):
        self.records: dict[str, dict] = {}
        self._seen: set = set()
        self.what, self.error = what, error or ProbeError

    def add(self, key: str, label: int, view: Optional[int] = None, **values) -> None:
        """Add one view of ``key``; ``values`` (tensors, arrays, numbers) are summed per name."""
        if view is not None:
            if (key, view) in self._seen:
                raise self.error(f"{self.what}: view {view} of {key!r} was delivered twice (duplicate key in the "
                                 "shards, or broken exactly-once loading)")
            self._seen.add((key, view))
        rec = self.records.get(key)
        if rec is None:
            self.records[key] = {"label": int(label), "views": 1, **values}
            return
        rec["views"] += 1
        for k, v in values.items():
            rec[k] = rec[k] + v   # a new sum, never written into the caller's first array / tensor


def merge_by_key(parts: Iterable[dict], error: type = None) -> dict[str, dict]:
    """One ``{key: record}`` dict from per-rank ones; a key in two of them raises ``error``
    (default :class:`ProbeError`): each video is evaluated by exactly one rank."""
    error = error or ProbeError
    merged: dict[str, dict] = {}
    for part in parts:
        for k, v in part.items():
            if k in merged:
                raise error(f"video {k!r} was evaluated on two ranks (exact-once violated)")
            merged[k] = v
    return merged


def gather_by_key(records: dict[str, dict], error: type = None) -> dict[str, dict]:
    """Merge per-rank ``{key: record}`` dicts on every rank (:func:`merge_by_key`). Shared by the
    probes, ``finetune.evaluate`` and ``finetune.extract``."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return merge_by_key([records], error)
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, records)
    return merge_by_key(parts, error)


def split_by_key(records: dict[str, dict], score_share: float = 0.2) -> tuple[dict, dict]:
    """Deterministic fit / score split by a hash of the video key (the same on every rank and run)."""
    if not 0.0 < score_share < 1.0:
        raise ValueError(f"score_share must be in (0, 1), got {score_share}")
    cut = int(score_share * 1000)
    fit, score = {}, {}
    for k, r in records.items():
        (score if zlib.crc32(k.encode()) % 1000 < cut else fit)[k] = r
    return fit, score


def _stack(records: dict[str, dict], what: str = "feat") -> tuple[torch.Tensor, torch.Tensor]:
    keys = sorted(k for k, r in records.items() if r["label"] >= 0)
    if not keys:
        raise ProbeError("no labeled videos for the probe (labels are -1: point the probe at labeled shards)")
    x = torch.stack([records[k][what] for k in keys])
    y = torch.tensor([records[k]["label"] for k in keys])
    return x, y


# ------------------------------------------------------------------------------------------------
# the probes


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: ``train_x (N, D)``, ``test_x (M, D)`` -> class scores ``(M, num_classes)``.

    Cosine similarity on L2-normalised features; each of the ``k`` nearest neighbours votes for its
    class with weight ``exp(similarity / temperature)``.
    """
    train = F.normalize(train_x.float(), dim=1)
    test = F.normalize(test_x.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for i in range(0, test.shape[0], chunk):
        sim = test[i:i + chunk] @ train.T                           # (m, N)
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes).scatter_add_(1, train_y[idx], w)
        scores.append(votes)
    return torch.cat(scores)


class AttentivePooler(nn.Module):
    """One learned query cross-attends over tokens ``(B, N, D)`` (multi-head), then a linear head.

    ``forward(tokens) -> logits (B, num_classes)``. Shared by the frozen-encoder
    :class:`finetune.heads.AttentiveProbe` and the probes here (same parameter names).
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            num_heads = 1
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.out_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.num_classes = num_classes

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: (B, N, D)`` -> pooled ``(B, D)``."""
        b, n, d = tokens.shape
        h = self.num_heads
        x = self.norm(tokens)
        k, v = self.kv(x).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)               # each (B, h, N, d/h)
        q = self.q(self.query.expand(b, -1, -1)).reshape(b, 1, h, d // h).transpose(1, 2)  # (B, h, 1, d/h)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
        return self.out_norm(self.query[:, 0] + self.proj(out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(tokens))


class LinearOnFeatures(nn.Module):
    """BatchNorm1d(affine=False) + linear on pooled features ``(B, D)`` (MAE linear probing);
    :class:`finetune.heads.LinearProbe` is this on a frozen encoder (same parameter names)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(x))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int, seed: int,
         weight_decay: float) -> nn.Module:
    """AdamW with a cosine schedule on in-memory inputs ``x (N, ...)``; deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def run_probe(kind: str, fit: dict[str, dict], score: dict[str, dict], num_classes: int, *, k: int = 20,
              temperature: float = 0.07, steps: int = 200, lr: float = 1e-3, batch: int = 64,
              seed: int = 0) -> dict:
    """Fit probe ``kind`` on ``fit`` records and score it on ``score`` records.

    Returns ``{"probe", "top1", "n_fit", "n_score"}``. ``linear`` / ``attentive`` train ``steps``
    AdamW steps of ``batch`` videos (the attentive probe needs records with ``tokens``).
    """
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
    what = "tokens" if kind == "attentive" else "feat"
    if kind == "attentive" and any(r["tokens"] is None for r in fit.values()):
        raise ValueError("the attentive probe needs tokens: extract_features(..., tokens=True)")
    xf, yf = _stack(fit, what)
    xs, ys = _stack(score, what)
    if kind == "knn":
        pred = knn_predict(xf, yf, xs, num_classes, k=k, temperature=temperature).argmax(1)
    else:
        torch.manual_seed(seed)                 # the probe head's init
        with torch.enable_grad():
            if kind == "linear":
                model = _fit(LinearOnFeatures(xf.shape[1], num_classes), xf, yf, steps, lr=lr * 10, batch=batch,
                             seed=seed, weight_decay=0.0)
            else:
                model = _fit(AttentivePooler(xf.shape[-1], num_classes), xf, yf, steps, lr=lr, batch=batch,
                             seed=seed, weight_decay=0.05)
        with torch.no_grad():
            pred = torch.cat([model(xs[i:i + 256]).argmax(1) for i in range(0, xs.shape[0], 256)])
    return {"probe": kind, "top1": float((pred == ys).float().mean()), "n_fit": int(xf.shape[0]),
            "n_score": int(xs.shape[0])}


def probe_encoder(encoder: nn.Module, data_cfg, kinds: Iterable[str], num_classes: int, *,
                  shards: Optional[str] = None, fit_shards: Optional[str] = None, score_share: float = 0.2,
                  rank: int = 0, world_size: int = 1, device="cpu", seed: int = 0, steps: int = 200,
                  max_videos: int = 0, autocast_dtype=None, forward_context=None,
                  progress: bool = False) -> dict[str, dict]:
    """Extract features of ``encoder`` and run every probe in ``kinds``.

    With ``fit_shards`` the probes are fitted there and scored on ``shards``; otherwise ``shards``
    is split by key (``score_share`` of the videos scored). ``forward_context()`` (e.g. the
    runtime's autocast, needed for bf16 DeepSpeed weights) wraps only the encoder's forward passes;
    the probes themselves are fitted in fp32. ``progress``: a tqdm bar per extraction on rank 0.
    Returns ``{kind: result}``.
    """
    import contextlib

    from pretrain.data.loader import build_loader

    kinds = list(kinds)
    want_tokens = "attentive" in kinds

    def feats(spec: str) -> dict:
        loader = build_loader(data_cfg, "eval", shards=spec, rank=rank, world_size=world_size, seed=seed,
                              num_clips=1, num_crops=1)
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"probe features {spec}", unit="video", leave=False)
        try:
            with (forward_context() if forward_context is not None else contextlib.nullcontext()):
                return extract_features(encoder, loader, data_cfg.mean, data_cfg.std, device=device,
                                        tokens=want_tokens, autocast_dtype=autocast_dtype, max_videos=max_videos,
                                        progress=bar)
        finally:
            if bar is not None:
                bar.close()

    if fit_shards:
        fit, score = feats(fit_shards), feats(shards)
    else:
        fit, score = split_by_key(feats(shards), score_share)
    return {kind: run_probe(kind, fit, score, num_classes, steps=steps, seed=seed) for kind in kinds}
