"""Atomic file writes and small file helpers shared by every part of the package.

Every output spair writes (datasets, manifests, checkpoints, detections, results, figures) goes
through :func:`atomic_write`: the data is written to a temporary file in the destination folder,
flushed and fsynced, then renamed over the destination. A reader (or a killed process) therefore
sees either the old file or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import SpairError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_dir_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpairError(f"cannot create output folder {parent}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpairError(f"output folder is not writable: {parent}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    _check_dir_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning every failure into one SpairError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SpairError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SpairError(f"{what} is a folder, not a file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpairError(f"{what} is not valid JSON: {path} ({e})") from None
    except OSError as e:
        raise SpairError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into one CheckpointError.

    ``weights_only=True`` only rebuilds plain data (dicts, lists, numbers, strings, tensors): a file
    carrying pickled code (a ``__reduce__`` payload, an arbitrary class) is refused before anything
    in it runs, and reported as such; a missing, empty, truncated or corrupt file is reported too.
    """
    import pickle
    import zipfile

    import torch

    from .errors import CheckpointError

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{what} is a folder, not a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what} {p} is empty (0 bytes)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{what} {p} contains code or objects that are not plain data; "
                                  "refusing to load it") from None
        raise CheckpointError(f"{what} {p} is corrupt (not a torch file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError, IndexError,
            TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{what} {p} is truncated or corrupt ({first[:160]})") from None
