"""Training AIR and DAIR: Adam, gradient clipping, validation AP, early stopping, exact resume.

The SPAIR :class:`~spair.training.trainer.Trainer` is written for SPAIR: it builds ``Spair``,
passes the count-prior and training-wheels schedules to its forward pass, logs SPAIR's latents and
evaluates with SPAIR's detector. AIR needs other things: the true number of objects of every
training image (the number of steps), a presence-prior schedule instead of the count prior, no
training wheels and no gradient noise. This module is the small trainer AIR needs; it reuses the
data settings (:class:`~spair.training.config.DataConfig`, :class:`~spair.training.config.TestConfig`),
the dataset loading, the schedules, the atomic checkpoint writer and the config comparison of the
SPAIR trainer, and writes the same run folder:

    config.json          the resolved AirTrainConfig (a resume with a different config is refused)
    last.pt, best.pt     checkpoints (atomic, weights-only loadable); best = best validation SPAIR-AP
    metrics.jsonl        one JSON object per log / evaluation step
    summary.json         best validation AP, steps, time, and the test metrics of best.pt

Settings of the authors (spec section 10): Adam 1e−4, batch 64, global-norm clip 1.0, no gradient
noise, KL weight 1, early stopping on validation AP. Randomness is counter-based as in the SPAIR
trainer: the batch and noise generators are re-seeded from (seed, step) at every step, so a run
resumed from ``last.pt`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..config import param, to_dict
from ..data.scenes import SceneConfig, Scenes
from ..errors import ConfigError, SpairError
from ..io import read_json, write_json_atomic
from ..models.air import CHECKPOINT_FORMAT, Air, AirConfig, AirDetector, load_air_model, read_air_checkpoint
from .checkpoint import config_differences, save_checkpoint
from .config import DataConfig, TestConfig
from .metrics_log import append_record, trim_after
from .schedules import Exponential
from .trainer import load_split, load_test, resolve_device


class AirTrainingAborted(SpairError):
    """AIR training could not continue (repeated non-finite losses or gradients)."""


@dataclass
class AirOptimConfig:
    lr: float = param(1e-4, lo=0.0, lo_open=True, help="Adam learning rate")
    batch_size: int = param(64, lo=1, hi=65536, help="images per step")
    max_steps: int = param(300000, lo=1, help="training steps")
    max_grad_norm: float = param(1.0, lo=0.0, help="global gradient-norm clip (0 = off)")
    max_bad_steps: int = param(20, lo=1, help="abort after this many consecutive non-finite losses or gradients")


@dataclass
class AirScheduleConfig:
    """Presence-prior odds of the halting variant: Exp(start → final, ×0.1 per decay_steps), as log-odds."""

    pres_prior_start_odds: float = param(1e4, lo=0.0, lo_open=True, help="presence-prior odds at step 0")
    pres_prior_final_odds: float = param(1e-9, lo=0.0, lo_open=True, help="final presence-prior odds")
    pres_prior_decay_steps: float = param(3000.0, lo=0.0, lo_open=True, help="odds ×0.1 every this many steps")


@dataclass
class AirEvalConfig:
    every: int = param(1000, lo=1, help="evaluate on the validation scenes every this many steps")
    patience: int = param(50000, lo=0, help="stop when validation AP has not improved for this many steps (0 = off)")
    stop_at_ap: float = param(0.99, lo=0.0, help="stop once validation AP reaches this value (> 1 = never)")
    sample: Literal["mean", "hard"] = param("mean", help="inference: 'mean' (deterministic) or 'hard' (samples)")
    box_mode: Literal["ink", "window", "segment"] = param(
        "ink", help="box of an object: extent of its visible ink, its window, or its segment of the input")
    batch_size: int = param(100, lo=1, help="evaluation batch size (SPAIR-AP still pools per 32 images)")


def _default_data() -> DataConfig:
    return DataConfig(scene=SceneConfig(image_size=(48, 48), n_objects=(5, 5)), crop=None, n_train=64000, n_val=1000)


@dataclass
class AirTrainConfig:
    """Everything an AIR/DAIR run depends on; defaults: the authors' AIR on 48×48 scenes with 5 digits."""

    model: AirConfig = field(default_factory=AirConfig)
    data: DataConfig = field(default_factory=_default_data)
    test: TestConfig = field(default_factory=TestConfig)
    optim: AirOptimConfig = field(default_factory=AirOptimConfig)
    schedule: AirScheduleConfig = field(default_factory=AirScheduleConfig)
    eval: AirEvalConfig = field(default_factory=AirEvalConfig)
    seed: int = param(0, lo=0, help="seed of the initialization, the batches and the sampling noise")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = leave torch's setting)")
    log_every: int = param(50, lo=1, help="log the training losses every this many steps")
    max_minutes: float = param(0.0, lo=0.0, help="stop after this much wall time (0 = no limit; makes runs time-dependent)")
    device: str = param("auto", help="'auto', 'cpu' or 'cuda[:k]'")

    def __post_init__(self) -> None:
        size = tuple(self.data.crop.size) if self.data.crop is not None else tuple(self.data.scene.image_size)
        if size != tuple(self.model.image_size):
            raise ConfigError(f"data: training images are {size[0]}x{size[1]} but model.image_size is "
                              f"{tuple(self.model.image_size)}")
        if self.test.n and tuple(self.test.scene.image_size) != tuple(self.model.image_size):
            raise ConfigError(f"test.scene.image_size {tuple(self.test.scene.image_size)} differs from "
                              f"model.image_size {tuple(self.model.image_size)}")


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_air(model: Air, scenes: Scenes, *, batch_size: int = 100, sample: str = "mean", box_mode: str = "ink",
                 seed: int = 0) -> dict[str, Any]:
    """All detection metrics of ``model`` on ``scenes`` (plus the mean box size).

    Without halting, each image runs its true number of objects (``scenes.counts``), as in the
    paper's comparison; a halting model decides by itself (at most ``max_steps``).
    """
    from ..metrics import evaluate_detections

    device = next(model.parameters()).device
    det = AirDetector(model=model, box_mode=box_mode, batch_size=batch_size, sample=sample, seed=seed,  # type: ignore[arg-type]
                      device=str(device))
    was_training = model.training
    dets = det.detect(scenes.images, n_steps=None if model.cfg.halting else scenes.counts)
    model.train(was_training)
    H, W = scenes.images.shape[1:3]
    metrics = evaluate_detections([d.boxes for d in dets], [d.scores for d in dets], scenes.boxes,
                                  image_sizes=[(H, W)] * len(scenes))
    sizes = np.concatenate([d.boxes[:, 2:] - d.boxes[:, :2] for d in dets] or [np.zeros((0, 2))])
    metrics["mean_box_wh"] = [float(v) for v in sizes.mean(0)] if len(sizes) else [0.0, 0.0]
    metrics["n_images"] = len(scenes)
    return metrics


# --------------------------------------------------------------------------------------------
# The trainer


class AirTrainer:
    """Train one AIR/DAIR run into ``out_dir`` (module docstring); :meth:`fit` returns the summary."""

    def __init__(self, cfg: AirTrainConfig, out_dir: str | os.PathLike, *, progress: bool = True,
                 log: Callable[[str], None] | None = None, train_data: Scenes | None = None,
                 val_data: Scenes | None = None, test_data: Scenes | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self._given = {"train": train_data, "val": val_data, "test": test_data}
        self._log = log or (lambda s: print(s, flush=True))
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        s = cfg.schedule
        self.pres_prior = Exponential(s.pres_prior_start_odds, s.pres_prior_final_odds, 0.1, s.pres_prior_decay_steps,
                                      log=True)
        self.step = 0
        self.best: dict[str, float] = {"ap": -1.0, "step": -1}
        self.bad_steps = 0

    # -- set-up -------------------------------------------------------------------------------

    def _prepare_run_dir(self) -> dict[str, Any] | None:
        cfg_data = to_dict(self.cfg)
        cfg_path, last = self.out / "config.json", self.out / "last.pt"
        if cfg_path.exists() and last.exists():
            diff = config_differences(read_json(cfg_path, "run config"), cfg_data)
            if diff:
                raise ConfigError(f"refusing to resume {self.out}: its config differs in {', '.join(diff[:5])}; "
                                  "use another output folder")
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):  # temporary files of writes cut short by a kill
            stale.unlink(missing_ok=True)
        write_json_atomic(cfg_path, cfg_data)
        return read_air_checkpoint(last) if last.exists() else None

    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):  # a seeded initialization that leaves the global RNG alone
            torch.manual_seed(self.cfg.seed)
            self.model = Air(self.cfg.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.optim.lr)
        self.data_gen = torch.Generator()
        self.noise_gen = torch.Generator(device=self.device)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        diff = config_differences(ckpt.get("train_config", {}), to_dict(self.cfg))
        if diff:
            raise ConfigError(f"refusing to resume from {self.out / 'last.pt'}: its config differs in "
                              f"{', '.join(diff[:5])}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.best = dict(ckpt.get("best", self.best))
        self.bad_steps = int(ckpt.get("bad_steps", 0))

    def _checkpoint(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "model_kind": "air", "model_config": to_dict(self.cfg.model),
                "model": self.model.state_dict(), "train_config": to_dict(self.cfg),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "rng": {"scheme": "per-step", "seed": self.cfg.seed},
                "schedules": {"pres_prior_log_odds": self.pres_prior.value(self.step), "lr": self.cfg.optim.lr},
                "best": dict(self.best), "bad_steps": self.bad_steps}

    def _seed_step(self) -> None:
        base = self.cfg.seed * 1_000_003 + self.step
        self.data_gen.manual_seed(base * 2 + 1)
        self.noise_gen.manual_seed((base * 2 + 2) * 1009)

    # -- one step -----------------------------------------------------------------------------

    def train_step(self) -> dict[str, float] | None:
        cfg, step = self.cfg, self.step
        self._seed_step()
        idx = torch.randint(len(self.train), (cfg.optim.batch_size,), generator=self.data_gen).numpy()
        x = torch.from_numpy(self.train.images[idx]).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        n_steps = torch.from_numpy(self.train_counts[idx]).to(self.device)
        if cfg.model.halting:
            n_steps = None
        log_odds = self.pres_prior.value(step)
        out = self.model(x, n_steps, sample="relaxed", pres_prior_log_odds=log_odds, generator=self.noise_gen)
        loss = out.losses.total.mean()
        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            params = [p for p in self.model.parameters() if p.grad is not None]
            if cfg.optim.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            else:
                gnorm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
            finite = bool(torch.isfinite(gnorm))
        self.step += 1
        if not finite:
            self.bad_steps += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; step skipped ({self.bad_steps} in a row)",
                          RuntimeWarning, stacklevel=2)
            if self.bad_steps >= cfg.optim.max_bad_steps:
                raise AirTrainingAborted(f"training aborted at step {step}: {self.bad_steps} consecutive non-finite "
                                         "losses or gradients (try a lower optim.lr)")
            return None
        self.bad_steps = 0
        self.optimizer.step()
        with torch.no_grad():
            on = out.on.to(x.dtype)
            size = (out.scale * on[..., None]).sum((0, 1)) / on.sum().clamp(min=1)
            counts = on.sum(1).cpu().numpy()
            stats = {"loss": float(loss), **{k: v for k, v in out.losses.means().items() if k != "total"},
                     "count_bias": float((counts - self.train_counts[idx]).mean()),
                     "box_h": float(size[0]) * cfg.model.image_size[0], "box_w": float(size[1]) * cfg.model.image_size[1],
                     "grad_norm": float(gnorm), "pres_prior_log_odds": log_odds}
        return stats

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = self._prepare_run_dir()
        self._build()
        if ckpt is not None:
            self._restore(ckpt)
            self._log(f"resuming {self.out} from step {self.step}")
        self.train = self._given["train"] or load_split(cfg, "train")  # type: ignore[arg-type]
        self.val = self._given["val"] or load_split(cfg, "val")  # type: ignore[arg-type]
        self.train_counts = self.train.counts.astype(np.int64)
        self._trim_metrics_log()
        bar = self._progress_bar()
        window: list[dict[str, float]] = []
        start_wall = time.perf_counter()
        self.model.train()
        try:
            while self.step < cfg.optim.max_steps:
                t = time.perf_counter()
                stats = self.train_step()
                if stats is not None:
                    stats["step_time"] = time.perf_counter() - t
                    window.append(stats)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 and window:
                    mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    self._append_metrics({"step": self.step, "kind": "train", **mean})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean['loss']:.1f}", best=f"{self.best['ap']:.3f}", refresh=False)
                    window = []
                done = self.step >= cfg.optim.max_steps
                out_of_time = cfg.max_minutes > 0 and (time.perf_counter() - start_wall) > 60 * cfg.max_minutes
                if self.step % cfg.eval.every == 0 or done or out_of_time:
                    if self._evaluate_and_checkpoint(bar) or out_of_time:
                        if out_of_time:
                            self._log(f"stopping at step {self.step}: max_minutes={cfg.max_minutes} reached")
                        break
        finally:
            if bar is not None:
                bar.close()
        return self._finish(time.perf_counter() - start_wall)

    def _evaluate_and_checkpoint(self, bar: Any) -> bool:
        cfg = self.cfg
        metrics = evaluate_air(self.model, self.val, batch_size=cfg.eval.batch_size, sample=cfg.eval.sample,
                               box_mode=cfg.eval.box_mode)
        ap = metrics["spair_AP"]
        improved = ap > self.best["ap"]
        if improved:
            self.best = {"ap": ap, "step": self.step}
        self._append_metrics({"step": self.step, "kind": "eval", **{f"val_{k}": v for k, v in metrics.items()
                                                                    if isinstance(v, (int, float))}})
        msg = (f"step {self.step}: val SPAIR-AP {ap:.3f} COCO AP[.1:.9] {metrics['coco_AP[.1:.9]']:.3f}"
               f"{'  (best)' if improved else ''}")
        (bar.write if bar is not None else self._log)(msg)
        ckpt = self._checkpoint()
        if improved:
            save_checkpoint(self.out / "best.pt", ckpt)
        save_checkpoint(self.out / "last.pt", ckpt)
        if cfg.eval.patience and self.step - self.best["step"] >= cfg.eval.patience:
            self._log(f"early stopping at step {self.step}: no improvement for {cfg.eval.patience} steps")
            return True
        if ap >= cfg.eval.stop_at_ap:
            self._log(f"stopping at step {self.step}: validation AP {ap:.3f} ≥ {cfg.eval.stop_at_ap}")
            return True
        return False

    def _finish(self, wall: float) -> dict[str, Any]:
        summary: dict[str, Any] = {"run": str(self.out), "steps": self.step, "train_seconds": round(wall, 1),
                                   "best_val_ap": self.best["ap"], "best_step": self.best["step"]}
        best_path = self.out / "best.pt"
        if best_path.exists():
            test = self._given["test"] or load_test(self.cfg)  # type: ignore[arg-type]
            if test is not None:
                model = load_air_model(best_path, self.device)
                t = evaluate_air(model, test, batch_size=self.cfg.eval.batch_size, sample=self.cfg.eval.sample,
                                 box_mode=self.cfg.eval.box_mode)
                summary["test"] = t
                self._log(f"test ({len(test)} scenes): SPAIR-AP {t['spair_AP']:.3f}  "
                          f"COCO AP[.1:.9] {t['coco_AP[.1:.9]']:.3f}")
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    # -- logging ------------------------------------------------------------------------------

    def _progress_bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.optim.max_steps, initial=self.step, desc=f"train {self.cfg.model.variant}",
                    unit="step", dynamic_ncols=True, mininterval=1.0)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        append_record(self.out / "metrics.jsonl", record)

    def _trim_metrics_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be written again)."""
        trim_after(self.out / "metrics.jsonl", self.step)


def paper_air_config(variant: str, n: int) -> AirTrainConfig:
    """The authors' AIR/DAIR run of the comparison for ``n`` digits (spec sections 8.2 and 10):
    their priors for ``n``, 64,000 training and 1000 validation / test scenes with exactly ``n``
    digits, Adam 1e−4, batch 64, clip 1.0, validation every 1000 steps, patience 50,000, at most
    300,000 steps (the limit of their framework), stop at validation AP 0.99."""
    scene = SceneConfig(image_size=(48, 48), n_objects=(n, n))
    return AirTrainConfig(
        model=AirConfig.for_comparison(variant, n),
        data=DataConfig(scene=scene, crop=None, n_train=64000, n_val=1000),
        test=TestConfig(scene=SceneConfig(image_size=(48, 48), n_objects=(n, n), split="test"), n=1000),
    )


__all__ = ["AirEvalConfig", "AirOptimConfig", "AirScheduleConfig", "AirTrainConfig", "AirTrainer",
           "AirTrainingAborted", "evaluate_air", "paper_air_config"]
