"""Training checkpoints: atomic writes, weights-only loads, and the checks a resume needs.

A checkpoint is a ``torch.save`` file holding only plain data (dicts, lists, numbers, strings and
tensors), so ``torch.load(weights_only=True)`` reads it and refuses anything else:

    {"format": "spair-train-1", "model_config": {...}, "model": state_dict,
     "train_config": {...}, "optimizer": state_dict, "step": int,
     "rng": {"scheme": "per-step", "seed": int}, "schedules": {...},
     "best": {"ap": float, "step": int}, "bad_steps": int}

``spair.models.io.load_model`` reads the same files for inference (it needs only ``model`` and
``model_config``). Writes go to a temporary file and are renamed, so a kill during a write leaves the
previous checkpoint intact. A checkpoint with non-finite weights is never written.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write, load_torch_file

FORMAT = "spair-train-1"


def _finite_state(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` atomically; refuse (CheckpointError) if the model weights are not finite."""
    if not _finite_state(ckpt["model"]):
        raise CheckpointError(f"refusing to write {path}: the model weights are not finite")
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; every failure is one CheckpointError."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a spair training checkpoint")
    for key in ("model", "model_config", "optimizer", "step", "rng", "train_config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {p} is incomplete (no '{key}')")
    if not _finite_state(ckpt["model"]):
        raise CheckpointError(f"checkpoint {p} holds non-finite weights")
    return ckpt


#: Settings of how a run executes or is tested rather than what it trains: a run may resume with others
#: (``refine_steps`` only changes how the test scenes are read after training, never a training step).
RUNTIME_SETTINGS = ("num_threads", "device", "max_minutes", "refine_steps")


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Paths at which two plain-data configs differ (for 'resume refused on a changed config');
    :data:`RUNTIME_SETTINGS` are not compared, at any depth (a config may be nested in a record)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted((set(a) | set(b)) - set(RUNTIME_SETTINGS)):
            if k not in a or k not in b:
                out.append(prefix + str(k))
            else:
                out += config_differences(a[k], b[k], f"{prefix}{k}.")
        return out
    if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=0, abs_tol=0):
        return []
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]
