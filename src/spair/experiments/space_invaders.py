"""Space Invaders (paper section 5.4, Figure 6): train SPAIR on 48×48 crops, detect on full frames.

The curriculum of the authors' Atari experiment (reference spec section 8.7), on the Trainer:

0. **data**: frames of Space Invaders under a random policy (:mod:`spair.data.atari`): at most 100
   frames per episode, split by episode (the second-to-last episode is validation, the last one
   test), and ``crops_per_frame`` random 48×48 crops of every training and validation frame;
1. **background** (``<out>/background``): a short stage that trains only the background colour
   (``optim.train_only=["bg_logit"]``, model background ``"solid"``) on the training crops, every
   other weight frozen at its initialization;
2. **spair** (``<out>/spair``): all of SPAIR on the same crops, starting from the weights of stage 1
   (``init_from`` its ``last.pt``), with the count-prior schedule and training wheels below;
3. **evaluate**: the best checkpoint of stage 2 runs on the full 210×160 frames of the test
   episode (an 18×14 grid of 12-px cells): reconstruction error, detection metrics against a
   pseudo ground truth, and a figure like the paper's Figure 6.

**Pseudo ground truth.** The frames have no annotations. The reference boxes are ConnComp's: pixels
whose summed colour difference to the frame's background (its most frequent colour, black) exceeds
τ = 0.1 (:data:`PSEUDO_GT_TAU`; every non-background colour of the game differs by at least 0.75,
so any τ below that gives the same masks). Atari sprites are drawn in pieces that touch only at
corners, so pieces at most 2 px apart are joined (:data:`PSEUDO_GT_GAP` = 1, see
:func:`spair.data.atari.foreground_boxes`); every invader then is one 8×10 (or 8×9) box. Both sets
of boxes are restricted to the **invader rows**, :data:`INVADER_ROWS` = rows 20..156: below the
score (rows 10–19) and above the shields (rows 157–174), the cannon (185–194) and the ground
(195–209). A box belongs to them when its vertical centre does. This keeps the invaders, their
bombs and the cannon's shots, and drops the score digits, the mothership (drawn in rows 12–19 in
place of the score), the shields, the cannon, the ground bar and the lives counter.

**Numbers** (``results.json``), on the test frames: the reconstruction's mean squared error per
pixel and channel (intensities in [0, 1]) and its Bernoulli negative log-likelihood (the training
loss's reconstruction term, in nats per frame and per pixel), over the whole frame and over the
invader rows, next to the same errors of the background colour alone; COCO AP@0.5, COCO AP over IoU
0.1:0.9, the paper's SPAIR-AP and the count errors of SPAIR's boxes (extent of each object's
visible ink, presence ≥ 0.5) against the pseudo ground truth, on the invader rows.

**Scales** (:data:`SCALES`): ``paper`` uses the spec's settings (kernel size 2, size prior
logit(0.1) ± 0.5, count prior F = 0.1 with D = 3000, 4000 steps of training wheels, 10k background
steps, lr 1e-4) and is meant for a GPU; ``quick`` is the CPU budget, about 30–40 minutes on 2
cores (see :data:`SCALES` and ``docs/space_invaders.md``); ``tiny`` is a smoke test of a minute.

Running again on the same ``out`` skips finished stages: a training stage is finished when its
``summary.json`` exists (an interrupted one resumes from its ``last.pt``), the evaluation when
``results.json`` exists with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError
from .runs import no_log

FRAME_SIZE = (210, 160)
"""(height, width) of an Atari frame."""
CROP_SIZE = (48, 48)
"""Training crops (the paper's)."""
INVADER_ROWS = (20, 157)
"""Rows ``[20, 157)`` of the frame: between the score and the shields (module docstring)."""
PSEUDO_GT_TAU = 0.1
"""ConnComp threshold of the pseudo ground truth (summed colour difference, in [0, 3])."""
PSEUDO_GT_GAP = 1
"""Pieces at most ``2 · PSEUDO_GT_GAP`` pixels apart form one pseudo-ground-truth object."""
MIN_SCORE = 0.5
"""SPAIR reports the cells whose presence probability is at least this."""
BOX_MODE = "ink"
"""SPAIR's boxes: the extent of each object's visible ink (``spair.models.spair_detector``)."""
GAME = "space_invaders"
RESULTS_FILE = "results.json"
FIGURE_FILE = "figure6.png"
PSEUDO_GT_FIGURE_FILE = "pseudo_gt.png"
REPORTED_DETECTION_METRICS = ("coco_AP@.5", "coco_AP[.1:.9]", "spair_AP", "count_abs_error", "count_01_error",
                              "count_bias", "n_images", "n_gt", "n_pred")

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Scales and settings


@dataclass(frozen=True)
class Scale:
    """How much data and training an experiment run uses."""

    name: str
    description: str
    n_episodes: int                  # episodes played; the last two are validation and test
    max_frames_per_episode: int      # frames kept per episode
    crops_per_frame: int             # random 48×48 crops of every training / validation frame
    background_steps: int            # stage 1
    background_lr: float             # stage 1 learning rate (only the background colour learns)
    spair_steps: int                 # stage 2
    batch_size: int
    lr: float
    lr_drop_at: float                # fraction of the steps after which the lr is ×0.1 (1 = never)
    grad_noise_decay_steps: float
    training_wheels_steps: int
    count_prior_decay_steps: float   # the authors' D
    count_prior_final_odds: float    # the authors' F
    hw_prior_std: float
    eval_every: int
    patience: int                    # stage-2 early stopping on validation AP (0 = off)
    max_test_frames: int             # test frames evaluated (0 = all)
    n_figure_frames: int
    eval_batch_size: int             # full frames per forward pass in stage 3
    model_overrides: tuple[str, ...] = ()


QUICK_MODEL_OVERRIDES = ("anchor=[16.0,16.0]", "hw_prior_mean=0.0")
"""The quick scale's one change to the spec's model: a 16-px anchor (so a box is at most 16 px, less than the
18-px pitch of the invaders, and no sprite can cover two of them) with the size prior centred at half the
anchor (logit 0.5: 8 px, the invaders' width) instead of logit 0.1 of 48 px (4.8 px). With the spec's 48-px
anchor one sprite explained two vertically neighbouring invaders (docs/space_invaders.md)."""

SCALES: dict[str, Scale] = {
    "paper": Scale(
        name="paper", description="the settings of the authors' Atari experiment (spec 8.7); for a GPU",
        n_episodes=52, max_frames_per_episode=100, crops_per_frame=4, background_steps=10_000,
        background_lr=1e-4, spair_steps=100_000, batch_size=32, lr=1e-4, lr_drop_at=1.0, grad_noise_decay_steps=1000.0,
        training_wheels_steps=4000, count_prior_decay_steps=3000.0, count_prior_final_odds=0.1,
        hw_prior_std=0.5, eval_every=1000, patience=20_000, max_test_frames=0, n_figure_frames=6,
        eval_batch_size=8),
    "quick": Scale(
        name="quick", description="the CPU budget: about 30-40 minutes on 2 cores",
        n_episodes=12, max_frames_per_episode=100, crops_per_frame=4, background_steps=200,
        background_lr=1e-2, spair_steps=6000, batch_size=32, lr=1e-3, lr_drop_at=0.75, grad_noise_decay_steps=300.0,
        training_wheels_steps=600, count_prior_decay_steps=500.0, count_prior_final_odds=0.1,
        hw_prior_std=0.5, eval_every=500, patience=0, max_test_frames=0, n_figure_frames=4,
        eval_batch_size=4, model_overrides=QUICK_MODEL_OVERRIDES),
    "tiny": Scale(
        name="tiny", description="a smoke test of the whole pipeline (a minute; learns nothing)",
        n_episodes=3, max_frames_per_episode=4, crops_per_frame=2, background_steps=3,
        background_lr=1e-2, spair_steps=4,
        batch_size=4, lr=1e-3, lr_drop_at=0.75, grad_noise_decay_steps=2.0, training_wheels_steps=2,
        count_prior_decay_steps=2.0, count_prior_final_odds=0.1, hw_prior_std=2.0, eval_every=2,
        patience=0, max_test_frames=2, n_figure_frames=2, eval_batch_size=2,
        model_overrides=("backbone_channels=16", "n_backbone_features=16", "n_passthrough_features=8", "A=8",
                         "lateral_hidden=[16]", "encoder_hidden=[32]", "decoder_hidden=[32]")),
}
"""The scales of :func:`run_space_invaders`. ``quick`` adapts ``paper`` to about 6,000 CPU steps the way
the MNIST CPU recipe (``spair.training.presets.CPU_RECIPE``) adapts the paper's MNIST settings: lr
1e-3 dropped ×0.1 for the last quarter, gradient noise, training wheels and the count-prior decay D
shortened (D = 500: the odds fall from 10^6 to 2F by step 3,500), and a background stage of 200 steps
at lr 1e-2 instead of 10k at 1e-4 (the colour σ(10θ) converges to black either way); F, the kernel
size, the size prior's std 0.5 and the crops are the paper's. The anchor is not
(:data:`QUICK_MODEL_OVERRIDES`): with the spec's 48-px anchor one object explained two neighbouring
invaders (half the count, AP@.5 0.00), with a 16-px anchor each invader is one object (AP@.5 0.99;
docs/space_invaders.md)."""


def get_scale(scale: str | Scale) -> Scale:
    """A :class:`Scale` by name (``paper``, ``quick``, ``tiny``), or ``scale`` itself."""
    if isinstance(scale, Scale):
        return scale
    try:
        return SCALES[scale]
    except KeyError:
        raise ConfigError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}") from None


def atari_spec(scale: Scale, seed: int = 0):
    """The :class:`~spair.data.atari.AtariSpec` of the frames: Space Invaders, one validation and one
    test episode, frames every emulator frame (NoFrameskip), pseudo-GT boxes as in the module docstring."""
    from ..data.atari import AtariSpec

    return AtariSpec(game=GAME, n_episodes=scale.n_episodes, max_frames_per_episode=scale.max_frames_per_episode,
                     seed=seed, n_val_episodes=1, n_test_episodes=1, box_tau=PSEUDO_GT_TAU, box_gap=PSEUDO_GT_GAP)


def model_config(scale: Scale):
    """SPAIR for Atari (spec 8.7): a solid learned background, backbone kernel 2, box-size prior
    logit(0.1) with the scale's std; everything else the model's defaults (12-px cells, 48-px anchor)."""
    from ..config import apply_overrides
    from ..models.spair import SpairConfig

    cfg = SpairConfig(kernel_size=2, hw_prior_mean=math.log(0.1 / 0.9), hw_prior_std=scale.hw_prior_std,
                      background="solid")
    return apply_overrides(cfg, list(scale.model_overrides)) if scale.model_overrides else cfg


def train_configs(scale: Scale, out: str | Path, seed: int = 0, num_threads: int = 0, device: str = "auto"):
    """The TrainConfigs of stage 1 (background only) and stage 2 (SPAIR): every training setting of
    the experiment in one place. The data comes from the experiment (``Trainer(train_data=...)``),
    so ``data`` and ``test`` are unused (``test.n = 0``)."""
    from ..config import from_dict, to_dict
    from ..training.config import TrainConfig

    out = Path(out)
    model = to_dict(model_config(scale))
    common = {
        "model": model, "seed": seed, "num_threads": num_threads, "device": device, "test": {"n": 0},
        "schedule": {"count_prior_final_odds": scale.count_prior_final_odds,
                     "count_prior_decay_steps": scale.count_prior_decay_steps,
                     "training_wheels_steps": scale.training_wheels_steps},
        "eval": {"sample": "mean", "box_mode": BOX_MODE, "batch_size": 100},
    }
    background = from_dict(TrainConfig, {
        **common, "log_every": max(1, min(50, scale.background_steps)),
        "optim": {"lr": scale.background_lr, "batch_size": scale.batch_size, "max_steps": scale.background_steps,
                  "lr_drop_at": 1.0, "grad_noise_decay_steps": scale.grad_noise_decay_steps,
                  "train_only": ["bg_logit"]},
        "eval": {**common["eval"], "every": scale.background_steps}})
    spair = from_dict(TrainConfig, {
        **common, "log_every": max(1, min(50, scale.eval_every)),
        "init_from": str(out / "background" / "last.pt"),
        "optim": {"lr": scale.lr, "batch_size": scale.batch_size, "max_steps": scale.spair_steps,
                  "lr_drop_at": scale.lr_drop_at, "grad_noise_decay_steps": scale.grad_noise_decay_steps},
        "eval": {**common["eval"], "every": scale.eval_every, "patience": scale.patience}})
    return background, spair


# --------------------------------------------------------------------------------------------
# Data


def crop_scenes(frames, n_per_frame: int, seed: Sequence[int] | int):
    """``n_per_frame`` random 48×48 crops of every frame, as Scenes with their pseudo-GT boxes
    (:func:`spair.data.atari.foreground_boxes` of each crop, the frame's background colour)."""
    from ..data.atari import foreground_boxes, random_frame_crops
    from ..data.scenes import Scenes

    crops, origins = random_frame_crops(frames.images, CROP_SIZE, n_per_frame, seed)
    backgrounds = frames.backgrounds[origins[:, 0]]
    boxes = foreground_boxes(crops, backgrounds, PSEUDO_GT_TAU, PSEUDO_GT_GAP)
    return Scenes(crops, boxes, [np.zeros(len(b), np.int64) for b in boxes], backgrounds)


def in_rows(boxes: np.ndarray, rows: tuple[int, int] = INVADER_ROWS) -> np.ndarray:
    """Mask of the boxes ``(k, 4)`` whose vertical centre lies in ``[rows[0], rows[1])``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    centre = (boxes[:, 1] + boxes[:, 3]) / 2
    return (centre >= rows[0]) & (centre < rows[1])


# --------------------------------------------------------------------------------------------
# Stages 1 and 2


def _train_stage(name: str, cfg, folder: Path, train, val, log: Log, progress: bool, tensorboard: bool
                 ) -> dict[str, Any]:
    """Train one stage unless its folder already holds a finished run of the same config."""
    from ..config import to_dict
    from ..io import read_json
    from ..training.checkpoint import config_differences
    from ..training.trainer import Trainer

    summary_path = folder / "summary.json"
    if summary_path.exists() and (folder / "last.pt").exists():
        old = read_json(folder / "config.json", "run config")
        diff = config_differences(old, to_dict(cfg))  # ignores threads and device (RUNTIME_SETTINGS)
        if diff:
            raise ConfigError(f"{folder} holds a finished '{name}' stage with other settings "
                              f"({', '.join(diff[:5])}); use another --out folder")
        log(f"stage '{name}': already trained ({folder})")
        summary = read_json(summary_path, "run summary")
        summary["skipped"] = True
        return summary
    log(f"stage '{name}': training {cfg.optim.max_steps} steps into {folder}")
    summary = Trainer(cfg, folder, progress=progress, tensorboard=tensorboard, log=log,
                      train_data=train, val_data=val).fit()
    summary["skipped"] = False
    return summary


# --------------------------------------------------------------------------------------------
# Stage 3: full frames


@dataclass
class FrameOutputs:
    """SPAIR on full frames: reconstructions, boxes, and the per-frame reconstruction errors."""

    recon: np.ndarray                # uint8 (N, H, W, 3) (rounded, for figures)
    boxes: list[np.ndarray]          # per frame float32 (k, 4), every reported object
    scores: list[np.ndarray]         # per frame float32 (k,) presence probability
    errors: dict[str, np.ndarray]    # per frame: mse / nll over the frame and the invader rows
    background: np.ndarray           # float (3,) the model's background colour in [0, 1]


def _errors(x, r, rows: tuple[int, int]) -> dict[str, Any]:
    """Per-image reconstruction errors of ``r`` for ``x`` (both (B, 3, H, W) in [0, 1])."""
    import torch

    nll = -(x * torch.log(r + 1e-9) + (1 - x) * torch.log(1 - r + 1e-9))    # the model's Bernoulli term
    se = (x - r) ** 2
    a, b = rows
    return {"mse": se.mean((1, 2, 3)), "nll": nll.sum((1, 2, 3)),
            "mse_rows": se[:, :, a:b].mean((1, 2, 3)), "nll_rows": nll[:, :, a:b].sum((1, 2, 3))}


def run_on_frames(model, images: np.ndarray, batch_size: int = 4, seed: int = 0,
                  rows: tuple[int, int] = INVADER_ROWS) -> FrameOutputs:
    """Deterministic inference (means, presence = 1[α > 0]) on full frames, with rendering."""
    import torch

    from ..models.spair import SpairNoise
    from ..models.spair_detector import detections_from_output

    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    recon, boxes, scores = [], [], []
    errors: dict[str, list[np.ndarray]] = {}
    background = np.zeros(3)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            gh, gw = model.grid_shape(*x.shape[-2:])
            noise = SpairNoise.sample(x.shape[0], gh * gw, model.cfg.A, device, gen)
            out = model(x, sample="mean", noise=noise)
            for d in detections_from_output(model, out, BOX_MODE, MIN_SCORE):
                boxes.append(d.boxes)
                scores.append(d.scores)
            r = out.recon.clamp(0, 1)
            recon.append((r.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
            for k, v in _errors(x, r, rows).items():
                errors.setdefault(k, []).append(v.cpu().numpy())
            background = out.background[0, :, 0, 0].cpu().numpy().astype(np.float64)
    return FrameOutputs(np.concatenate(recon), boxes, scores, {k: np.concatenate(v) for k, v in errors.items()},
                        background)


def background_errors(images: np.ndarray, colour: np.ndarray, rows: tuple[int, int] = INVADER_ROWS
                      ) -> dict[str, np.ndarray]:
    """Reconstruction errors of the constant image of ``colour`` ((3,) in [0, 1]): a reference."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double().div(255.0)
    r = torch.as_tensor(colour, dtype=torch.float64).view(1, 3, 1, 1).expand_as(x)
    return {k: v.numpy() for k, v in _errors(x, r, rows).items()}


def summarize_errors(errors: dict[str, np.ndarray], frame_hw: tuple[int, int], rows: tuple[int, int]
                     ) -> dict[str, dict[str, float]]:
    """Means over frames: MSE per pixel and channel, NLL per frame and per pixel (3 channels summed)."""
    H, W = frame_hw
    n_rows = rows[1] - rows[0]
    return {
        "frame": {"mse": float(errors["mse"].mean()), "nll_per_frame": float(errors["nll"].mean()),
                  "nll_per_pixel": float(errors["nll"].mean() / (H * W))},
        "invader_rows": {"mse": float(errors["mse_rows"].mean()), "nll_per_frame": float(errors["nll_rows"].mean()),
                         "nll_per_pixel": float(errors["nll_rows"].mean() / (n_rows * W))},
    }


def detection_metrics(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray],
                      gt_boxes: Sequence[np.ndarray], frame_hw: tuple[int, int],
                      rows: tuple[int, int] = INVADER_ROWS) -> dict[str, Any]:
    """Detection metrics of the predicted boxes against the pseudo ground truth, both restricted to
    ``rows`` (box centre inside)."""
    from ..metrics import evaluate_detections

    preds, scores, gts = [], [], []
    for p, s, g in zip(pred_boxes, pred_scores, gt_boxes):
        keep = in_rows(p, rows)
        preds.append(np.asarray(p, np.float32).reshape(-1, 4)[keep])
        scores.append(np.asarray(s, np.float32)[keep])
        gts.append(np.asarray(g, np.float32).reshape(-1, 4)[in_rows(g, rows)])
    m = evaluate_detections(preds, scores, gts, image_sizes=[frame_hw] * len(gts))
    out = {k: (None if isinstance(m[k], float) and math.isnan(m[k]) else m[k]) for k in REPORTED_DETECTION_METRICS}
    out["mean_gt_per_frame"] = float(np.mean([len(g) for g in gts])) if gts else 0.0
    out["mean_pred_per_frame"] = float(np.mean([len(p) for p in preds])) if preds else 0.0
    return out


def figure_indices(n: int, k: int) -> list[int]:
    """``k`` frame indices spread evenly over ``n`` frames (first and last included)."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(k, n))})


def draw_figure6(frames: np.ndarray, recons: np.ndarray, boxes: Sequence[np.ndarray], path: Path,
                 titles: Sequence[str] | None = None, gt_boxes: Sequence[np.ndarray] | None = None,
                 rows: tuple[int, int] | None = None) -> None:
    """One row per frame: the frame | SPAIR's reconstruction | SPAIR's boxes (blue) on the frame.

    With ``gt_boxes`` the third panel also shows them (yellow), and ``rows`` draws the edges of the
    evaluated rows as dashed lines. Written atomically as PNG.
    """
    from ..viz.boxes import overlay
    from ..viz.figures import new_figure, save_figure

    scale = 2
    n = len(frames)
    H, W = frames.shape[1:3]
    panel_w = 2.2
    panel_h = panel_w * H / W
    fig = new_figure(3 * panel_w, n * panel_h + 0.4, dpi=110)
    axes = fig.subplots(n, 3, squeeze=False)
    third = "boxes vs pseudo GT" if gt_boxes is not None else "SPAIR boxes"
    for i in range(n):
        gt = None if gt_boxes is None else gt_boxes[i]
        panels = (overlay(frames[i], None, None, scale=scale), overlay(recons[i], None, None, scale=scale),
                  overlay(frames[i], boxes[i], gt, scale=scale))
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(("frame", "reconstruction", third)[j], fontsize=8)
            if j == 0 and titles is not None:
                ax.set_ylabel(titles[i], fontsize=7)
            if j == 2 and rows is not None:
                for r in rows:
                    ax.axhline(r * scale - 0.5, color="white", linestyle="--", linewidth=0.5)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=1 - 0.3 / (n * panel_h + 0.4), wspace=0.03,
                        hspace=0.03)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# The experiment


def _without_machine(cfg: dict[str, Any]) -> dict[str, Any]:
    """A training config without the settings that do not change its results' meaning."""
    return {k: v for k, v in cfg.items() if k not in ("num_threads", "device")}


def _settings_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def run_space_invaders(out: str | Path = "results/space_invaders", scale: str | Scale = "quick", *, seed: int = 0,
                       cache_dir: str | Path | None = None, num_threads: int = 0, device: str = "auto",
                       log: Log = no_log, progress: bool = False, tensorboard: bool = False,
                       command: str = "") -> dict[str, Any]:
    """Run the experiment (module docstring) into ``out``; return the contents of ``results.json``.

    Args:
        out: folder for the two run folders, ``results.json``, ``figure6.png`` and ``pseudo_gt.png``.
        scale: ``"quick"`` (CPU), ``"paper"`` (GPU), ``"tiny"`` (smoke test) or a :class:`Scale`.
        seed: seed of the episodes (emulator and policy), the crops, the initialization and training.
        cache_dir: where the Atari frames are cached (default: the spair cache).
        num_threads: torch CPU threads (0 = torch's default, all cores).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:k]"``.
        log: receives one line per step of progress.
        progress: show the trainer's progress bars.
        tensorboard: write TensorBoard logs in the run folders.
        command: the command line, recorded in the results.
    """
    import torch

    from ..config import to_dict
    from ..data.atari import get_atari_dataset
    from ..io import read_json, write_json_atomic
    from ..models.io import load_model
    from ..training.trainer import resolve_device

    sc = get_scale(scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if num_threads:
        torch.set_num_threads(num_threads)

    # -- data
    t0 = time.perf_counter()
    spec = atari_spec(sc, seed)
    data = get_atari_dataset(spec, cache_dir=cache_dir, log=log)
    train = crop_scenes(data.train, sc.crops_per_frame, [seed, 1])
    val = crop_scenes(data.val, sc.crops_per_frame, [seed, 2])
    test = data.test if not sc.max_test_frames else data.test.subset(slice(0, sc.max_test_frames))
    timings["data"] = round(time.perf_counter() - t0, 2)
    log(f"data: {len(data.train)} training, {len(data.val)} validation and {len(data.test)} test frames "
        f"({data.folder}); {len(train)} training and {len(val)} validation crops of 48x48")

    # -- stages 1 and 2
    cfg_bg, cfg_spair = train_configs(sc, out, seed, num_threads, device)
    t0 = time.perf_counter()
    bg_summary = _train_stage("background", cfg_bg, out / "background", train, val, log, progress, tensorboard)
    timings["background"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    spair_summary = _train_stage("spair", cfg_spair, out / "spair", train, val, log, progress, tensorboard)
    timings["spair"] = round(time.perf_counter() - t0, 2)

    # -- stage 3
    checkpoint = out / "spair" / ("best.pt" if (out / "spair" / "best.pt").exists() else "last.pt")
    settings = {
        "scale": asdict(sc), "seed": seed, "data_key": data.key, "ale_py_version": data.ale_py_version,
        "background_config": _without_machine(to_dict(cfg_bg)), "spair_config": _without_machine(to_dict(cfg_spair)),
        "invader_rows": list(INVADER_ROWS), "pseudo_gt": {"tau": PSEUDO_GT_TAU, "gap": PSEUDO_GT_GAP},
        "box_mode": BOX_MODE, "min_score": MIN_SCORE, "checkpoint": checkpoint.name,
    }
    key = _settings_key(settings)
    results_path = out / RESULTS_FILE
    if results_path.exists() and (out / FIGURE_FILE).exists():
        old = read_json(results_path, "results file")
        if isinstance(old, dict) and old.get("settings_key") == key:
            log(f"stage 'evaluate': already done ({results_path})")
            return old

    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)
    log(f"stage 'evaluate': {checkpoint} on {len(test)} full test frames")
    outputs = run_on_frames(model, test.images, sc.eval_batch_size, seed)
    frame_hw = (int(test.images.shape[1]), int(test.images.shape[2]))
    grid = model.grid_shape(*frame_hw)
    recon_errors = summarize_errors(outputs.errors, frame_hw, INVADER_ROWS)
    bg_only = summarize_errors(background_errors(test.images, outputs.background), frame_hw, INVADER_ROWS)
    detection = detection_metrics(outputs.boxes, outputs.scores, test.boxes, frame_hw)
    timings["evaluate"] = round(time.perf_counter() - t0, 2)

    idx = figure_indices(len(test), sc.n_figure_frames)
    titles = [f"ep {int(test.episode[i])}, frame {int(test.frame[i])}" for i in idx]
    draw_figure6(test.images[idx], outputs.recon[idx], [outputs.boxes[i] for i in idx], out / FIGURE_FILE, titles)
    draw_figure6(test.images[idx], outputs.recon[idx],
                 [b[in_rows(b)] for b in (outputs.boxes[i] for i in idx)], out / PSEUDO_GT_FIGURE_FILE, titles,
                 gt_boxes=[test.boxes[i][in_rows(test.boxes[i])] for i in idx], rows=INVADER_ROWS)
    timings["total"] = round(time.perf_counter() - t_start, 2)

    results = {
        "experiment": "space_invaders",
        "description": "SPAIR trained on random 48x48 crops of Space Invaders frames (random policy), "
                       "evaluated on the full 210x160 frames of the test episode (paper section 5.4, Figure 6)",
        "command": command,
        "spair_version": __version__,
        "settings_key": key,
        "scale": asdict(sc),
        "seed": seed,
        "device": str(dev),
        "data": {"spec": to_dict(spec), "ale_py_version": data.ale_py_version, "key": data.key,
                 "frames": {s: len(data.splits[s]) for s in ("train", "val", "test")},
                 "crops": {"train": len(train), "val": len(val), "size": list(CROP_SIZE)},
                 "episodes": data.episodes},
        "settings": {
            "model": to_dict(cfg_spair.model),
            "background_stage": {"steps": cfg_bg.optim.max_steps, "lr": cfg_bg.optim.lr,
                                 "train_only": list(cfg_bg.optim.train_only)},
            "spair_stage": {"steps": cfg_spair.optim.max_steps, "lr": cfg_spair.optim.lr,
                            "lr_drop_at": cfg_spair.optim.lr_drop_at, "batch_size": cfg_spair.optim.batch_size,
                            "count_prior_final_odds_F": cfg_spair.schedule.count_prior_final_odds,
                            "count_prior_decay_steps_D": cfg_spair.schedule.count_prior_decay_steps,
                            "training_wheels_steps": cfg_spair.schedule.training_wheels_steps,
                            "init_from": "background/last.pt"},
            "checkpoint": f"spair/{checkpoint.name}",
            "checkpoint_selection": "best validation SPAIR-AP of stage 2 on the validation crops against their "
                                    "pseudo ground truth (the trainer's criterion; the authors stopped on the "
                                    "reconstruction loss)",
            "inference": {"sample": "mean", "box_mode": BOX_MODE, "min_score": MIN_SCORE},
            "invader_rows": {"rows": list(INVADER_ROWS), "rule": "box centre row in [20, 157): below the score "
                             "(rows 10-19), above the shields (157-174), cannon (185-194) and ground (195-209)"},
            "pseudo_gt": {"tau": PSEUDO_GT_TAU, "gap": PSEUDO_GT_GAP, "background": "most frequent colour of each frame",
                          "definition": "ConnComp foreground (summed colour difference to the background > tau), "
                                        "pieces at most 2*gap px apart joined; boxes = extent of the foreground pixels"},
        },
        "stages": {
            "background": {k: bg_summary.get(k) for k in ("steps", "train_seconds", "skipped")},
            "spair": {k: spair_summary.get(k) for k in ("steps", "train_seconds", "best_val_ap", "best_step", "skipped")},
        },
        "test": {
            "n_frames": len(test), "frame_size": list(frame_hw), "grid": list(grid),
            "reconstruction": recon_errors,
            "background_only_reconstruction": bg_only,
            "background_colour": [round(float(v), 6) for v in outputs.background],
            "detection_invader_rows": detection,
            "mean_boxes_per_frame_whole_frame": float(np.mean([len(b) for b in outputs.boxes])) if outputs.boxes else 0.0,
        },
        "metric_definitions": {
            "mse": "mean over frames of the squared error per pixel and channel, intensities in [0, 1]",
            "nll_per_frame": "Bernoulli negative log-likelihood of the frame under the reconstruction (nats, summed "
                             "over pixels and channels: the training loss's reconstruction term)",
            "nll_per_pixel": "nll_per_frame divided by the number of pixels (3 channels summed)",
            "background_only_reconstruction": "the same errors for an image of the model's background colour alone",
            "coco_AP@.5": "COCO AP at IoU 0.5, ranked by presence probability",
            "coco_AP[.1:.9]": "COCO AP averaged over IoU 0.1:0.1:0.9",
            "spair_AP": "the paper's AP protocol (IoU 0.1..0.9, 11-point, per batch of 32, confidence 1)",
            "count_abs_error": "mean |predicted - pseudo-GT| number of objects per frame (invader rows)",
            "count_01_error": "fraction of frames with a wrong number of objects (invader rows)",
            "count_bias": "mean (predicted - pseudo-GT) number of objects per frame (invader rows)"},
        "figures": {"figure6": FIGURE_FILE, "pseudo_gt": PSEUDO_GT_FIGURE_FILE,
                    "frames": [{"episode": int(test.episode[i]), "frame": int(test.frame[i])} for i in idx]},
        "timings_s": timings,
    }
    results = json.loads(json.dumps(results))  # plain JSON data, as a later run reads it back
    write_json_atomic(results_path, results)
    d = detection
    log(f"test ({len(test)} frames, {grid[0]}x{grid[1]} cells): MSE {recon_errors['frame']['mse']:.5f} "
        f"(background alone {bg_only['frame']['mse']:.5f}); invader rows: COCO AP@.5 {_fmt(d['coco_AP@.5'])}, "
        f"AP[.1:.9] {_fmt(d['coco_AP[.1:.9]'])}, count |err| {d['count_abs_error']:.2f} "
        f"({d['mean_pred_per_frame']:.1f} found / {d['mean_gt_per_frame']:.1f} pseudo-GT per frame)")
    log(f"wrote {results_path}, {out / FIGURE_FILE} and {out / PSEUDO_GT_FIGURE_FILE}")
    return results


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
