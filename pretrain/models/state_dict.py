"""State dicts in and out of a model, for every reader and writer in tubelet (one home).

* :func:`load_exact` — ``load_state_dict`` after asserting the exact key set and shapes, with a
  report of what was loaded (pretraining's ``model.init``, fine-tuning's ``--init``, every importer);
* :func:`unshare` — detached, contiguous CPU tensors, no two sharing storage, as safetensors wants
  them (checkpoints, exports).
"""

from __future__ import annotations

import torch.nn as nn


def load_exact(model: nn.Module, sd: dict, what: str, fresh: tuple = (), error: type = ValueError) -> dict:
    """``model.load_state_dict(sd)`` after asserting the key sets and shapes match exactly.

    ``fresh``: keys the checkpoint cannot have and that keep the model's initial values (e.g. the
    ``fc_norm`` of an encoder whose source had none); they must be missing, all of them.
    Raises ``error`` (``ValueError`` unless told) naming ``what`` and listing missing / unexpected /
    mis-shaped keys. Returns ``{"tensors", "parameters", "initialised_fresh"}``.
    """
    own = model.state_dict()
    if set(fresh) & set(sd) or not set(fresh) <= set(own):
        raise error(f"{what}: keys {sorted(fresh)} were to be initialised fresh but are present")
    sd = {**sd, **{k: own[k] for k in fresh}}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): {items[:10]}{' ...' if len(items) > 10 else ''}")
        raise error(f"{what}: state dict does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return {"tensors": len(sd) - len(fresh), "parameters": int(sum(v.numel() for v in sd.values())),
            "initialised_fresh": sorted(fresh)}


def unshare(sd: dict) -> dict:
    """CPU copies ready for ``safetensors.save_file``: detached, contiguous, and no two tensors
    sharing storage (safetensors refuses shared storage: the repeats are cloned)."""
    seen, out = set(), {}
    for k, v in sd.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone().contiguous() if key in seen else v.contiguous()
        if key is not None:
            seen.add(key)
    return out
