"""MNIST download: mirrors, checksums and cleanup, against a local HTTP server with fake files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from spair.data.digits import read_npz
from spair.data.fetch import MnistFile, fetch_mnist, parse_idx
from spair.errors import DataError

N_TRAIN, N_TEST = 20, 10


def idx_images(a: np.ndarray) -> bytes:
    return struct.pack(">iiii", 0x803, len(a), 28, 28) + a.tobytes()


def idx_labels(a: np.ndarray) -> bytes:
    return struct.pack(">ii", 0x801, len(a)) + a.tobytes()


@pytest.fixture(scope="module")
def fake():
    """Fake MNIST: raw arrays, gzipped files by name, and the ``files`` argument describing them."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images": rng.integers(0, 256, (N_TRAIN, 28, 28)).astype(np.uint8),
        "train-labels": rng.integers(0, 10, N_TRAIN).astype(np.uint8),
        "test-images": rng.integers(0, 256, (N_TEST, 28, 28)).astype(np.uint8),
        "test-labels": rng.integers(0, 10, N_TEST).astype(np.uint8),
    }
    names = {"train-images": "train-images-idx3-ubyte.gz", "train-labels": "train-labels-idx1-ubyte.gz",
             "test-images": "t10k-images-idx3-ubyte.gz", "test-labels": "t10k-labels-idx1-ubyte.gz"}
    blobs, files = {}, {}
    for role, arr in arrays.items():
        raw = idx_images(arr) if arr.ndim == 3 else idx_labels(arr)
        gz = gzip.compress(raw, mtime=0)
        blobs[names[role]] = gz
        files[role] = MnistFile(names[role], hashlib.sha256(gz).hexdigest(), hashlib.sha256(raw).hexdigest())
    return arrays, blobs, files


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake):
    """A local HTTP server with mirrors ``good/``, ``empty/`` (404s), ``corrupt/`` (wrong content
    in a valid gzip), ``garbage/`` (not gzip) and ``short/`` (truncated gzip)."""
    arrays, blobs, files = fake
    root = tmp_path_factory.mktemp("www")
    for mirror in ("good", "empty", "corrupt", "garbage", "short"):
        (root / mirror).mkdir(parents=True)
    for name, gz in blobs.items():
        (root / "good" / name).write_bytes(gz)
        raw = bytearray(gzip.decompress(gz))
        raw[-1] ^= 0xFF
        (root / "corrupt" / name).write_bytes(gzip.compress(bytes(raw), mtime=0))
        (root / "garbage" / name).write_bytes(b"<html>not found</html>")
        (root / "short" / name).write_bytes(gz[: len(gz) // 2])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def all_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_fetch_writes_the_digit_file(tmp_path, server, fake):
    arrays, _, files = fake
    cache = tmp_path / "cache"
    out = fetch_mnist(cache, mirrors=[server + "good/"], files=files, timeout=5, progress=False)
    assert out == cache / "digits" / "mnist.npz"
    z = read_npz(out)
    assert np.array_equal(z["images"], np.concatenate([arrays["train-images"], arrays["test-images"]]))
    assert np.array_equal(z["labels"], np.concatenate([arrays["train-labels"], arrays["test-labels"]]))
    assert z["source"].tolist() == [0] * N_TRAIN + [1] * N_TEST
    assert all_files(cache) == ["digits/mnist-raw/t10k-images-idx3-ubyte.gz",
                                "digits/mnist-raw/t10k-labels-idx1-ubyte.gz",
                                "digits/mnist-raw/train-images-idx3-ubyte.gz",
                                "digits/mnist-raw/train-labels-idx1-ubyte.gz",
                                "digits/mnist.npz"]
    # verified copies in the cache are reused without any working mirror
    fetch_mnist(cache, mirrors=[server + "empty/"], files=files, timeout=5, progress=False)


def test_404_on_first_mirror_falls_back_to_the_second(tmp_path, server, fake):
    _, _, files = fake
    out = fetch_mnist(tmp_path, mirrors=[server + "empty/", server + "good/"], files=files, timeout=5,
                      progress=False)
    assert len(read_npz(out)["labels"]) == N_TRAIN + N_TEST


@pytest.mark.parametrize("mirror, reason", [
    ("corrupt", "sha256 of the decompressed content does not match"),
    ("garbage", "not a valid gzip file"),
    ("short", "truncated gzip data"),
])
def test_bad_downloads_are_rejected_and_removed(tmp_path, server, fake, mirror, reason):
    _, _, files = fake
    unchecked = {role: MnistFile(f.name, None, f.raw_sha256) for role, f in files.items()}  # content checks only
    with pytest.raises(DataError, match=rf"could not download train-images-idx3-ubyte.gz: .*{reason}"):
        fetch_mnist(tmp_path / "cache", mirrors=[server + mirror + "/"], files=unchecked, timeout=5, progress=False)
    assert all_files(tmp_path) == []


def test_every_mirror_failing_is_reported(tmp_path, server, fake):
    _, _, files = fake
    with pytest.raises(DataError) as err:
        fetch_mnist(tmp_path / "cache", mirrors=[server + "empty/", server + "corrupt/"], files=files, timeout=5,
                    progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg
    assert "HTTP 404" in msg and "sha256 of the download does not match" in msg
    assert all_files(tmp_path) == []


def test_corrupted_cached_copy_is_downloaded_again(tmp_path, server, fake):
    _, blobs, files = fake
    raw_dir = tmp_path / "digits" / "mnist-raw"
    raw_dir.mkdir(parents=True)
    (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    fetch_mnist(tmp_path, mirrors=[server + "good/"], files=files, timeout=5, progress=False)
    assert (raw_dir / "train-labels-idx1-ubyte.gz").read_bytes() == blobs["train-labels-idx1-ubyte.gz"]


def test_parse_idx_hand_example():
    data = bytes([0, 0, 8, 2]) + struct.pack(">ii", 2, 3) + bytes(range(6))
    assert parse_idx(data, "x").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="do not match"):
        parse_idx(data[:-1], "x")
    with pytest.raises(DataError, match="not an IDX"):
        parse_idx(b"\x1f\x8b\x08\x00", "x")
