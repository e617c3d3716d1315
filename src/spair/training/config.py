"""The training configuration: one typed dataclass tree, saved with every run and checkpoint.

``TrainConfig`` = model (``SpairConfig``) + data + optimizer + schedules + evaluation. Presets
(``spair.training.presets``) are named instances of it; the command line applies ``key=value``
overrides to a preset or a config file (``spair train --preset demo optim.lr=3e-4``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import param
from ..data.datasets import CropConfig
from ..data.scenes import SceneConfig
from ..errors import ConfigError
from ..models.spair import SpairConfig


@dataclass
class DataConfig:
    """Training and validation scenes. Validation uses the same scenes with the val digit split (and, with
    ``val_n_objects``, another number of objects per scene: the best checkpoint is chosen on them)."""

    scene: SceneConfig = field(default_factory=lambda: SceneConfig(image_size=(84, 84), n_objects=(1, 15)))
    crop: CropConfig | None = field(default_factory=lambda: CropConfig(size=(48, 48), n_per_image=4))
    n_train: int = param(25000, lo=1, help="training scenes (before cropping)")
    n_val: int = param(250, lo=1, help="validation scenes (before cropping)")
    train_seed: int = param(0, lo=0, help="seed of the training scenes")
    val_seed: int = param(1, lo=0, help="seed of the validation scenes")
    val_n_objects: tuple[int, int] | None = param(
        None, lo=0, hi=10000, help="objects per validation scene, inclusive range (null: as the training scenes)")


@dataclass
class TestConfig:
    """Held-out scenes (test digits) evaluated with the best checkpoint at the end of training."""

    scene: SceneConfig = field(default_factory=lambda: SceneConfig(image_size=(48, 48), n_objects=(5, 5), split="test"))
    n: int = param(1000, lo=0, help="test scenes (0 = no test evaluation)")
    seed: int = param(2, lo=0, help="seed of the test scenes")


@dataclass
class OptimConfig:
    lr: float = param(1e-3, lo=0.0, lo_open=True, help="Adam learning rate")
    batch_size: int = param(32, lo=1, hi=65536, help="images per step (global batch under DDP)")
    max_steps: int = param(3000, lo=1, help="training steps")
    lr_drop_at: float = param(0.75, lo=0.0, hi=1.0, help="fraction of max_steps after which the lr is multiplied by lr_drop_factor (1 = never)")
    lr_drop_factor: float = param(0.1, lo=0.0, hi=1.0, help="lr multiplier for the end of training")
    max_grad_norm: float = param(1.0, lo=0.0, help="global gradient-norm clip (0 = off)")
    grad_noise_std: float = param(1e-3, lo=0.0, help="std of the gradient noise at step 0")
    grad_noise_decay_steps: float = param(1000.0, lo=0.0, lo_open=True, help="gradient noise std ×0.1 every this many steps")
    grad_noise_sampler: Literal["per-tensor", "flat"] = param(
        "per-tensor", help="per-tensor: torch's trunc_normal_ on each gradient (whole-tensor redraws until none is "
        "outside ±2σ); flat: one draw for all gradients, redrawing only the values outside ±2σ (the same "
        "distribution, other numbers, ~10× cheaper)")
    max_bad_steps: int = param(20, lo=1, help="abort after this many consecutive non-finite losses or gradients")
    train_only: tuple[str, ...] = param((), help="train only parameters whose names start with one of these "
                                        "(e.g. ['bg_logit'] for a background-only stage); empty = all")


@dataclass
class ScheduleConfig:
    """The count-prior odds Exp(start → final, ×0.1 per decay_steps) and the training wheels."""

    count_prior_start_odds: float = param(1e6, lo=0.0, lo_open=True, help="count-prior odds p/(1−p) at step 0")
    count_prior_final_odds: float = param(0.0125, lo=0.0, lo_open=True, help="final count-prior odds (the authors' F)")
    count_prior_decay_steps: float = param(1000.0, lo=0.0, lo_open=True, help="odds ×0.1 every this many steps (the authors' D)")
    training_wheels_steps: int = param(1000, lo=0, help="steps during which only appearance and background learn")


@dataclass
class EvalConfig:
    every: int = param(500, lo=1, help="evaluate on the validation scenes every this many steps")
    patience: int = param(0, lo=0, help="stop when validation AP has not improved for this many steps (0 = off)")
    stop_at_ap: float = param(1.01, lo=0.0, help="stop once validation AP reaches this value (> 1 = never)")
    sample: Literal["mean", "hard"] = param("mean", help="inference: 'mean' (deterministic) or 'hard' (the paper's stochastic samples)")
    box_mode: Literal["segment", "ink", "window"] = param(
        "segment", help="box of an object: the image pixels it explains, its own visible ink, or its sprite window")
    batch_size: int = param(100, lo=1, help="evaluation batch size (SPAIR-AP still pools per 32 images)")
    refine_steps: int = param(20, lo=0, help="test scenes: refine the reported objects' latents on each image for this "
                              "many steps before reading their boxes (spair.models.refine; 0 = off); validation "
                              "during training does not refine, for speed")


@dataclass
class TrainConfig:
    model: SpairConfig = field(default_factory=SpairConfig)
    data: DataConfig = field(default_factory=DataConfig)
    test: TestConfig = field(default_factory=TestConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = param(0, lo=0, help="seed of the initialization, the batches and the sampling noise")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = all cores)")
    log_every: int = param(50, lo=1, help="log the training losses every this many steps")
    max_minutes: float = param(0.0, lo=0.0, help="stop training after this much wall time (0 = no limit; makes runs time-dependent)")
    device: str = param("auto", help="'auto', 'cpu' or 'cuda[:k]'")
    init_from: str = param("", help="start from the model weights of this checkpoint or model file "
                           "(a curriculum stage); the optimizer and the step start afresh")
    amp: bool = param(False, help="bf16 autocast on CUDA and on the CPU (latents, log-odds, KLs, rendering and likelihood stay in fp32)")

    def __post_init__(self) -> None:
        if self.data.crop is not None:
            ch, cw = self.data.crop.size
            h, w = self.data.scene.image_size
            if ch > h or cw > w:
                raise ConfigError(f"data.crop.size {self.data.crop.size} is larger than data.scene.image_size "
                                  f"{self.data.scene.image_size}")
