"""Images of the card game SET (paper section 5.3, Table 1; spec section 8.6).

**Cards.** A card has three attributes with three values each: a colour (red, green, blue), a
shape (circle, square, diamond) and a number (1, 2 or 3 black vertical bars), so the deck holds
27 cards. Card ``i`` has ``colour = i // 9``, ``shape = (i // 3) % 3``, ``number = i % 3 + 1``
(:func:`card_attributes`). A *SET* is three cards whose values are, for every attribute, all
equal or all different; with values coded 0, 1, 2 that is "every attribute sums to 0 mod 3"
(three equal values sum to 3v, three different ones to 0 + 1 + 2 = 3, and two equal values ``a``
with a different ``b`` give ``2a + b ≢ 0``).

**A card's patch** is 14×14 RGBA: the shape's alpha mask coloured with the card's colour, with
the bar glyph (opaque black bars) composited on top; alpha = min(shape alpha + glyph alpha, 255).
Shapes are drawn by exact area coverage (8×8 supersampling per pixel): a disc of radius 6.5
centred in the patch, a 12×12 square, and a diamond whose corners touch the middle of each
edge. Bars are 2 px wide, 4 px tall (rows 5–8), 2 px apart, centred. Coverages below the
project's ink threshold (``spair.data.digits.INK_THRESHOLD``, 10 %) are set to 0, so a pixel
with non-zero alpha is a visible pixel, as for the digits.

**An image** (48×48 by default) holds 7 distinct cards: for every image, in order,

1. the label is drawn first (``balanced=True``): "has a SET" or "has none", each with
   probability ½; then hands of 7 distinct cards (the first 7 of a random permutation of the
   deck) are drawn until the hand agrees with the label. A random hand holds a SET with
   probability about 0.86, so negative images need about 7 draws. With ``balanced=False`` one
   hand is drawn and the label is whatever it is;
2. the background colour is drawn uniformly from ``background_colours`` (cyan, magenta,
   yellow);
3. the cards get top-left corners as the digits of :mod:`spair.data.scenes` do: uniformly among
   the integer positions whose square's *summed* overlap with the cards already placed is at
   most ``max_overlap`` (14·14/3 px², the authors' value for SET); when no position is left the
   positions of the image are drawn again;
4. the cards are composited "over" in placement order, rounded to ``uint8`` as the digit scenes
   are.

**Ground truth.** Per object: the box (extent of the card's non-zero alpha, continuous
coordinates, also where a later card covers it) and the card id (``Scenes.labels``); per image:
the target (1 = some 3 of the 7 cards form a SET), which is a function of the card ids
(:func:`has_set`). One ``numpy.random.Generator`` (``default_rng(seed)``) is consumed image by
image, so the same seed and settings give byte-identical images, and the first ``k`` images of
a larger call are the images of a call with ``n = k``.

**On disk** a SET dataset is an ordinary dataset folder of :mod:`spair.data.datasets`
(``scenes.npz`` + ``manifest.json``, kind ``"set-cards"``); the manifest's ``spec`` is the
:class:`SetSpec` and ``extra`` holds the number of positive images, which loading checks
against the targets recomputed from the card ids. :func:`get_set_dataset` caches datasets in
``<cache>/datasets/set-...-<key>/`` like :func:`spair.data.datasets.get_dataset`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import param, to_dict
from ..errors import ConfigError, DataError
from .datasets import FORMAT_VERSION, MANIFEST_FILE, SCENES_FILE, load_dataset, read_manifest, save_dataset
from .digits import INK_THRESHOLD, default_cache_dir
from .scenes import MAX_RESTARTS, Placer, Scenes, pick

log = logging.getLogger(__name__)

SET_GENERATOR_VERSION = 1
"""Raised whenever a change makes the same settings and seed give different images; part of the
cache key, so cached SET datasets are regenerated."""

KIND = "set-cards"
"""``kind`` of a SET dataset's manifest."""

COLOURS: dict[str, tuple[int, int, int]] = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}
"""Card colours (matplotlib's named colours, as the authors' generator used)."""
SHAPES: tuple[str, ...] = ("circle", "square", "diamond")
NUMBERS: tuple[int, ...] = (1, 2, 3)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"cyan": (0, 255, 255), "magenta": (255, 0, 255),
                                                 "yellow": (255, 255, 0)}
N_CARDS = len(COLOURS) * len(SHAPES) * len(NUMBERS)
"""27: every combination of colour, shape and number once."""
CARD_SIZE = 14
"""Side of a card's patch in pixels."""
MAX_SET_FREE = 9
"""The most cards that can hold no SET (the largest cap set of three attributes); every hand of
10 or more cards contains a SET."""
MAX_HAND_DRAWS = 10000
"""Hands drawn for one image before the generator gives up on the drawn label."""

_SUPERSAMPLE = 8
_TRIPLES = np.array(list(itertools.combinations(range(7), 3)), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# The rules


def card_attributes(cards: Any) -> np.ndarray:
    """``int64 (..., 3)``: (colour, shape, number − 1) of card ids in 0..26, each coded 0..2."""
    c = np.asarray(cards, dtype=np.int64)
    if c.size and (c.min() < 0 or c.max() >= N_CARDS):
        raise DataError(f"card ids must lie in 0..{N_CARDS - 1}, got values {c.min()}..{c.max()}")
    return np.stack([c // 9, (c // 3) % 3, c % 3], axis=-1)


def card_name(card: int) -> str:
    """A readable name, e.g. ``"2 red diamonds"``."""
    colour, shape, number = card_attributes(card).tolist()
    n = number + 1
    return f"{n} {list(COLOURS)[colour]} {SHAPES[shape]}{'s' if n > 1 else ''}"


def is_set(a: int, b: int, c: int) -> bool:
    """Whether three cards form a SET: every attribute all equal or all different."""
    attrs = card_attributes([a, b, c])
    return bool(((attrs.sum(0) % 3) == 0).all())


def has_set(cards: Any) -> bool:
    """Whether some three of the given cards (any number of distinct ids) form a SET."""
    attrs = card_attributes(cards).reshape(-1, 3)
    n = len(attrs)
    if n < 3:
        return False
    triples = _TRIPLES if n == 7 else np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64)
    return bool(((attrs[triples].sum(1) % 3) == 0).all(-1).any())


def set_targets(labels: list[np.ndarray]) -> np.ndarray:
    """``int64 (N,)``: 1 for the images whose cards (ids per image) contain a SET, else 0."""
    return np.array([int(has_set(cards)) for cards in labels], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Card patches


def _coverage(inside: Any, size: int = CARD_SIZE) -> np.ndarray:
    """Fraction of each pixel of a ``size × size`` patch where ``inside(x, y)`` holds, by
    ``_SUPERSAMPLE²`` samples per pixel; x, y are continuous coordinates (pixel j spans [j, j+1))."""
    s = _SUPERSAMPLE
    offsets = (np.arange(s) + 0.5) / s
    coords = (np.arange(size)[:, None] + offsets[None, :]).reshape(-1)        # (size·s,)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    hit = inside(x, y).astype(np.float64)
    return hit.reshape(size, s, size, s).mean(axis=(1, 3))


def _to_alpha(coverage: np.ndarray) -> np.ndarray:
    """Coverage → uint8 alpha (rounded), values below the ink threshold removed."""
    alpha = np.floor(coverage * 255.0 + 0.5).astype(np.uint8)
    alpha[alpha < INK_THRESHOLD * 255.0] = 0
    return alpha


@functools.lru_cache(maxsize=1)
def shape_masks() -> np.ndarray:
    """``uint8 (3, 14, 14)``: the alpha masks of circle, square and diamond (read-only)."""
    c = CARD_SIZE / 2.0
    masks = np.stack([
        _to_alpha(_coverage(lambda x, y: (x - c) ** 2 + (y - c) ** 2 <= 6.5 ** 2)),
        _to_alpha(_coverage(lambda x, y: (np.abs(x - c) <= 6.0) & (np.abs(y - c) <= 6.0))),
        _to_alpha(_coverage(lambda x, y: np.abs(x - c) + np.abs(y - c) <= c)),
    ])
    masks.setflags(write=False)
    return masks


@functools.lru_cache(maxsize=1)
def bar_glyphs() -> np.ndarray:
    """``uint8 (3, 14, 14)``: the alpha of 1, 2 and 3 black vertical bars (read-only)."""
    glyphs = np.zeros((3, CARD_SIZE, CARD_SIZE), np.uint8)
    width, gap, rows = 2, 2, slice(5, 9)
    for k, n in enumerate(NUMBERS):
        total = n * width + (n - 1) * gap
        left = (CARD_SIZE - total) // 2
        for b in range(n):
            x0 = left + b * (width + gap)
            glyphs[k, rows, x0:x0 + width] = 255
    glyphs.setflags(write=False)
    return glyphs


@functools.lru_cache(maxsize=1)
def card_patches() -> tuple[np.ndarray, np.ndarray]:
    """The 27 cards as ``(rgb, alpha)``: ``float32 (27, 14, 14, 3)`` colours in 0..255 and
    ``uint8 (27, 14, 14)`` alpha (read-only). RGB is the card's colour, black under the bars."""
    shapes, glyphs = shape_masks(), bar_glyphs()
    colours = np.asarray(list(COLOURS.values()), np.float32)
    attrs = card_attributes(np.arange(N_CARDS))
    rgb = np.empty((N_CARDS, CARD_SIZE, CARD_SIZE, 3), np.float32)
    alpha = np.empty((N_CARDS, CARD_SIZE, CARD_SIZE), np.uint8)
    for card, (colour, shape, number) in enumerate(attrs):
        g = glyphs[number].astype(np.float32)[..., None] / 255.0
        rgb[card] = colours[colour] * (1.0 - g)                 # black bars over the coloured shape
        alpha[card] = np.minimum(shapes[shape].astype(np.int32) + glyphs[number], 255).astype(np.uint8)
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


def _alpha_extents(alpha: np.ndarray) -> np.ndarray:
    """``float32 (k, 4)`` (x0, y0, x1, y1) extent of the non-zero pixels of each mask (k, s, s)."""
    out = np.zeros((len(alpha), 4), np.float32)
    for i, a in enumerate(alpha):
        rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


# --------------------------------------------------------------------------------------------
# Images


@dataclass
class SetConfig:
    """Parameters of the SET images (defaults: the authors' ``SetThreeAttr`` task)."""

    image_size: tuple[int, int] = param((48, 48), lo=CARD_SIZE, hi=4096, help="(height, width) of an image")
    n_cards: int = param(7, lo=3, hi=N_CARDS, help="distinct cards per image")
    max_overlap: float = param(CARD_SIZE * CARD_SIZE / 3.0, lo=0.0,
                               help="largest summed overlap (px²) of a new card with those already placed")
    background_colours: tuple[tuple[int, int, int], ...] = param(
        tuple(BACKGROUNDS.values()), help="RGB background colours, one drawn uniformly per image")
    balanced: bool = param(True, help="draw the label first (½ each) and resample hands until they agree")

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, (tuple, list)) or len(self.image_size) != 2:
            raise ConfigError(f"image_size: expected (height, width), got {self.image_size!r}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if min(self.image_size) < CARD_SIZE:
            raise ConfigError(f"image_size: {CARD_SIZE}-px cards do not fit in {self.image_size}")
        if not 3 <= int(self.n_cards) <= N_CARDS:
            raise ConfigError(f"n_cards: must lie in 3..{N_CARDS}, got {self.n_cards}")
        self.max_overlap = float(self.max_overlap)
        if not math.isfinite(self.max_overlap) or self.max_overlap < 0:
            raise ConfigError(f"max_overlap: must be a finite number >= 0, got {self.max_overlap}")
        cols = self.background_colours
        if not isinstance(cols, (tuple, list)) or not cols:
            raise ConfigError("background_colours: expected a non-empty list of RGB colours")
        out = []
        for c in cols:
            if not isinstance(c, (tuple, list)) or len(c) != 3 or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255 for v in c):
                raise ConfigError(f"background_colours: {c!r} is not an RGB triple of integers in 0..255")
            out.append(tuple(int(v) for v in c))
        self.background_colours = tuple(out)
        if self.balanced and self.n_cards > MAX_SET_FREE:
            raise ConfigError(f"n_cards: {self.n_cards} cards always contain a SET (at most {MAX_SET_FREE} cards "
                              "can avoid one); balanced images need fewer cards")
        h, w = self.image_size
        s, m = CARD_SIZE, self.max_overlap
        bound = (h // s) * (w // s) if m < 1 else (None if m >= s * s else int((h * w - m) // (s * s - m)))
        if bound is not None and self.n_cards > bound:
            raise ConfigError(f"n_cards: {self.n_cards} cards of {s}x{s} px cannot fit in a {h}x{w} image "
                              f"with max_overlap={m:g} (at most {bound}); lower n_cards or raise max_overlap")


@dataclass
class SetCards:
    """SET images: the scenes (``labels`` = card ids per image) and the per-image targets."""

    scenes: Scenes
    targets: np.ndarray  # int64 (N,): 1 if some three cards of the image form a SET

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.scenes):
            raise ValueError(f"SetCards: {len(self.scenes)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def images(self) -> np.ndarray:
        return self.scenes.images

    def attributes(self, i: int) -> np.ndarray:
        """``int64 (k, 3)``: (colour, shape, number − 1) of the cards of image ``i``, in box order."""
        return card_attributes(self.scenes.labels[i])

    def subset(self, idx: Any) -> "SetCards":
        sel = np.atleast_1d(np.arange(len(self))[idx])
        return SetCards(self.scenes.subset(sel), self.targets[sel])


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def draw_hand(rng: np.random.Generator, n_cards: int, target: int | None) -> np.ndarray:
    """``n_cards`` distinct card ids (the first of a random permutation of the deck), redrawn until
    :func:`has_set` equals ``target`` (None: the first hand)."""
    for _ in range(MAX_HAND_DRAWS):
        hand = rng.permutation(N_CARDS)[:n_cards]
        if target is None or int(has_set(hand)) == target:
            return hand.astype(np.int64)
    raise ConfigError(f"no hand of {n_cards} cards with target {target} in {MAX_HAND_DRAWS} draws")


def generate_set_cards(cfg: SetConfig, n: int, seed: int | np.random.Generator) -> SetCards:
    """``n`` SET images drawn with ``cfg`` (see the module docstring)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n: expected a non-negative integer, got {n!r}")
    rng = _rng(seed)
    h, w = cfg.image_size
    s, k = CARD_SIZE, cfg.n_cards
    rgb, alpha = card_patches()
    scale = np.float32(1.0 / 255.0)
    card_boxes = _alpha_extents(alpha)
    placer = Placer(cfg.image_size, s, cfg.max_overlap)
    bg_colours = np.asarray(cfg.background_colours, np.uint8)

    images = np.empty((n, h, w, 3), np.uint8)
    backgrounds = np.empty((n, 3), np.uint8)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    targets = np.empty(n, np.int64)
    for i in range(n):
        target = int(rng.random() < 0.5) if cfg.balanced else None
        hand = draw_hand(rng, k, target)
        targets[i] = int(has_set(hand)) if target is None else target
        backgrounds[i] = bg_colours[pick(float(rng.random()), len(bg_colours))]
        for _ in range(MAX_RESTARTS + 1):
            corners = placer.place(rng.random(k))
            if corners is not None:
                break
        else:
            raise ConfigError(f"could not place {k} cards in a {h}x{w} image with max_overlap="
                              f"{cfg.max_overlap:g} after {MAX_RESTARTS} restarts; raise max_overlap")
        canvas = images[i]
        canvas[...] = backgrounds[i]
        for card, (t, l) in zip(hand, corners):
            region = canvas[t:t + s, l:l + s]
            a = alpha[card][:, :, None] * scale
            cur = region.astype(np.float32)
            cur += a * (rgb[card] - cur)
            cur += 0.5
            region[...] = cur  # truncation of values in [0.5, 255.5): rounding half up
        offsets = np.asarray([(l, t, l, t) for t, l in corners], np.float32)
        boxes.append(card_boxes[hand] + offsets)
        labels.append(hand)
    scenes = Scenes(images=images, boxes=boxes, labels=labels, backgrounds=backgrounds)
    return SetCards(scenes, targets)


# --------------------------------------------------------------------------------------------
# Datasets on disk and the cache


@dataclass
class SetSpec:
    """Everything that determines a generated SET dataset."""

    cards: SetConfig = param(help="image settings")
    n_images: int = param(lo=0, help="number of images")
    seed: int = param(lo=0, help="seed of the generator (the authors' convention: train 0, val 1, test 2)")


def build_set_dataset(spec: SetSpec) -> SetCards:
    return generate_set_cards(spec.cards, spec.n_images, spec.seed)


def _canonical(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def set_dataset_key(spec: SetSpec) -> str:
    """12 hex digits identifying the dataset ``spec`` generates."""
    ident = {"format": FORMAT_VERSION, "kind": KIND, "generator_version": SET_GENERATOR_VERSION,
             "ink_threshold": INK_THRESHOLD, "spec": to_dict(spec)}
    return hashlib.sha256(_canonical(ident).encode()).hexdigest()[:12]


def set_dataset_folder(spec: SetSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/datasets/set-<H>x<W>-<k>cards-<n>-s<seed>-<key>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    h, w = spec.cards.image_size
    name = f"set-{h}x{w}-{spec.cards.n_cards}cards-{spec.n_images}-s{spec.seed}-{set_dataset_key(spec)}"
    return root / "datasets" / name


def save_set_dataset(folder: str | os.PathLike, data: SetCards, spec: SetSpec | None = None) -> None:
    """Write ``data`` as a dataset folder (kind ``"set-cards"``); ``extra`` records the number of
    positive images and the generator version."""
    extra = {"n_positive": int(data.targets.sum()), "set_generator_version": SET_GENERATOR_VERSION,
             "labels": "card id per object: colour = id // 9, shape = (id // 3) % 3, number = id % 3 + 1"}
    spec_data = to_dict(spec) if spec is not None else None
    if spec_data is not None:
        spec_data["key"] = set_dataset_key(spec)
    save_dataset(folder, data.scenes, spec_data, extra, kind=KIND)


def load_set_dataset(folder: str | os.PathLike, verify: bool = True) -> SetCards:
    """Read a folder written by :func:`save_set_dataset`; the targets are recomputed from the card
    ids and checked against the manifest (DataError naming the folder otherwise)."""
    folder = Path(folder)
    scenes = load_dataset(folder, verify=verify)
    manifest = read_manifest(folder)
    if manifest.get("kind") != KIND:
        raise DataError(f"{folder / MANIFEST_FILE}: not a SET dataset (kind {manifest.get('kind')!r})")
    labels = np.concatenate(scenes.labels) if len(scenes) else np.zeros(0, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CARDS):
        raise DataError(f"{folder / SCENES_FILE}: card ids outside 0..{N_CARDS - 1}")
    targets = set_targets(scenes.labels)
    expected = (manifest.get("extra") or {}).get("n_positive")
    if expected is not None and int(targets.sum()) != int(expected):
        raise DataError(f"{folder / MANIFEST_FILE}: {expected} positive images recorded, the cards give "
                        f"{int(targets.sum())}")
    return SetCards(scenes, targets)


def get_set_dataset(spec: SetSpec, cache_dir: str | os.PathLike | None = None) -> SetCards:
    """The dataset ``spec`` describes, from the cache when present and valid, else generated and
    stored there (an invalid folder is regenerated with a warning)."""
    folder = set_dataset_folder(spec, cache_dir)
    if (folder / MANIFEST_FILE).exists() or (folder / SCENES_FILE).exists():
        try:
            manifest = read_manifest(folder)
            stored = dict(manifest.get("spec") or {})
            if stored.pop("key", None) != set_dataset_key(spec) or _canonical(stored) != _canonical(to_dict(spec)):
                raise DataError(f"{folder / MANIFEST_FILE} describes another dataset")
            return load_set_dataset(folder)
        except DataError as e:
            warnings.warn(f"regenerating cached dataset {folder.name}: {e}", stacklevel=2)
    else:
        log.info("generating SET dataset %s", folder)
    data = build_set_dataset(spec)
    save_set_dataset(folder, data, spec)
    return data


__all__ = ["BACKGROUNDS", "COLOURS", "N_CARDS", "NUMBERS", "SHAPES", "SetCards", "SetConfig", "SetSpec",
           "bar_glyphs", "build_set_dataset", "card_attributes", "card_name", "card_patches", "draw_hand",
           "generate_set_cards", "get_set_dataset", "has_set", "is_set", "load_set_dataset", "save_set_dataset",
           "set_dataset_folder", "set_dataset_key", "set_targets", "shape_masks"]
