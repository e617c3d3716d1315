"""Figures of a trained SPAIR model: input | reconstruction | boxes panels, per-object glimpses and
sprites, and training curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.scenes import Scenes
from ..models.spair import Spair, SpairNoise
from ..models.spair_detector import detections_from_output
from .boxes import overlay, save_png

SEPARATOR = 4


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8."""
    return (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _hstack(images: list[np.ndarray], gap: int = SEPARATOR, fill: int = 255) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        pad = np.full((h, im.shape[1], 3), fill, np.uint8)
        pad[: im.shape[0]] = im
        parts.append(pad)
        if k < len(images) - 1:
            parts.append(np.full((h, gap, 3), fill, np.uint8))
    return np.concatenate(parts, 1)


def _vstack(images: list[np.ndarray], gap: int = SEPARATOR, fill: int = 255) -> np.ndarray:
    w = max(i.shape[1] for i in images)
    parts = []
    for k, im in enumerate(images):
        pad = np.full((im.shape[0], w, 3), fill, np.uint8)
        pad[:, : im.shape[1]] = im
        parts.append(pad)
        if k < len(images) - 1:
            parts.append(np.full((gap, w, 3), fill, np.uint8))
    return np.concatenate(parts, 0)


@torch.no_grad()
def run_for_figures(model: Spair, images: np.ndarray, seed: int = 0, backgrounds: np.ndarray | None = None) -> Any:
    """Deterministic forward pass with rendering, for figures."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).float() / 255.0
    gh, gw = model.grid_shape(*x.shape[-2:])
    gen = torch.Generator(device=dev).manual_seed(seed)
    noise = SpairNoise.sample(x.shape[0], gh * gw, model.cfg.A, dev, gen)
    bg = None
    if model.cfg.background == "given" and backgrounds is not None:
        bg = torch.from_numpy(backgrounds).float().div(255).to(dev)
    out = model(x, sample="mean", noise=noise, background=bg)
    model.train(was)
    return out


def model_panel(model: Spair, scenes: Scenes, box_mode: str = "segment", scale: int | None = None) -> np.ndarray:
    """One row per scene: input with true (yellow) and predicted (blue) boxes | reconstruction."""
    out = run_for_figures(model, scenes.images, backgrounds=scenes.backgrounds)
    x = torch.from_numpy(np.ascontiguousarray(scenes.images)).to(out.recon.device).permute(0, 3, 1, 2).float() / 255.0
    dets = detections_from_output(model, out, box_mode, x=x)  # type: ignore[arg-type]
    rows = []
    for b in range(len(scenes)):
        boxed = overlay(scenes.images[b], dets[b].boxes, scenes.boxes[b], scale=scale)
        recon = overlay(_to_uint8(out.recon[b]), None, None, scale=scale)
        rows.append(_hstack([boxed, recon]))
    return _vstack(rows)


def glimpse_panel(model: Spair, scenes: Scenes, max_objects: int = 12, scale: int = 4) -> np.ndarray:
    """For each scene, its present objects: the glimpse read at z_where (top) and the decoded sprite
    (RGB × alpha, bottom), sorted by presence probability."""
    out = run_for_figures(model, scenes.images, backgrounds=scenes.backgrounds)
    rows = []
    for b in range(len(scenes)):
        prob = out.pres_prob[b, :, 0]
        order = torch.argsort(prob, descending=True)
        order = [int(i) for i in order if prob[i] >= 0.5][:max_objects]
        if not order:
            continue
        cols = []
        for i in order:
            g = _to_uint8(out.glimpses[b, i])
            s = _to_uint8(out.sprites_rgb[b, i] * out.sprites_alpha[b, i])
            cols.append(_vstack([np.kron(g, np.ones((scale, scale, 1), np.uint8)),
                                 np.kron(s, np.ones((scale, scale, 1), np.uint8))], gap=2))
        rows.append(_hstack(cols, gap=2))
    if not rows:
        return np.full((8, 8, 3), 255, np.uint8)
    return _vstack(rows)


def save_model_figures(model: Spair, scenes: Scenes, out_dir: str | os.PathLike, n: int = 8,
                       box_mode: str = "segment") -> dict[str, str]:
    """Write ``boxes_and_reconstructions.png`` and ``glimpses.png`` for the first ``n`` scenes."""
    out_dir = Path(out_dir)
    sub = scenes.subset(np.arange(min(n, len(scenes))))
    paths = {"boxes": out_dir / "boxes_and_reconstructions.png", "glimpses": out_dir / "glimpses.png"}
    save_png(paths["boxes"], model_panel(model, sub, box_mode))
    save_png(paths["glimpses"], glimpse_panel(model, sub))
    return {k: str(v) for k, v in paths.items()}


def training_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Loss terms, fraction of cells on, count bias and validation AP against the step."""
    from .figures import new_figure, save_figure

    train, val = [], []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        (train if r.get("kind") == "train" else val if r.get("kind") == "eval" else []).append(r)
    fig = new_figure(12, 3.2)
    axes = fig.subplots(1, 4)
    if train:
        s = [r["step"] for r in train]
        axes[0].plot(s, [r["recon"] for r in train], label="reconstruction")
        axes[0].set_yscale("log")
        for k in ("kl_where", "kl_what", "kl_depth", "kl_pres"):
            axes[1].plot(s, [r[k] for r in train], label=k)
        axes[2].plot(s, [r["frac_on"] for r in train], label="fraction of cells on")
        axes[2].plot(s, [r["count_bias"] for r in train], label="count bias")
    if val:
        s = [r["step"] for r in val]
        axes[3].plot(s, [r["val_spair_AP"] for r in val], "o-", label="SPAIR-AP")
        axes[3].plot(s, [r["val_coco_AP[.1:.9]"] for r in val], "s-", label="COCO AP[.1:.9]")
        axes[3].set_ylim(0, 1)
    for ax, title in zip(axes, ("reconstruction (nats)", "KL terms (nats)", "presence", "validation AP")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_path)
