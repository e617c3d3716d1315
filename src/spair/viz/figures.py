"""Matplotlib figures: grids of scenes with their boxes, and metric curves.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through
``pyplot``, so no global figure state or interactive backend is involved and the module works on a
machine without a display. :func:`save_figure` renders to memory and writes the file atomically;
the PNG carries no software-version metadata, so the same figure gives the same bytes.
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..io import write_bytes_atomic
from .boxes import GT_COLOUR, PRED_COLOUR


def _mpl_colour(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in colour)  # type: ignore[return-value]


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Figure:
    """A figure attached to an Agg canvas (independent of pyplot)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int | None = None) -> None:
    """Render ``fig`` as PNG in memory and write it to ``path`` atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    write_bytes_atomic(path, buffer.getvalue())


def _add_boxes(ax, boxes: np.ndarray | None, colour: tuple[int, int, int], linewidth: float) -> None:
    if boxes is None:
        return
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        # imshow centres pixel j on coordinate j, so the continuous coordinate x sits at x - 0.5.
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=_mpl_colour(colour), linewidth=linewidth))


def scene_grid(images: Sequence[np.ndarray], pred_boxes: Sequence[np.ndarray] | None = None,
               gt_boxes: Sequence[np.ndarray] | None = None, path: str | os.PathLike | None = None, *,
               ncols: int | None = None, titles: Sequence[str] | None = None, panel_inches: float = 1.6,
               linewidth: float = 1.2, dpi: int = 100) -> Figure:
    """A grid of images with predicted boxes (blue) and ground-truth boxes (yellow) drawn over them.

    ``images`` are ``uint8 (H, W, 3)`` arrays; ``pred_boxes`` / ``gt_boxes`` hold one ``(k, 4)`` array
    of ``(x0, y0, x1, y1)`` per image (either may be ``None``). ``ncols`` defaults to
    ``ceil(sqrt(n))``. When ``path`` is given the figure is also saved there atomically as PNG.
    """
    n = len(images)
    if n == 0:
        raise ValueError("scene_grid needs at least one image")
    for name, seq in (("pred_boxes", pred_boxes), ("gt_boxes", gt_boxes), ("titles", titles)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(ncols * panel_inches, nrows * panel_inches + (0.25 if titles else 0.0), dpi=dpi)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], interpolation="nearest")
        _add_boxes(ax, None if gt_boxes is None else gt_boxes[i], GT_COLOUR, linewidth)
        _add_boxes(ax, None if pred_boxes is None else pred_boxes[i], PRED_COLOUR, linewidth)
        height, width = np.asarray(images[i]).shape[:2]
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95 if titles else 0.99,
                        wspace=0.04, hspace=0.15 if titles else 0.04)
    if path is not None:
        save_figure(fig, path)
    return fig


def line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], path: str | os.PathLike | None = None,
              *, xlabel: str = "", ylabel: str = "", title: str = "",
              ylim: tuple[float, float] | None = None) -> Figure:
    """One line with markers per entry of ``series`` (label → y values at ``x``), optionally saved."""
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>ph"
    for i, (label, ys) in enumerate(series.items()):
        if len(ys) != len(x):
            raise ValueError(f"series '{label}' has {len(ys)} values for {len(x)} x positions")
        ax.plot(list(x), list(ys), marker=markers[i % len(markers)], label=label)
    ax.set_xticks(list(x))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
