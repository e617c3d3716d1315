"""Boxes drawn on images, and PNG files written atomically.

Boxes follow the package convention: ``float32 (k, 4)`` arrays of ``(x0, y0, x1, y1)`` in continuous
pixel coordinates, where pixel column ``j`` covers ``[j, j + 1)``. A box is drawn as the outline of
the pixels it covers: after upscaling by an integer ``scale`` the box covers output columns
``round(x0 * scale)`` to ``round(x1 * scale) - 1`` (rows likewise), and the outline is the outermost
``width`` pixels of that region, so it lies *inside* the box and never hides a pixel outside it.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..io import write_bytes_atomic

Colour = tuple[int, int, int]

#: Colour of predicted boxes (blue) and ground-truth boxes (yellow), as in the paper's Figure 2.
PRED_COLOUR: Colour = (40, 120, 255)
GT_COLOUR: Colour = (255, 220, 0)


def auto_scale(height: int, width: int, target: int = 240) -> int:
    """The integer upscaling factor that brings the longer side of an image close to ``target``.

    ``max(1, target // max(height, width))``: a 48×48 image is drawn 5× larger, an image whose
    longer side is ``target`` pixels or more is not scaled.
    """
    return max(1, target // max(1, height, width))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``(H, W, 3)`` or ``(H, W)`` array by an integer factor."""
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"images to draw on must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"images to draw on must have shape (H, W, 3) or (H, W), got {image.shape}")
    return image


def _draw(canvas: Image.Image, boxes: np.ndarray, colour: Colour, scale: int, width: int) -> None:
    """Outline ``boxes`` (given in unscaled pixel units) on an already upscaled PIL canvas."""
    draw = ImageDraw.Draw(canvas)
    w_img, h_img = canvas.size
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        if not np.all(np.isfinite((x0, y0, x1, y1))):
            continue
        left = int(np.clip(round(x0 * scale), 0, w_img))
        top = int(np.clip(round(y0 * scale), 0, h_img))
        right = int(np.clip(round(x1 * scale), 0, w_img)) - 1
        bottom = int(np.clip(round(y1 * scale), 0, h_img)) - 1
        if right < left or bottom < top:
            continue
        draw.rectangle((left, top, right, bottom), outline=tuple(colour), width=width)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, colour: Colour = PRED_COLOUR, scale: int = 1,
               width: int = 1) -> np.ndarray:
    """Return a copy of ``image`` upscaled by ``scale`` with the outlines of ``boxes`` drawn on it.

    ``image`` is ``uint8 (H, W, 3)`` (or ``(H, W)`` grey), ``boxes`` ``(k, 4)`` ``(x0, y0, x1, y1)``
    in the pixel units of ``image``. The result is ``uint8 (H * scale, W * scale, 3)``. Boxes are
    clipped to the image; empty or non-finite boxes are skipped.
    """
    canvas = Image.fromarray(upscale(_as_rgb(image), scale))
    _draw(canvas, boxes, colour, scale, width)
    return np.asarray(canvas, dtype=np.uint8).copy()


def overlay(image: np.ndarray, pred_boxes: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
            scale: int | None = None, width: int | None = None) -> np.ndarray:
    """``image`` upscaled once, with ground-truth boxes (yellow) and then predictions (blue) drawn.

    ``scale=None`` picks :func:`auto_scale`; ``width=None`` draws lines 1 pixel wide up to a scaled
    size of 800 pixels and proportionally thicker above.
    """
    rgb = _as_rgb(image)
    if scale is None:
        scale = auto_scale(*rgb.shape[:2])
    if width is None:
        width = max(1, (max(rgb.shape[:2]) * scale) // 800)
    canvas = Image.fromarray(upscale(rgb, scale))
    if gt_boxes is not None:
        _draw(canvas, gt_boxes, GT_COLOUR, scale, width)
    if pred_boxes is not None:
        _draw(canvas, pred_boxes, PRED_COLOUR, scale, width)
    return np.asarray(canvas, dtype=np.uint8).copy()


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a ``uint8`` ``(H, W, 3)`` or ``(H, W)`` array as PNG (the same array gives the same bytes)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise DataError(f"a PNG needs a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a PNG file atomically (see :func:`spair.io.atomic_write`)."""
    write_bytes_atomic(path, png_bytes(array))

