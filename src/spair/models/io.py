"""Saving and loading model weights safely.

Two formats are read:

- ``.safetensors``: the weights, with the model config as JSON in the file's metadata
  (``{"spair_format": "model", "model_config": {...}}``). This is what ships in the package and what
  ``spair export`` writes. safetensors holds tensors only, so loading it cannot execute code.
- ``.pt``: a training checkpoint written by ``spair.training.checkpoint``. It is read with
  ``torch.load(weights_only=True)``, which refuses pickled code (``__reduce__`` payloads, arbitrary
  classes) instead of running it.

Every failure (missing, truncated, corrupt, unsafe, another architecture) raises one
:class:`CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write, load_torch_file
from .spair import Spair, SpairConfig

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
PRETRAINED = PRETRAINED_DIR / "spair-mnist.safetensors"


def save_model(path: str | os.PathLike, model: Spair, extra: dict[str, Any] | None = None) -> None:
    """Write the weights and config of ``model`` to a ``.safetensors`` file, atomically."""
    from safetensors.torch import save

    meta = {"spair_format": "model", "model_config": json.dumps(to_dict(model.cfg))}
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata=meta)
    with atomic_write(path, "wb") as f:
        f.write(data)


def _read_pt(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a spair checkpoint (no model weights and config)")
    return ckpt["model_config"], ckpt["model"]


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    raw = path.read_bytes()
    try:
        tensors = load(raw)
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
    except (SafetensorError, ValueError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"model file {path} is truncated or corrupt ({str(e)[:200]})") from None
    meta = header.get("__metadata__") or {}
    if meta.get("spair_format") != "model" or "model_config" not in meta:
        raise CheckpointError(f"model file {path} is not a spair model (no model config in its metadata)")
    try:
        cfg = json.loads(meta["model_config"])
    except json.JSONDecodeError:
        raise CheckpointError(f"model file {path} has a corrupt model config") from None
    return cfg, tensors


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Spair:
    """Load a SPAIR model from ``path`` (``.safetensors`` or a ``.pt`` training checkpoint);
    ``None`` loads the pretrained model shipped with the package. Returns it in eval mode."""
    p = Path(path) if path is not None else PRETRAINED
    if path is None and not p.exists():
        raise CheckpointError(f"the pretrained model is missing from the package ({p.name}); "
                              "pass --checkpoint or reinstall spair")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint is a folder, not a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
    with open(p, "rb") as f:
        magic = f.read(8)
    if p.suffix == ".safetensors" or (not magic.startswith(b"PK") and p.suffix != ".pt"):
        cfg_data, state = _read_safetensors(p)
    else:
        cfg_data, state = _read_pt(p)
    try:
        cfg = from_dict(SpairConfig, cfg_data, prefix="model.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {p} has an invalid model config: {e}") from None
    model = Spair(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch in {wrong[:3]}")
        raise CheckpointError(f"checkpoint {p} does not fit the SPAIR architecture of its config ({detail})")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"checkpoint {p} holds non-finite weights in {k}")
    model.load_state_dict(state)
    return model.to(device).eval()
