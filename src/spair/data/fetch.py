"""Download the official MNIST files and store them as the digit source ``"mnist"``.

:func:`fetch_mnist` downloads the four IDX files (training and test images and labels, gzipped),
trying the mirrors in order, and checks two sha256 sums per file: of the ``.gz`` as published
(the values widely listed for these files) and of the decompressed IDX content. The second one
was established independently of any download: the 60,000 training digits are the training and
validation parts of the classic ``mnist.pkl.gz`` (pixel byte = ``round(v · 256)``), the test
digits its test part, and an IDX file is a fixed header (magic ``0x00000803`` for images,
``0x00000801`` for labels, big-endian int32 counts and ``28, 28``) followed by the bytes.

Each file is downloaded into a temporary file inside the cache folder, verified, then renamed
to ``<cache>/digits/mnist-raw/<name>``; a file that fails (HTTP error, truncated or non-gzip
data, checksum mismatch) is deleted and the next mirror is tried. Nothing partial is ever left
in the cache. The result is ``<cache>/digits/mnist.npz`` (a digit file, see
:mod:`spair.data.digits`): the 60,000 training digits, then the 10,000 test digits.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .digits import default_cache_dir, write_digit_file


@dataclass(frozen=True)
class MnistFile:
    """One file to download: its name on the mirrors and the checksums it must have."""

    name: str  # e.g. "train-images-idx3-ubyte.gz"
    sha256: str | None  # of the downloaded .gz; None: not checked
    raw_sha256: str  # of the decompressed IDX content


MNIST_FILES: Mapping[str, MnistFile] = MappingProxyType({
    "train-images": MnistFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels": MnistFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test-images": MnistFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test-labels": MnistFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
})
"""The four official files by role; the roles are the keys :func:`fetch_mnist` needs."""

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

MAX_DOWNLOAD_BYTES = 64 << 20
"""A download larger than this is abandoned (the largest official file is about 9.5 MiB)."""

ROLES = ("train-images", "train-labels", "test-images", "test-labels")
SOURCE_NAMES = ("idx-train", "idx-test")
_CHUNK = 1 << 16


class _Rejected(Exception):
    """A downloaded file that must not be used; the message says why."""


def fetch_mnist(cache_dir: str | os.PathLike | None = None, mirrors: Sequence[str] = DEFAULT_MIRRORS,
                files: Mapping[str, MnistFile] = MNIST_FILES, timeout: float = 60,
                progress: bool = True) -> Path:
    """Download, verify and convert MNIST into ``<cache>/digits/mnist.npz``; return its path.

    Args:
        cache_dir: cache root (default :func:`~spair.data.digits.default_cache_dir`).
        mirrors: base URLs tried in order for every file (``http`` or ``https``).
        files: the file of each role in :data:`ROLES` with its checksums.
        timeout: seconds to wait on a connection or read before trying the next mirror.
        progress: show a tqdm progress bar per download.

    Files already in ``<cache>/digits/mnist-raw/`` that verify are used without downloading.
    Raises DataError naming the file and each mirror's failure when no mirror gives a good copy.
    """
    missing = [r for r in ROLES if r not in files]
    if missing:
        raise ConfigError(f"files: no entry for {', '.join(missing)}")
    mirrors = list(mirrors)
    if not mirrors:
        raise ConfigError("mirrors: at least one mirror URL is needed")
    for m in mirrors:
        if not m.startswith(("http://", "https://")):
            raise ConfigError(f"mirrors: {m!r} is not an http(s) URL")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    raw_dir = root / "digits" / "mnist-raw"
    raw_dir.mkdir(parents=True, exist_ok=True)

    content = {role: _obtain(files[role], raw_dir, mirrors, timeout, progress) for role in ROLES}
    parts = []
    for part in ("train", "test"):
        images = parse_idx(content[f"{part}-images"], files[f"{part}-images"].name)
        labels = parse_idx(content[f"{part}-labels"], files[f"{part}-labels"].name)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{files[f'{part}-images'].name}: expected 28x28 images, got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
            raise DataError(f"{files[f'{part}-labels'].name}: expected {len(images)} labels in 0..9")
        parts.append((images, labels))
    out = root / "digits" / "mnist.npz"
    write_digit_file(out, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     np.concatenate([np.full(len(p[1]), i, np.uint8) for i, p in enumerate(parts)]),
                     SOURCE_NAMES)
    return out


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """The uint8 array of an IDX file: 2 zero bytes, type ``0x08`` (unsigned byte), the number of
    dimensions, each dimension as a big-endian int32, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if int(np.prod(dims)) != len(data) - header:
        raise DataError(f"{name}: IDX dimensions {dims} do not match its {len(data) - header} values")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _obtain(f: MnistFile, raw_dir: Path, mirrors: list[str], timeout: float, progress: bool) -> bytes:
    """The verified decompressed content of ``f``, from the cache or the first mirror that works."""
    final = raw_dir / f.name
    if final.is_file():
        try:
            return _verify(final.read_bytes(), f)
        except _Rejected:
            final.unlink()  # a stale or damaged copy: download it again
    reasons = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + f.name
        fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=raw_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                _download(url, out, timeout, progress, f.name)
            content = _verify(Path(tmp).read_bytes(), f)
            os.replace(tmp, final)
            return content
        except _Rejected as e:
            reasons.append(f"{url}: {e}")
        except urllib.error.HTTPError as e:
            reasons.append(f"{url}: HTTP {e.code}")
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            reasons.append(f"{url}: {type(e).__name__} ({reason})")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise DataError(f"could not download {f.name}: " + "; ".join(reasons))


def _download(url: str, out, timeout: float, progress: bool, name: str) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise _Rejected(f"{total} bytes announced, more than any MNIST file")
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress,
                  leave=False) as bar:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > MAX_DOWNLOAD_BYTES:
                    raise _Rejected(f"more than {MAX_DOWNLOAD_BYTES} bytes, more than any MNIST file")
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and got != total:
            raise _Rejected(f"truncated ({got} of {total} bytes)")


def _verify(data: bytes, f: MnistFile) -> bytes:
    """The decompressed content of ``data`` if both checksums of ``f`` match, else _Rejected."""
    if f.sha256 is not None and hashlib.sha256(data).hexdigest() != f.sha256.lower():
        raise _Rejected("sha256 of the download does not match")
    try:
        raw = gzip.decompress(data)
    except EOFError:
        raise _Rejected("truncated gzip data") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise _Rejected(f"not a valid gzip file ({e})") from None
    if hashlib.sha256(raw).hexdigest() != f.raw_sha256.lower():
        raise _Rejected("sha256 of the decompressed content does not match")
    return raw
