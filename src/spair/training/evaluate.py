"""Evaluate a SPAIR model on scenes with ground-truth boxes: SPAIR-AP, COCO AP, count errors.

``sample="mean"`` evaluates the deterministic detector (Gaussian means, z_pres = 1[α > 0]) that
``spair detect`` uses; ``sample="hard"`` is the paper's stochastic protocol (latents sampled at
test time, z_pres a Bernoulli sample). Both are scored by the same metrics
(``spair.metrics.evaluate_detections``: SPAIR-AP with confidence 1, COCO AP with the presence
probability as score, count errors with the number of reported boxes). ``refine_steps`` > 0
refines the reported objects' latents on each image before their boxes are read
(``spair.models.refine``; deterministic inference only), with the split moves of
``spair.models.split`` unless ``split_min_gain`` is None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.scenes import Scenes
from ..metrics import evaluate_detections, spair_ap
from ..models.detector import Detections
from ..models.spair import SampleMode, Spair
from ..models.refine import REFINE_STEPS
from ..models.shifts import detect_on_shifted_grids
from ..models.spair_detector import (EXPLAIN_MIN_SCORE, INK_THRESHOLD, BoxMode, detections_from_output,
                                     run_model)
from ..models.split import SPLIT_MIN_GAIN


@torch.no_grad()
def predict(model: Spair, images: np.ndarray, *, batch_size: int = 100, sample: SampleMode = "mean",
            box_mode: BoxMode = "segment", min_score: float = 0.5, seed: int = 0,
            backgrounds: np.ndarray | None = None, ink_threshold: float = INK_THRESHOLD,
            device: str | torch.device | None = None,
            explain_min_score: float | None = EXPLAIN_MIN_SCORE, refine_steps: int = REFINE_STEPS,
            split_min_gain: float | None = SPLIT_MIN_GAIN, grid_shifts: int = 1) -> list[Detections]:
    """Detections for uint8 images (N, H, W, 3) of one size; ``grid_shifts`` 4 votes over the image at
    four offsets of the cell grid (:mod:`spair.models.shifts`; 1: the image alone, as in training)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out_dets: list[Detections] = []
    given = model.cfg.background == "given"
    if given and backgrounds is None:
        raise ValueError("a model with background 'given' needs the background colours")
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size])
        colours = None if backgrounds is None else np.asarray(backgrounds[start:start + batch_size])

        def detect(b: np.ndarray, region: tuple[int, int, int, int] | None,
                   colours: np.ndarray | None = colours) -> list[Detections]:
            x = torch.from_numpy(np.ascontiguousarray(b)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            bg = torch.from_numpy(colours).float().div(255.0).to(device) if given else None
            out = run_model(model, x, sample, gen, bg)
            return detections_from_output(model, out, box_mode, min_score, ink_threshold,
                                          use_samples=sample != "mean", x=x, explain_min_score=explain_min_score,
                                          refine_steps=refine_steps, split_min_gain=split_min_gain,
                                          objective_region=region)

        out_dets += detect_on_shifted_grids(detect, batch, colours, model.cfg.cell_size, grid_shifts)
    model.train(was_training)
    return out_dets


def evaluate(model: Spair, scenes: Scenes, *, batch_size: int = 100, sample: SampleMode = "mean",
             box_mode: BoxMode = "segment", min_score: float = 0.5, seed: int = 0,
             ink_threshold: float = INK_THRESHOLD,
             explain_min_score: float | None = EXPLAIN_MIN_SCORE, refine_steps: int = REFINE_STEPS,
             split_min_gain: float | None = SPLIT_MIN_GAIN, grid_shifts: int = 1) -> dict[str, Any]:
    """All detection metrics of ``model`` on ``scenes`` (plus the mean predicted box size).

    ``spair_AP`` is the paper's protocol with confidence 1 for every reported box;
    ``spair_ranked_AP`` is the same protocol ranking the boxes by presence probability."""
    dets = predict(model, scenes.images, batch_size=batch_size, sample=sample, box_mode=box_mode,
                   min_score=min_score, seed=seed, backgrounds=scenes.backgrounds, ink_threshold=ink_threshold,
                   explain_min_score=explain_min_score, refine_steps=refine_steps, split_min_gain=split_min_gain,
                   grid_shifts=grid_shifts)
    H, W = scenes.images.shape[1:3]
    boxes, scores = [d.boxes for d in dets], [d.scores for d in dets]
    metrics = evaluate_detections(boxes, scores, scenes.boxes, image_sizes=[(H, W)] * len(scenes))
    # the same protocol with the presence probability as each box's confidence (instead of 1)
    metrics.update({f"spair_ranked_{k}": v for k, v in spair_ap(boxes, scenes.boxes, scores).items()})
    sizes = np.concatenate([d.boxes[:, 2:] - d.boxes[:, :2] for d in dets] or [np.zeros((0, 2))])
    metrics["mean_box_wh"] = [float(v) for v in sizes.mean(0)] if len(sizes) else [0.0, 0.0]
    metrics["n_images"] = len(scenes)
    return metrics
