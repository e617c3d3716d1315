"""Shifted grids: detect on the image at several offsets of SPAIR's cell grid and keep what most agree on.

SPAIR's encoder reads the image on a fixed grid of cells, and each cell reports at most one object. Where
a digit falls on the grid decides much of what happens to it: two digits that touch inside one cell are
drawn by one object, a digit cut by a cell border can be split between two weak cells, and the box a
blurry sprite leaves differs by a pixel or two. Moving the image by half a cell changes all of that
while the scene stays the same. With ``grid_shifts`` = 4 the detector runs on the image as it is and
padded by half a cell at the top, at the left and at both (:func:`grid_offsets`; 8 adds the four
combinations of a quarter and three quarters of a cell, 16 every offset by 0, ¼, ½ or ¾ of a cell in each
direction), moves the boxes back, and votes
(:func:`vote_detections`): boxes of different views that overlap (IoU ≥ ``VOTE_IOU``) are one object,
its score its presence probability averaged over all the views (0 in a view that did not find it).
Each view's reading of the image has a value J of the model's own objective over the image's pixels
(:func:`spair.models.split.image_objective`: the likelihood, the z_what prior and the price of each
object, as in the split moves), and views weigh by exp(−J / T) (:func:`view_weights`). An object is
reported when at least half of the views found it, or at least ``VOTE_MIN_VIEWS`` (2) views whose
weights at T = 20 nats make up at least ``VOTE_KEEP_SHARE`` (0.2) of all the views' (of four views, two
are half: every object two found; of eight, an object two or three found only if they are among the
views that explain the image best). Its box comes mostly from the views that explain the image best: the
mean of the boxes of the views that found it weighted at T = ``VOTE_TEMPERATURE`` (5 nats): a view that
explains the image 5 nats worse counts e⁻¹ as much. Where the views carry no objective, an object needs
half of the views, and its box is the median of all their boxes.

The views disagree mostly where one of them errs, so the vote removes the merged pairs, spurious splits
and ragged edges that depend on the grid's position (docs/cpu-recipe.md, "Shifted grids"). It costs one
detection per view. Padding uses the image's background colour (the given one, or the most frequent
colour of the image), so the padded image shows the same scene.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConfigError
from ..metrics.ap import box_iou
from .detector import Detections

GRID_SHIFTS = 4
"""Views the detector votes over by default (1: the image alone; 8 and 16 add quarter-cell offsets)."""
VOTE_IOU = 0.3
"""Boxes of two views that overlap at least this much are the same object."""
VOTE_MIN_VIEWS = 2
"""No object is reported that fewer views found."""
VOTE_KEEP_SHARE = 0.2
"""An object fewer than half of the views found is still reported when at least ``VOTE_MIN_VIEWS`` did and
their weights at ``VOTE_KEEP_TEMPERATURE`` make up at least this share of all the views' weights."""
VOTE_KEEP_TEMPERATURE = 20.0
"""Nats: the temperature of the views' weights (:func:`view_weights`) that ``VOTE_KEEP_SHARE`` is measured in."""
VOTE_TEMPERATURE = 5.0
"""Nats: an object's box is the mean of the boxes of the views that found it, weighted by exp(−J / this),
J each view's objective over the image (:func:`view_weights`)."""
ALLOWED_SHIFTS = (1, 4, 8, 16)


def check_grid_shifts(n: int) -> int:
    if n not in ALLOWED_SHIFTS:
        raise ConfigError(f"grid_shifts must be one of {', '.join(map(str, ALLOWED_SHIFTS))}, got {n}")
    return n


def grid_offsets(cell_size: int, n: int) -> list[tuple[int, int]]:
    """(dy, dx) pixel offsets of the image on the grid: (0, 0) alone; with a half cell down, right and
    both (4); and with a quarter and three quarters of a cell down and right in the four combinations (8);
    and the other eight points of the quarter-cell lattice, each a quarter or three quarters of a cell one
    way and none or half a cell the other (16: every offset by 0, ¼, ½ or ¾ of a cell in each direction).
    The views of fewer shifts come first, in the same order."""
    check_grid_shifts(n)
    if n == 1:
        return [(0, 0)]
    h = max(cell_size // 2, 1)
    half = [(0, 0), (0, h), (h, 0), (h, h)]
    if n == 4:
        return half
    q, t = max(cell_size // 4, 1), max(3 * cell_size // 4, 1)
    quarter = half + [(q, q), (t, t), (q, t), (t, q)]
    if n == 8:
        return quarter
    return quarter + [(0, q), (q, 0), (0, t), (t, 0), (h, q), (q, h), (h, t), (t, h)]


def most_frequent_colours(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Most frequent colour of each uint8 RGB image (uint8 (B, 3)): the background estimate."""
    out = []
    for im in images:
        packed = (im[..., 0].astype(np.int64) << 16) | (im[..., 1].astype(np.int64) << 8) | im[..., 2]
        vals, counts = np.unique(packed.ravel(), return_counts=True)
        v = int(vals[counts.argmax()])
        out.append([(v >> 16) & 255, (v >> 8) & 255, v & 255])
    return np.asarray(out, dtype=np.uint8).reshape(-1, 3)


def pad_images(images: np.ndarray, colours: np.ndarray, dy: int, dx: int, cell_size: int) -> np.ndarray:
    """uint8 images (B, H, W, 3) placed ``dy`` px down and ``dx`` px right on a canvas of their
    background ``colours`` (B, 3), the canvas grown at the bottom and right to whole cells."""
    B, H, W, C = images.shape
    ph = (-(H + dy)) % cell_size if dy else 0
    pw = (-(W + dx)) % cell_size if dx else 0
    out = np.empty((B, H + dy + ph, W + dx + pw, C), dtype=images.dtype)
    out[:] = np.asarray(colours, dtype=images.dtype).reshape(B, 1, 1, C)
    out[:, dy:dy + H, dx:dx + W] = images
    return out


def unshift(d: Detections, dy: int, dx: int, hw: tuple[int, int]) -> Detections:
    """Boxes found on a padded image, in the original image's coordinates (clipped to it; empty ones dropped)."""
    H, W = hw
    b = d.boxes - np.asarray([dx, dy, dx, dy], dtype=np.float32)
    b = np.minimum(np.maximum(b, 0.0), np.asarray([W, H, W, H], dtype=np.float32))
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return Detections(b[keep], d.scores[keep], d.objective)


def view_weights(objectives: np.ndarray, temperature: float) -> np.ndarray:
    """Weights of views with these objectives J (nats), ∝ exp(−J / ``temperature``), summing to 1: a
    tempered posterior over the views' readings of the image (at temperature 1, exp(−J) is the model's
    joint probability of the image and the reading, up to a constant shared by the views)."""
    j = np.asarray(objectives, np.float64)
    w = np.exp(-(j - j.min()) / temperature)
    return w / w.sum()


def vote_detections(views: list[Detections], min_iou: float = VOTE_IOU, temperature: float = VOTE_TEMPERATURE,
                    best_views: int | None = None, min_views: int = VOTE_MIN_VIEWS,
                    keep_share: float | None = VOTE_KEEP_SHARE,
                    keep_temperature: float = VOTE_KEEP_TEMPERATURE) -> Detections:
    """One image's detections from several views: the objects that at least half of the views found, or
    at least ``min_views`` views whose weights (:func:`view_weights` of their ``objective`` at
    ``keep_temperature``) sum to at least ``keep_share`` (None, or views without objective: half of the
    views and at least ``min_views``), most confident first. Each has its score averaged over all the
    views (0 where a view did not find it) and the mean of the boxes of the views that found it
    weighted by how well each view explains the image (:func:`view_weights` at ``temperature``). With
    ``best_views`` K, the box is instead the median of the boxes of the K views with the lowest
    objective among those that found it; where a view has no objective, the median of all the boxes.

    The views are taken in order, each view's boxes most confident first; a box joins the object
    (the cluster of earlier views' boxes) whose median box it overlaps most, if that IoU is at least
    ``min_iou`` and the object holds no box of this view yet; otherwise it starts a new object.
    """
    k = len(views)
    if k == 1:
        return views[0]
    members: list[list[np.ndarray]] = []
    medians = np.zeros((0, 4), np.float32)              # each object's median box so far
    scores: list[float] = []
    seen: list[list[int]] = []                          # the views that found each object, in order
    for v, d in enumerate(views):
        for i in np.argsort(-d.scores, kind="stable"):
            box = d.boxes[i]
            j = -1
            if members:
                overlap = box_iou(box[None], medians)[0]
                overlap[[v in s for s in seen]] = -1.0
                j = int(overlap.argmax())
                if overlap[j] < min_iou:
                    j = -1
            if j < 0:
                members.append([])
                medians = np.concatenate([medians, box[None]])
                scores.append(0.0)
                seen.append([])
            members[j].append(box)
            medians[j] = np.median(members[j], 0)
            scores[j] += float(d.scores[i])
            seen[j].append(v)
    objective = None
    if all(d.objective is not None for d in views):
        objective = np.asarray([d.objective for d in views], np.float64)
    share = None if objective is None or keep_share is None else view_weights(objective, keep_temperature)
    least = min(min_views, k)
    keep = [j for j in range(len(members)) if len(seen[j]) >= least and
            (2 * len(seen[j]) >= k or (share is not None and share[seen[j]].sum() >= keep_share))]
    boxes = medians[keep]
    if objective is not None:
        for r, j in enumerate(keep):
            found = np.asarray(members[j], np.float64)
            if best_views is None:
                boxes[r] = view_weights(objective[seen[j]], temperature) @ found
            else:
                best = np.argsort(objective[seen[j]], kind="stable")[:best_views]
                boxes[r] = np.median(found[best], 0)
    conf = np.asarray([scores[j] / k for j in keep], dtype=np.float32)
    order = np.argsort(-conf, kind="stable")
    return Detections(boxes[order], conf[order])


def shifted_views(detect: Callable[[np.ndarray, tuple[int, int, int, int] | None], list[Detections]],
                  images: np.ndarray, colours: np.ndarray | None, cell_size: int, n: int = GRID_SHIFTS
                  ) -> list[list[Detections]]:
    """Per view of the ``n`` (:func:`grid_offsets`), ``detect``'s detections of the images, moved back to the
    images' coordinates. ``detect`` takes uint8 images (B, H', W', 3) of one size and where the original
    images lie in them, (top, left, height, width) (None for a single view), and returns their detections
    (an ``objective`` of each, if it has one, measured over those pixels). ``colours`` (B, 3) pads the
    shifted views (None: each image's most frequent colour)."""
    images = np.asarray(images)
    offsets = grid_offsets(cell_size, n)
    H, W = images.shape[1:3]
    if len(offsets) == 1:
        return [detect(images, None)]                  # one view: nothing to compare
    if colours is None:
        colours = most_frequent_colours(images)
    views = []
    for dy, dx in offsets:
        if dy == 0 and dx == 0:
            views.append(detect(images, (0, 0, H, W)))
        else:
            found = detect(pad_images(images, colours, dy, dx, cell_size), (dy, dx, H, W))
            views.append([unshift(d, dy, dx, (H, W)) for d in found])
    return views


def detect_on_shifted_grids(detect: Callable[[np.ndarray, tuple[int, int, int, int] | None], list[Detections]],
                            images: np.ndarray, colours: np.ndarray | None, cell_size: int, n: int = GRID_SHIFTS,
                            min_iou: float = VOTE_IOU) -> list[Detections]:
    """Run ``detect`` on each of the ``n`` views of the images (:func:`shifted_views`) and vote."""
    views = shifted_views(detect, images, colours, cell_size, n)
    if len(views) == 1:
        return views[0]
    return [vote_detections([v[i] for v in views], min_iou) for i in range(len(images))]
