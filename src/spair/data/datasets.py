"""Datasets on disk: a folder with ``scenes.npz`` and ``manifest.json``, and a cache of them.

**Folder format** (``FORMAT_VERSION = 1``). ``scenes.npz`` holds, for ``N`` images with ``M``
objects in all:

- ``images`` ``uint8 (N, H, W, 3)``;
- ``boxes`` ``float32 (M, 4)`` ``(x0, y0, x1, y1)`` pixels, the boxes of all images one after the
  other; image ``i`` owns rows ``offsets[i]:offsets[i + 1]``;
- ``offsets`` ``int64 (N + 1,)``, ``offsets[0] = 0``, non-decreasing, ``offsets[N] = M``;
- ``labels`` ``int64 (M,)``, the class of each box (the digit value for digit scenes);
- ``backgrounds`` ``uint8 (N, 3)``, the background colour of each image.

``manifest.json`` is written last and holds ``format``, ``kind`` (``"scenes"`` for generated
digit scenes, any other name for other image sets), ``spec`` (the parameters as plain data),
``seed``, ``n_images``, ``image_size``, ``n_boxes``, ``sha256`` (of ``scenes.npz``),
``content_sha256`` (of the arrays themselves, independent of zip compression), ``spair_version``
and, for digit scenes, ``digit_source``, ``digit_sha256`` (of the digit file used),
``ink_threshold``, ``generator_version`` and the cache ``key``; ``extra`` holds caller data.

**Cache.** :func:`get_dataset` keeps datasets in ``<cache>/datasets/<name>-<key>/`` where ``key``
is the first 12 hex digits of the sha256 of the canonical JSON of the specification together
with the format and generator versions, the ink threshold and the sha256 of the digit file. A
folder that is present and verifies is loaded; a missing one is generated; an invalid one (wrong
hash, bad arrays, other specification) is regenerated with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import param, to_dict
from ..errors import ConfigError, DataError, SpairError
from ..io import read_json, sha256_file, write_json_atomic
from .digits import (INK_THRESHOLD, default_cache_dir, digit_file_sha256, load_digits, read_npz,
                     write_npz_atomic)
from .scenes import GENERATOR_VERSION, SceneConfig, Scenes, generate_crops, generate_scenes

FORMAT_VERSION = 1
SCENES_FILE = "scenes.npz"
MANIFEST_FILE = "manifest.json"

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "CropConfig", "DatasetSpec", "build_dataset", "save_dataset",
           "load_dataset", "get_dataset", "dataset_key", "dataset_folder", "default_cache_dir"]


@dataclass
class CropConfig:
    """Random crops taken from every generated scene (the paper's transfer experiment)."""

    size: tuple[int, int] = param((48, 48), lo=1, help="(height, width) of each crop in pixels")
    n_per_image: int = param(4, lo=1, help="crops taken from each generated scene")

    def __post_init__(self) -> None:
        if not isinstance(self.size, (tuple, list)) or len(self.size) != 2:
            raise ConfigError(f"crop.size: expected (height, width), got {self.size!r}")
        self.size = (int(self.size[0]), int(self.size[1]))
        if min(self.size) < 1:
            raise ConfigError(f"crop.size: both sides must be at least 1 pixel, got {self.size}")
        if self.n_per_image < 1:
            raise ConfigError(f"crop.n_per_image: must be at least 1, got {self.n_per_image}")


@dataclass
class DatasetSpec:
    """Everything that determines a generated dataset: scenes, how many, seed, optional crops.

    With ``crop``, the dataset holds ``n_images · crop.n_per_image`` crops of ``n_images`` scenes.
    """

    scene: SceneConfig = param(help="scene generator settings")
    n_images: int = param(lo=0, help="number of scenes to generate (before cropping)")
    seed: int = param(lo=0, help="seed of the generator; the same seed gives the same dataset")
    crop: CropConfig | None = param(None, help="random crops of each scene (none: whole scenes)")

    def __post_init__(self) -> None:
        if self.n_images < 0:
            raise ConfigError(f"n_images: must not be negative, got {self.n_images}")
        if self.seed < 0:
            raise ConfigError(f"seed: must not be negative, got {self.seed}")
        if self.crop is not None:
            (ch, cw), (h, w) = self.crop.size, self.scene.image_size
            if ch > h or cw > w:
                raise ConfigError(f"crop.size: {ch}x{cw} crops do not fit in {h}x{w} scenes")


# --------------------------------------------------------------------------------------------
# Building


def build_dataset(spec: DatasetSpec, *, cache_dir: str | os.PathLike | None = None) -> Scenes:
    """Generate the dataset ``spec`` describes (digits read from ``cache_dir`` when fetched).

    The scenes are ``generate_scenes(spec.scene, spec.n_images, spec.seed)``; with ``spec.crop``
    they are replaced by their random crops (:func:`spair.data.scenes.generate_crops`).
    """
    sc = spec.scene
    pool = load_digits(sc.digit_source, sc.split, sc.object_size, cache_dir=cache_dir)
    if spec.crop is None:
        return generate_scenes(sc, spec.n_images, spec.seed, pool)
    return generate_crops(sc, spec.n_images, spec.seed, spec.crop.size, spec.crop.n_per_image, pool)


# --------------------------------------------------------------------------------------------
# Saving and loading


def _scenes_arrays(scenes: Scenes) -> dict[str, np.ndarray]:
    counts = np.array([len(b) for b in scenes.boxes], dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    boxes = (np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in scenes.boxes])
             if len(scenes.boxes) else np.zeros((0, 4), np.float32))
    labels = (np.concatenate([np.asarray(x, np.int64).reshape(-1) for x in scenes.labels])
              if len(scenes.labels) else np.zeros(0, np.int64))
    return {"images": np.asarray(scenes.images), "boxes": boxes.astype(np.float32),
            "offsets": offsets, "labels": labels, "backgrounds": np.asarray(scenes.backgrounds)}


def _check_arrays(a: dict[str, np.ndarray], where: str) -> None:
    """Raise DataError unless ``a`` holds a consistent dataset (format in the module docstring)."""
    for key in ("images", "boxes", "offsets", "labels", "backgrounds"):
        if key not in a:
            raise DataError(f"{where}: missing array '{key}'")
    images, boxes, offsets, labels, bgs = (a[k] for k in ("images", "boxes", "offsets", "labels",
                                                           "backgrounds"))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"{where}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n = images.shape[0]
    if offsets.shape != (n + 1,) or not np.issubdtype(offsets.dtype, np.integer):
        raise DataError(f"{where}: offsets must be integers of shape ({n + 1},), got {offsets.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.floating):
        raise DataError(f"{where}: boxes must be float (M, 4), got {boxes.dtype} {boxes.shape}")
    m = boxes.shape[0]
    if n and (offsets[0] != 0 or offsets[-1] != m or np.any(np.diff(offsets) < 0)):
        raise DataError(f"{where}: offsets are inconsistent with {m} boxes "
                        "(must start at 0, never decrease and end at the number of boxes)")
    if not n and (offsets[0] != 0 or m):
        raise DataError(f"{where}: offsets are inconsistent with {m} boxes")
    if labels.shape != (m,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers of shape ({m},), got {labels.dtype} {labels.shape}")
    if bgs.shape != (n, 3) or bgs.dtype != np.uint8:
        raise DataError(f"{where}: backgrounds must be uint8 ({n}, 3), got {bgs.dtype} {bgs.shape}")
    if not np.all(np.isfinite(boxes)):
        raise DataError(f"{where}: boxes contain NaN or infinite values")
    if np.any(boxes < 0):
        raise DataError(f"{where}: boxes contain negative coordinates")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise DataError(f"{where}: boxes with x1 < x0 or y1 < y0")


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``arrays`` (in order): the same for
    the same data whatever zip compression stored it."""
    h = hashlib.sha256()
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def save_dataset(folder: str | os.PathLike, scenes: Scenes, spec: DatasetSpec | dict | None = None,
                 extra: dict | None = None, *, kind: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
    """Write ``scenes`` into ``folder`` as ``scenes.npz`` + ``manifest.json``.

    Args:
        folder: created if needed. An existing manifest is removed first and the new one is
            written last, so an interrupted save leaves a folder that does not load.
        scenes: the images, boxes, labels and backgrounds to store.
        spec: a :class:`DatasetSpec` (kind ``"scenes"``; the digit file's hash is recorded), or
            any JSON-able dict describing another kind of dataset, or None.
        extra: JSON-able data stored under ``manifest["extra"]``.
        kind: the manifest's ``kind`` (default ``"scenes"`` for a DatasetSpec, else ``"images"``).
        cache_dir: where fetched digit sources live (to hash the digit file of ``spec``).
    """
    folder = Path(folder)
    arrays = _scenes_arrays(scenes)
    _check_arrays(arrays, f"dataset for {folder}")
    manifest: dict[str, Any] = {"format": FORMAT_VERSION}
    if isinstance(spec, DatasetSpec):
        manifest["kind"] = kind or "scenes"
        manifest["spec"] = to_dict(spec)
        manifest["seed"] = spec.seed
    else:
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"save_dataset: spec must be a DatasetSpec or a dict, got {type(spec).__name__}")
        manifest["kind"] = kind or "images"
        manifest["spec"] = spec
        manifest["seed"] = spec.get("seed") if isinstance(spec, dict) else None
    n, h, w = arrays["images"].shape[:3]
    manifest.update(n_images=int(n), image_size=[int(h), int(w)], n_boxes=int(len(arrays["boxes"])))
    if isinstance(spec, DatasetSpec):
        src = spec.scene.digit_source
        manifest.update(digit_source=src, digit_sha256=digit_file_sha256(src, cache_dir),
                        ink_threshold=INK_THRESHOLD, generator_version=GENERATOR_VERSION)
        manifest["key"] = dataset_key(spec, manifest["digit_sha256"])
    if extra is not None:
        manifest["extra"] = extra
    try:
        _canonical(manifest)
    except (TypeError, ValueError) as e:
        raise SpairError(f"dataset manifest for {folder} is not plain JSON data: {e}") from None

    manifest_path = folder / MANIFEST_FILE
    if manifest_path.exists():
        manifest_path.unlink()
    write_npz_atomic(folder / SCENES_FILE, arrays)
    manifest["sha256"] = sha256_file(folder / SCENES_FILE)
    manifest["content_sha256"] = content_sha256(arrays)
    manifest["spair_version"] = __version__
    write_json_atomic(manifest_path, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a dataset folder (DataError if missing, unreadable or of another format)."""
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = read_json(path, "dataset manifest")
    except SpairError as e:
        raise DataError(str(e)) from None
    if not isinstance(manifest, dict):
        raise DataError(f"dataset manifest {path} is not a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise DataError(f"dataset manifest {path} has format {fmt!r}; this spair reads format {FORMAT_VERSION}")
    if not isinstance(manifest.get("sha256"), str):
        raise DataError(f"dataset manifest {path} has no sha256")
    return manifest


def load_dataset(folder: str | os.PathLike, verify: bool = True) -> Scenes:
    """Read a dataset folder written by :func:`save_dataset`.

    Raises DataError (naming the file) when the folder, the manifest or ``scenes.npz`` is
    missing, when ``scenes.npz`` does not match the manifest's sha256 (checked unless
    ``verify=False``), or when the arrays are inconsistent (shapes, offsets, NaN/inf or negative
    box values). The returned scenes carry no placements.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    manifest = read_manifest(folder)
    npz = folder / SCENES_FILE
    if not npz.is_file():
        raise DataError(f"dataset file not found: {npz}")
    if verify and sha256_file(npz) != manifest["sha256"]:
        raise DataError(f"{npz}: sha256 does not match its manifest (the file is corrupt or was changed)")
    arrays = read_npz(npz, "dataset file")
    _check_arrays(arrays, str(npz))
    n = arrays["images"].shape[0]
    if manifest.get("n_images") != n:
        raise DataError(f"{npz}: holds {n} images, its manifest says {manifest.get('n_images')}")
    cuts = arrays["offsets"][1:-1]
    return Scenes(images=arrays["images"],
                  boxes=np.split(arrays["boxes"].astype(np.float32), cuts) if n else [],
                  labels=np.split(arrays["labels"].astype(np.int64), cuts) if n else [],
                  backgrounds=arrays["backgrounds"])


# --------------------------------------------------------------------------------------------
# Cache


def dataset_key(spec: DatasetSpec, digit_sha256: str) -> str:
    """12 hex digits identifying the dataset ``spec`` generates from the digit file with
    sha256 ``digit_sha256`` (see the module docstring)."""
    ident = {"format": FORMAT_VERSION, "generator_version": GENERATOR_VERSION,
             "ink_threshold": INK_THRESHOLD, "digit_sha256": digit_sha256, "spec": to_dict(spec)}
    return hashlib.sha256(_canonical(ident).encode()).hexdigest()[:12]


def dataset_folder(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/datasets/<name>-<key>``: where :func:`get_dataset` keeps ``spec``'s dataset.

    ``name`` is readable, e.g. ``train-84x84-n1-5-crop48x48x4-25000``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sc = spec.scene
    name = f"{sc.split}-{sc.image_size[0]}x{sc.image_size[1]}-n{sc.n_objects[0]}-{sc.n_objects[1]}"
    if spec.crop is not None:
        name += f"-crop{spec.crop.size[0]}x{spec.crop.size[1]}x{spec.crop.n_per_image}"
    name += f"-{spec.n_images}"
    key = dataset_key(spec, digit_file_sha256(sc.digit_source, root))
    return root / "datasets" / f"{name}-{key}"


def get_dataset(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None) -> Scenes:
    """The dataset ``spec`` describes, from the cache when present and valid, else generated
    (and stored in the cache). The result is the same either way and carries no placements."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = dataset_folder(spec, root)
    if (folder / MANIFEST_FILE).exists() or (folder / SCENES_FILE).exists():
        try:
            manifest = read_manifest(folder)
            if manifest.get("key") != folder.name.rsplit("-", 1)[-1] or \
                    _canonical(manifest.get("spec")) != _canonical(to_dict(spec)):
                raise DataError(f"{folder / MANIFEST_FILE} describes another dataset")
            return load_dataset(folder)
        except DataError as e:
            warnings.warn(f"regenerating cached dataset {folder.name}: {e}", stacklevel=2)
    else:
        log.info("generating dataset %s", folder)
    scenes = build_dataset(spec, cache_dir=root)
    save_dataset(folder, scenes, spec, cache_dir=root)
    return Scenes(scenes.images, scenes.boxes, scenes.labels, scenes.backgrounds)
