"""ConnComp: the connected-components baseline of the SPAIR paper (section 5.1).

For an image ``x`` with background colour ``bg`` the *difference map* is

    d(p) = Σ_c |x_c(p) - bg_c| / 255          (uint8 images; without the /255 for float images in [0, 1])

summed over the three colour channels, so ``d`` lies in ``[0, 3]``. The foreground is
``d(p) > tau`` (strictly, as the paper says; the authors' code used ``>=``). Foreground pixels are
grouped into 4-connected components (``scipy.ndimage.label`` with its default structure) and
every component becomes one detection whose box is the component's **continuous extent**:
``x0 = min column, x1 = max column + 1, y0 = min row, y1 = max row + 1`` (the authors' code
reported ``max`` without the ``+ 1``; we use the convention of ``docs/architecture.md``).
Boxes of an image are ordered by the raster position of each component's first pixel.

The background is the known colour of the image when given, otherwise the most frequent colour
of the image (ties go to the smallest ``(R << 16) | (G << 8) | B``).

**Scores.** ``score="mass"`` (the default) gives each component the ink mass
``m = Σ_{p in component} d(p)`` mapped to ``m / (m + 1)``, a number in ``(0, 1)`` that
increases with the mass, so small specks and fragments rank below whole objects in COCO AP;
``score="constant"`` gives every component 1.0, as in the paper. ``docs/metrics.md`` reports
both on generated scenes. The paper's protocol (SPAIR-AP) ignores scores altogether.

Everything is vectorized over stacks of equally sized images: one ``label`` call labels a whole
``(n, H, W)`` stack with a structure that does not connect neighbouring images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, DataError
from ..io import read_json, write_json_atomic
from ..metrics import count_errors, spair_ap
from ..metrics.ap import as_boxes
from .detector import Detections, register_detector

ScoreMode = Literal["mass", "constant"]
TuneMetric = Literal["ap", "count_abs", "count_01"]

DEFAULT_TAU = 0.3
DEFAULT_GRID = np.linspace(0.01, 3.0, 100)
"""The τ grid of the authors' search: ``linspace(0.01, 3.0, 100)``."""

_MAX_CHUNK_PIXELS = 1 << 22  # images labelled together at most (memory bound)
# 4-connectivity inside each image of an (n, H, W) stack, no connection between images.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)
_TAU_FILE_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _as_image(image: object, where: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 or float64 image; grey ``(H, W)`` images are replicated to 3 channels."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{where}: expected an image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise DataError(f"{where}: float images must hold finite values in [0, 1]")
        return arr.astype(np.float64, copy=False)
    raise DataError(f"{where}: expected a uint8 image or a float image in [0, 1], got dtype {arr.dtype}")


def _as_backgrounds(colours: object, image_dtype: np.dtype, where: str) -> np.ndarray:
    """Background colours ``(k, 3)`` in the units of the images (0..255 for uint8, [0, 1] for float).

    uint8 images get int16 colours (ready for exact integer differences), float images float64.
    """
    try:
        arr = np.asarray(colours, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: a background colour is three numbers (R, G, B)") from None
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.isfinite(arr).all():
        raise DataError(f"{where}: a background colour is three numbers (R, G, B)")
    if image_dtype == np.uint8:
        if (arr < 0).any() or (arr > 255).any() or (arr != np.round(arr)).any():
            raise DataError(f"{where}: the background of a uint8 image must be integers in 0..255")
        return arr.astype(np.int16)
    if (arr < 0).any() or (arr > 1).any():
        raise DataError(f"{where}: the background of a float image must lie in [0, 1]")
    return arr


def _as_background(colour: object, image_dtype: np.dtype, where: str) -> np.ndarray:
    """One background colour ``(3,)``; a single number stands for a grey ``(v, v, v)``."""
    try:
        arr = np.asarray(colour, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where}: a background colour is three numbers (R, G, B)") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    return _as_backgrounds(arr.reshape(1, -1), image_dtype, where)[0]


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(tau)) or tau < 0:
        raise ConfigError(f"tau: must be a finite number >= 0, got {tau!r}")
    return float(tau)


def _check_colour(colour: object) -> np.ndarray:
    """A detector-wide background colour: 3 (or 1, for grey) finite numbers >= 0, as float64."""
    try:
        arr = np.asarray(colour, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.size not in (1, 3) or not np.isfinite(arr).all() or (arr < 0).any():
        raise ConfigError(f"background: expected an (R, G, B) colour, got {colour!r}")
    return arr


def _check_score(score: str) -> str:
    if score not in ("mass", "constant"):
        raise ConfigError(f"score: expected 'mass' or 'constant', got {score!r}")
    return score


# ---------------------------------------------------------------------------------------------
# Background and difference map
# ---------------------------------------------------------------------------------------------

def _mode_colours_uint8(stack: np.ndarray) -> np.ndarray:
    """Most frequent colour of each uint8 image of an ``(n, H, W, 3)`` stack, as ``(n, 3)`` uint8."""
    n = stack.shape[0]
    flat = stack.reshape(n, -1, 3).astype(np.int32)
    packed = np.sort((flat[..., 0] << 16) | (flat[..., 1] << 8) | flat[..., 2], axis=1)
    positions = np.arange(packed.shape[1])
    run_start = np.ones(packed.shape, dtype=bool)
    run_start[:, 1:] = packed[:, 1:] != packed[:, :-1]
    first_of_run = np.maximum.accumulate(np.where(run_start, positions, 0), axis=1)
    run_length = positions - first_of_run + 1  # length of the run so far, at each position
    best = packed[np.arange(n), run_length.argmax(axis=1)]  # first longest run: smallest colour
    return np.stack([(best >> 16) & 255, (best >> 8) & 255, best & 255], axis=1).astype(np.uint8)


def estimate_background(image: np.ndarray) -> np.ndarray:
    """The most frequent colour of ``image`` (``(3,)``, same dtype as the image).

    Ties go to the smallest packed value ``(R << 16) | (G << 8) | B`` (for float images: the
    lexicographically smallest colour).
    """
    img = _as_image(image, "image")
    if img.dtype == np.uint8:
        return _mode_colours_uint8(img[None])[0]
    colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()]


@dataclass
class _DiffStack:
    """Difference maps of equally sized images: ``d = diff / scale``.

    uint8 images keep the exact integer ``Σ_c |x_c - bg_c|`` (``scale`` 255), float images
    keep ``d`` itself (``scale`` 1).
    """

    diff: np.ndarray  # (n, H, W) int16 or float64
    scale: float

    def foreground(self, tau: float) -> np.ndarray:
        """The mask ``d > tau``, evaluated exactly as the float64 comparison ``diff / scale > tau``."""
        if self.diff.dtype.kind == "f":
            return self.diff > tau
        # Largest integer s with s / 255 <= tau (in float64); then d > tau  <=>  diff > s.
        levels = np.arange(766) / self.scale
        s_max = int(np.searchsorted(levels, tau, side="right")) - 1
        return self.diff > s_max


def _difference_stack(stack: np.ndarray, backgrounds: np.ndarray) -> _DiffStack:
    """Difference maps of an ``(n, H, W, 3)`` stack against per-image backgrounds ``(n, 3)``."""
    if stack.dtype == np.uint8:
        diff = np.abs(stack.astype(np.int16) - backgrounds.astype(np.int16)[:, None, None, :]).sum(
            axis=-1, dtype=np.int16)
        return _DiffStack(diff, 255.0)
    diff = np.abs(stack - backgrounds[:, None, None, :]).sum(axis=-1)
    return _DiffStack(diff, 1.0)


def difference_map(image: np.ndarray, background: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """The difference map ``d`` of one image (module docstring), as float64 ``(H, W)``."""
    img = _as_image(image, "image")
    bg = estimate_background(img) if background is None else background
    ds = _difference_stack(img[None], _as_background(bg, img.dtype, "background")[None])
    return ds.diff[0] / ds.scale


# ---------------------------------------------------------------------------------------------
# Components to boxes
# ---------------------------------------------------------------------------------------------

def _detect_stack(ds: _DiffStack, tau: float, score: str) -> list[Detections]:
    """Components of every image of a difference stack, one :class:`Detections` per image."""
    n = ds.diff.shape[0]
    labels, n_labels = ndimage.label(ds.foreground(tau), structure=_STACK_STRUCTURE)
    if n_labels == 0:
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(n)]
    flat = np.flatnonzero(labels)
    img, row, col = np.unravel_index(flat, labels.shape)
    lab = labels.reshape(-1)[flat] - 1
    # Order the components by their first pixel in raster order of the stack (image by image).
    first = np.full(n_labels, labels.size, dtype=np.int64)
    np.minimum.at(first, lab, flat)
    rank = np.empty(n_labels, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(n_labels)
    lab = rank[lab]
    x0 = np.full(n_labels, np.iinfo(np.int64).max)
    y0 = np.full(n_labels, np.iinfo(np.int64).max)
    x1 = np.full(n_labels, -1)
    y1 = np.full(n_labels, -1)
    np.minimum.at(x0, lab, col)
    np.maximum.at(x1, lab, col)
    np.minimum.at(y0, lab, row)
    np.maximum.at(y1, lab, row)
    owner = np.zeros(n_labels, dtype=np.int64)
    owner[lab] = img  # every pixel of a component lies in the same image
    boxes = np.stack([x0, y0, x1 + 1, y1 + 1], axis=1).astype(np.float32)
    if score == "mass":
        mass = np.bincount(lab, weights=ds.diff.reshape(-1)[flat], minlength=n_labels) / ds.scale
        scores = (mass / (mass + 1.0)).astype(np.float32)
    else:
        scores = np.ones(n_labels, dtype=np.float32)
    splits = np.searchsorted(owner, np.arange(1, n))  # labels are sorted by image
    return [Detections(b, s) for b, s in zip(np.split(boxes, splits), np.split(scores, splits))]


def _chunks(n: int, pixels_per_image: int) -> Iterator[slice]:
    step = max(1, _MAX_CHUNK_PIXELS // max(pixels_per_image, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _difference_stacks(images: Sequence[np.ndarray] | np.ndarray,
                       backgrounds: Sequence[object] | np.ndarray | None,
                       fixed_background: object | None = None
                       ) -> list[tuple[np.ndarray, _DiffStack]]:
    """Group images by shape and dtype and compute their difference maps in chunks.

    Returns ``(indices, stack)`` pairs covering every image once. Background of image ``i``:
    ``backgrounds[i]`` if given, else ``fixed_background`` if given, else estimated.
    """
    n = len(images)
    if backgrounds is not None and len(backgrounds) != n:
        raise DataError(f"backgrounds: {len(backgrounds)} colours for {n} images")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        groups = {(images.shape[1:], images.dtype): list(range(n))}
        arrays = None
    else:
        arrays = [_as_image(im, f"images[{i}]") for i, im in enumerate(images)]
        groups = {}
        for i, a in enumerate(arrays):
            groups.setdefault((a.shape, a.dtype), []).append(i)

    result = []
    for (shape, _dtype), members in groups.items():
        idx_all = np.asarray(members, dtype=np.int64)
        for part in _chunks(len(idx_all), int(shape[0]) * int(shape[1])):
            idx = idx_all[part]
            if arrays is None:
                stack = _as_image_stack(images[part], part)
            else:
                stack = np.stack([arrays[i] for i in idx])
            if isinstance(backgrounds, np.ndarray):
                bgs = _as_backgrounds(backgrounds[idx], stack.dtype, "backgrounds")
            elif backgrounds is not None:
                bgs = np.stack([_as_background(backgrounds[i], stack.dtype, f"backgrounds[{i}]") for i in idx])
            elif fixed_background is not None:
                bg = _as_background(fixed_background, stack.dtype, "background")
                bgs = np.broadcast_to(bg, (len(idx), 3))
            elif stack.dtype == np.uint8:
                bgs = _mode_colours_uint8(stack)
            else:
                bgs = np.stack([estimate_background(im) for im in stack])
            result.append((idx, _difference_stack(stack, bgs)))
    return result


def _as_image_stack(stack: np.ndarray, part: slice) -> np.ndarray:
    """Check a slice of an ``(n, H, W, 3)`` array of images (uint8, or float in [0, 1])."""
    if stack.shape[-1] != 3 or stack.shape[1] == 0 or stack.shape[2] == 0:
        raise DataError(f"images: expected shape (N, H, W, 3), got {stack.shape}")
    if stack.dtype == np.uint8:
        return stack
    if np.issubdtype(stack.dtype, np.floating):
        if not np.isfinite(stack).all() or stack.min() < 0.0 or stack.max() > 1.0:
            raise DataError(f"images[{part.start}:{part.stop}]: float images must hold finite values in [0, 1]")
        return stack.astype(np.float64, copy=False)
    raise DataError(f"images: expected uint8 images or float images in [0, 1], got dtype {stack.dtype}")


def _detect_all(stacks: list[tuple[np.ndarray, _DiffStack]], n: int, tau: float, score: str) -> list[Detections]:
    out: list[Detections | None] = [None] * n
    for idx, ds in stacks:
        for i, det in zip(idx, _detect_stack(ds, tau, score)):
            out[int(i)] = det
    return out  # type: ignore[return-value]


def conncomp_boxes(image: np.ndarray, tau: float,
                   background: np.ndarray | Sequence[float] | None = None,
                   score: ScoreMode = "mass") -> Detections:
    """ConnComp detections of one image (definitions in the module docstring).

    Args:
        image: ``uint8`` ``(H, W, 3)`` (or ``(H, W)`` grey), or float in ``[0, 1]``.
        tau: foreground threshold on the difference map; a pixel is foreground when ``d > tau``.
        background: the background colour in the image's units (0..255 for uint8, [0, 1] for
            float); None estimates it as the most frequent colour of the image.
        score: ``"mass"`` (``m / (m + 1)`` of the component's ink mass) or ``"constant"`` (1.0).
    """
    tau = _check_tau(tau)
    score = _check_score(score)
    img = _as_image(image, "image")
    stacks = _difference_stacks([img], None, background)
    return _detect_all(stacks, 1, tau, score)[0]


@register_detector("conncomp")
class ConnCompDetector:
    """The ConnComp baseline as a :class:`~spair.models.detector.Detector`.

    Args:
        tau: foreground threshold on the difference map (``d > tau``).
        background: one background colour for every image (0..255); None estimates it per image.
            Colours passed to :meth:`detect` take precedence.
        score: ``"mass"`` (default) or ``"constant"``; see the module docstring.
    """

    name = "conncomp"

    def __init__(self, tau: float = DEFAULT_TAU, background: Sequence[float] | np.ndarray | None = None,
                 score: ScoreMode = "mass") -> None:
        self.tau = _check_tau(tau)
        self.background = None if background is None else _check_colour(background)
        self.score = _check_score(score)

    def detect(self, images: Sequence[np.ndarray] | np.ndarray,
               backgrounds: Sequence[np.ndarray] | np.ndarray | None = None) -> list[Detections]:
        """One :class:`Detections` per image (any sizes), in order."""
        stacks = _difference_stacks(images, backgrounds, self.background)
        return _detect_all(stacks, len(images), self.tau, self.score)

    def __repr__(self) -> str:
        return f"ConnCompDetector(tau={self.tau:g}, background={self.background}, score={self.score!r})"


# ---------------------------------------------------------------------------------------------
# Choosing tau on validation data
# ---------------------------------------------------------------------------------------------

_METRIC_KEYS = {"ap": "AP", "count_abs": "count_abs_error", "count_01": "count_01_error"}


def tune_tau(images: Sequence[np.ndarray] | np.ndarray, gt_boxes: Sequence[np.ndarray],
             backgrounds: Sequence[np.ndarray] | np.ndarray | None = None, metric: TuneMetric = "ap",
             grid: Sequence[float] | np.ndarray = DEFAULT_GRID, batch_size: int = 32
             ) -> tuple[float, list[dict[str, float]]]:
    """Grid search of ``tau`` on validation images with ground-truth boxes.

    For every ``tau`` of ``grid`` the table row holds ``"tau"``, the count metrics of
    :func:`spair.metrics.count_errors` (``"count_abs_error"``, ``"count_01_error"``,
    ``"count_bias"``) and, when ``metric == "ap"``, ``"AP"``: SPAIR-AP, the paper's protocol
    (confidence 1.0, batches of ``batch_size``). ``metric`` picks the criterion: ``"ap"`` is
    maximised, ``"count_abs"`` (count absolute error) and ``"count_01"`` (count 0-1 error) are
    minimised; ties go to the first ``tau`` in grid order.

    The difference maps are computed once; each ``tau`` then costs one labelling pass.

    Returns:
        ``(best_tau, table)``.
    """
    if metric not in _METRIC_KEYS:
        raise ConfigError(f"metric: expected one of {', '.join(_METRIC_KEYS)}, got {metric!r}")
    taus = np.asarray(grid, dtype=np.float64).reshape(-1)
    if taus.size == 0:
        raise ConfigError("grid: at least one tau value is needed")
    for t in taus:
        _check_tau(float(t))
    if len(gt_boxes) != len(images):
        raise DataError(f"gt_boxes has {len(gt_boxes)} images but images has {len(images)}")
    n = len(images)
    gts = [as_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
    true_counts = [len(g) for g in gts]
    stacks = _difference_stacks(images, backgrounds)

    table: list[dict[str, float]] = []
    for tau in taus:
        detections = _detect_all(stacks, n, float(tau), "constant")
        row: dict[str, float] = {"tau": float(tau)}
        row.update(count_errors([len(d) for d in detections], true_counts))
        if metric == "ap":
            row["AP"] = spair_ap([d.boxes for d in detections], gts, batch_size=batch_size)["AP"]
        table.append(row)

    values = np.array([row[_METRIC_KEYS[metric]] for row in table])
    values = np.where(np.isnan(values), -np.inf if metric == "ap" else np.inf, values)
    best = int(values.argmax() if metric == "ap" else values.argmin())
    return float(taus[best]), table


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy values to Python, tuples to lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a tau file")


def save_tau(path: str | Path, tau: float, info: dict[str, Any] | None = None) -> None:
    """Write a tuned ``tau`` and how it was obtained to a small JSON file (atomically).

    ``info`` is free-form; by convention it holds ``"metric"``, ``"grid"``, ``"data"`` (a
    description of the validation set) and ``"table"`` (the rows of :func:`tune_tau`). File
    layout: ``{"format": 1, "method": "conncomp", "tau": ..., "info": {...}}``.
    """
    tau = _check_tau(tau)
    write_json_atomic(path, {"format": _TAU_FILE_FORMAT, "method": "conncomp", "tau": tau,
                             "info": _jsonable(info or {})})


def load_tau(path: str | Path) -> tuple[float, dict[str, Any]]:
    """Read a file written by :func:`save_tau`: ``(tau, info)``. Errors name the file."""
    data = read_json(path, "tau file")
    if not isinstance(data, dict) or data.get("method") != "conncomp" or data.get("format") != _TAU_FILE_FORMAT:
        raise ConfigError(f"{path}: not a ConnComp tau file (format {_TAU_FILE_FORMAT})")
    tau = data.get("tau")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"{path}: 'tau' must be a finite number >= 0, got {tau!r}")
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: 'info' must be a table")
    return float(tau), info
