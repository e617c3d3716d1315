"""Stage 2 of the downstream tasks: train a classifier over objects on a labelled task.

One run trains a :class:`~spair.models.classifiers.DownstreamModel` (a front end and a classifier,
:mod:`spair.models.classifiers`) with softmax cross-entropy and Adam, evaluates the validation
accuracy every ``eval.every`` steps, keeps the best checkpoint, stops early when the validation
accuracy has not improved for ``eval.patience`` steps, and finally reports the accuracy of the
best checkpoint on the test set. A run lives in one folder:

    config.json          the resolved DownstreamConfig (a resume with another config is refused)
    last.pt, best.pt     checkpoints (atomic writes, weights-only loadable); best = best val accuracy
    metrics.jsonl        one JSON object per log / evaluation step
    summary.json         best validation accuracy, steps, times, and the test accuracy of best.pt

A checkpoint holds only what stage 2 trains (the classifier and any trainable part of the front
end), never the frozen stage-1 model: that is read from the stage-1 checkpoint, whose sha256 is
recorded and checked when the run resumes or is loaded (:func:`load_downstream`).

**Determinism.** The classifier's initialization is seeded with ``seed`` (without touching the
global generator) and the batch of step ``t`` is drawn by a generator re-seeded from
``(seed, t)``; nothing else is random in stage 2 (the front ends are deterministic), so a run
resumed from ``last.pt`` ends with exactly the weights of an uninterrupted run. A run that
stopped early remembers it (``stopped`` in ``last.pt``) and is not trained further when resumed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import from_dict, param, to_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_torch_file, read_json, sha256_file, write_json_atomic
from ..models.classifiers import (ClassifierConfig, DownstreamModel, FrontEndConfig, Prepared,
                                  build_downstream_model, images_to_tensor)
from .checkpoint import config_differences, save_checkpoint
from .metrics_log import append_record, trim_after
from .trainer import resolve_device

FORMAT = "spair-downstream-1"
"""``format`` of a stage-2 checkpoint."""


@dataclass
class DownstreamOptimConfig:
    lr: float = param(1e-3, lo=0.0, lo_open=True, help="Adam learning rate")
    batch_size: int = param(32, lo=1, hi=65536, help="examples per step")
    max_steps: int = param(4000, lo=1, help="most training steps")
    max_grad_norm: float = param(0.0, lo=0.0, help="global gradient-norm clip (0 = off; clipping at 1.0 kept the "
                                                   "addition LSTM on its initial plateau, docs/downstream.md)")


@dataclass
class DownstreamEvalConfig:
    every: int = param(250, lo=1, help="evaluate the validation accuracy every this many steps")
    patience: int = param(1500, lo=0, help="stop when the validation accuracy has not improved for this "
                                           "many steps (0 = off)")
    batch_size: int = param(250, lo=1, help="evaluation batch size")


@dataclass
class DownstreamConfig:
    """Everything a stage-2 run depends on (besides its data)."""

    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    optim: DownstreamOptimConfig = field(default_factory=DownstreamOptimConfig)
    eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)
    seed: int = param(0, lo=0, help="seed of the initialization and of the batches")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = leave torch's setting)")
    log_every: int = param(50, lo=1, help="log the training loss every this many steps")
    device: str = param("auto", help="'auto', 'cpu' or 'cuda[:k]'")


@dataclass
class TaskData:
    """Labelled images: ``targets`` int64 (N,) in ``0..n_classes − 1``; ``boxes`` (ground truth,
    for TrueBB) and ``backgrounds`` (for ConnComp) when a front end needs them."""

    images: np.ndarray
    targets: np.ndarray
    boxes: list[np.ndarray] | None = None
    backgrounds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise DataError(f"task data: images must be uint8 (N, H, W, 3), got {self.images.dtype} "
                            f"{self.images.shape}")
        self.targets = np.asarray(self.targets, dtype=np.int64)
        n = len(self.images)
        if self.targets.shape != (n,):
            raise DataError(f"task data: {n} images but targets of shape {self.targets.shape}")
        if self.boxes is not None and len(self.boxes) != n:
            raise DataError(f"task data: {n} images but {len(self.boxes)} box sets")
        if self.backgrounds is not None and len(self.backgrounds) != n:
            raise DataError(f"task data: {n} images but {len(self.backgrounds)} backgrounds")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_scenes(cls, scenes: Any, targets: np.ndarray) -> "TaskData":
        """From :class:`~spair.data.scenes.Scenes` (images, boxes, backgrounds) and the targets."""
        return cls(scenes.images, targets, list(scenes.boxes), scenes.backgrounds)

    def subset(self, idx: Any) -> "TaskData":
        sel = np.atleast_1d(np.arange(len(self))[idx])
        return TaskData(self.images[sel], self.targets[sel],
                        None if self.boxes is None else [self.boxes[i] for i in sel],
                        None if self.backgrounds is None else self.backgrounds[sel])


# --------------------------------------------------------------------------------------------
# Preparation and evaluation


def prepare(model: DownstreamModel, data: TaskData) -> Prepared:
    """The front end's per-image tensors for ``data`` (computed once, without gradients)."""
    with torch.no_grad():
        prepared = model.front_end.prepare(data.images, data.boxes, data.backgrounds)
    for k, v in prepared.items():
        if v.shape[0] != len(data):
            raise ValueError(f"prepared tensor '{k}' has {v.shape[0]} rows for {len(data)} images")
    return prepared


def _batch(model: DownstreamModel, data: TaskData, prepared: Prepared, idx: np.ndarray,
           device: torch.device) -> tuple[torch.Tensor | None, Prepared]:
    x = images_to_tensor(data.images[idx], device) if model.front_end.uses_images else None
    sel = torch.from_numpy(idx)
    return x, {k: v[sel].to(device) for k, v in prepared.items()}


@torch.no_grad()
def evaluate_accuracy(model: DownstreamModel, data: TaskData, prepared: Prepared, *, batch_size: int = 250,
                      device: torch.device | str | None = None) -> dict[str, Any]:
    """``accuracy``, mean cross-entropy ``loss``, ``n`` examples and ``mean_objects`` (present
    objects per image) of ``model`` on ``data``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss, objects = 0, 0.0, 0.0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x, prep = _batch(model, data, prepared, idx, device)
        objs, mask = model.front_end(x, prep)
        logits = model.classifier(objs, mask)
        y = torch.from_numpy(data.targets[idx]).to(device)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        objects += float(mask.sum())
    model.train(was_training)
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss / n, "n": len(data), "mean_objects": objects / n}


# --------------------------------------------------------------------------------------------
# Checkpoints


def _stage1_info(cfg: DownstreamConfig) -> dict[str, str] | None:
    path = cfg.front_end.checkpoint
    if cfg.front_end.kind not in ("spair", "air"):
        return None
    if not path or not Path(path).is_file():
        raise CheckpointError(f"stage-1 checkpoint not found: {path or '(none given)'}")
    return {"path": str(path), "sha256": sha256_file(path)}


def read_downstream_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A stage-2 checkpoint read with ``weights_only=True``; every failure is one CheckpointError."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a downstream (stage-2) checkpoint (format '{FORMAT}')")
    for key in ("model", "train_config", "step"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {p} is incomplete (no '{key}')")
    return ckpt


def _check_stage1(ckpt: dict[str, Any], cfg: DownstreamConfig, where: Path) -> None:
    stored = ckpt.get("stage1")
    if stored is None:
        return
    now = _stage1_info(cfg)
    if now is None or now["sha256"] != stored.get("sha256"):
        raise CheckpointError(f"{where}: the stage-1 checkpoint {cfg.front_end.checkpoint} changed since this "
                              "run started (sha256 differs)")


def load_downstream(path: str | os.PathLike, device: str | torch.device = "cpu") -> DownstreamModel:
    """A stage-2 model from ``best.pt`` / ``last.pt`` (the stage-1 model is read from the checkpoint
    its config names, which must be unchanged), in eval mode."""
    p = Path(path)
    ckpt = read_downstream_checkpoint(p)
    try:
        cfg = from_dict(DownstreamConfig, ckpt["train_config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {p} has an invalid config: {e}") from None
    _check_stage1(ckpt, cfg, p)
    model = build_downstream_model(cfg.front_end, cfg.classifier, device)
    model.load_trainable_state_dict(ckpt["model"], f"checkpoint {p}")
    return model.eval()


# --------------------------------------------------------------------------------------------
# The trainer


class DownstreamTrainer:
    """Train one stage-2 run into ``out_dir`` (module docstring); :meth:`fit` returns the summary.

    ``prepared`` may give the front end's tensors of each split (``"train"``, ``"val"``,
    ``"test"``) when they were already computed (e.g. by the fixed and unfixed runs of the same
    stage-1 model); otherwise they are computed here.
    """

    def __init__(self, cfg: DownstreamConfig, out_dir: str | os.PathLike, *, train: TaskData, val: TaskData,
                 test: TaskData | None = None, prepared: Mapping[str, Prepared] | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.data = {"train": train, "val": val, "test": test}
        n_classes = cfg.classifier.n_classes
        for split, d in self.data.items():
            if d is not None and len(d) and (d.targets.min() < 0 or d.targets.max() >= n_classes):
                raise DataError(f"{split} targets lie outside 0..{n_classes - 1} (classifier.n_classes)")
        if len(train) == 0 or len(val) == 0:
            raise DataError("stage 2 needs training and validation examples")
        self.prepared: dict[str, Prepared] = dict(prepared or {})
        self.progress = progress
        self._log = log or (lambda s: print(s, flush=True))
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.step = 0
        self.best: dict[str, float] = {"accuracy": -1.0, "step": -1}
        self.stopped = False

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
        return read_downstream_checkpoint(last) if last.exists() else None

    def _build(self) -> None:
        cfg = self.cfg
        self.stage1 = _stage1_info(cfg)
        with torch.random.fork_rng(devices=[]):  # seeded initialization, global generator untouched
            torch.manual_seed(cfg.seed)
            self.model = build_downstream_model(cfg.front_end, cfg.classifier, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.optim.lr)
        self.data_gen = torch.Generator()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        where = self.out / "last.pt"
        diff = config_differences(ckpt["train_config"], to_dict(self.cfg))
        if diff:
            raise ConfigError(f"refusing to resume from {where}: its config differs in {', '.join(diff[:5])}")
        _check_stage1(ckpt, self.cfg, where)
        self.model.load_trainable_state_dict(ckpt["model"], f"checkpoint {where}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.best = dict(ckpt.get("best", self.best))
        self.stopped = bool(ckpt.get("stopped", False))

    def _checkpoint(self) -> dict[str, Any]:
        return {"format": FORMAT, "train_config": to_dict(self.cfg), "model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "best": dict(self.best),
                "stopped": self.stopped, "stage1": self.stage1,
                "rng": {"scheme": "per-step", "seed": self.cfg.seed}}

    def _prepare_data(self) -> None:
        for split, d in self.data.items():
            if d is None:
                continue
            if split not in self.prepared:
                t0 = time.perf_counter()
                self.prepared[split] = prepare(self.model, d)
                self._log(f"prepared {len(d)} {split} images for the {self.cfg.front_end.kind} front end "
                          f"({time.perf_counter() - t0:.1f} s)")
            for k, v in self.prepared[split].items():
                if v.shape[0] != len(d):
                    raise ValueError(f"prepared '{split}' tensor '{k}' has {v.shape[0]} rows for {len(d)} images")

    # -- one step -----------------------------------------------------------------------------

    def train_step(self) -> dict[str, float] | None:
        cfg = self.cfg
        self.data_gen.manual_seed((cfg.seed * 1_000_003 + self.step) * 2 + 1)
        train = self.data["train"]
        idx = torch.randint(len(train), (cfg.optim.batch_size,), generator=self.data_gen).numpy()
        x, prep = _batch(self.model, train, self.prepared["train"], idx, self.device)
        y = torch.from_numpy(train.targets[idx]).to(self.device)
        logits = self.model(x, prep)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if not torch.isfinite(loss):
            warnings.warn(f"step {self.step - 1}: non-finite loss; step skipped", RuntimeWarning, stacklevel=2)
            return None
        loss.backward()
        params = [p for p in self.params if p.grad is not None]
        if cfg.optim.max_grad_norm > 0 and params:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
        else:
            gnorm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params))) if params else 0.0
        if not np.isfinite(gnorm):
            warnings.warn(f"step {self.step - 1}: non-finite gradient; step skipped", RuntimeWarning, stacklevel=2)
            return None
        self.optimizer.step()
        accuracy = float((logits.argmax(1) == y).float().mean())
        return {"loss": float(loss.detach()), "accuracy": accuracy, "grad_norm": gnorm}

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = self._prepare_run_dir()
        self._build()
        if ckpt is not None:
            self._restore(ckpt)
            note = " (it had stopped early)" if self.stopped else ""
            self._log(f"resuming {self.out} from step {self.step}{note}")
        self._prepare_data()
        self._trim_metrics_log()
        bar = self._progress_bar()
        window: list[dict[str, float]] = []
        start = time.perf_counter()
        self.model.train()
        try:
            while self.step < cfg.optim.max_steps and not self.stopped:
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
                        bar.set_postfix(loss=f"{mean['loss']:.3f}", best=f"{self.best['accuracy']:.3f}", refresh=False)
                    window = []
                if self.step % cfg.eval.every == 0 or self.step >= cfg.optim.max_steps:
                    self._evaluate_and_checkpoint(bar)
        finally:
            if bar is not None:
                bar.close()
        return self._finish(time.perf_counter() - start)

    def _evaluate_and_checkpoint(self, bar: Any) -> None:
        cfg = self.cfg
        metrics = evaluate_accuracy(self.model, self.data["val"], self.prepared["val"],
                                    batch_size=cfg.eval.batch_size, device=self.device)
        improved = metrics["accuracy"] > self.best["accuracy"]
        if improved:
            self.best = {"accuracy": metrics["accuracy"], "step": self.step}
        if cfg.eval.patience and self.step - self.best["step"] >= cfg.eval.patience:
            self.stopped = True
        self._append_metrics({"step": self.step, "kind": "eval", **{f"val_{k}": v for k, v in metrics.items()}})
        msg = (f"step {self.step}: val accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f}"
               f"{'  (best)' if improved else ''}")
        (bar.write if bar is not None else self._log)(msg)
        ckpt = self._checkpoint()
        if improved:
            save_checkpoint(self.out / "best.pt", ckpt)
        save_checkpoint(self.out / "last.pt", ckpt)
        if self.stopped:
            self._log(f"early stopping at step {self.step}: no improvement for {cfg.eval.patience} steps")

    def _finish(self, wall: float) -> dict[str, Any]:
        summary: dict[str, Any] = {"run": str(self.out), "steps": self.step, "stopped_early": self.stopped,
                                   "train_seconds": round(wall, 2), "best_val_accuracy": self.best["accuracy"],
                                   "best_step": self.best["step"], "stage1": self.stage1}
        best = read_downstream_checkpoint(self.out / "best.pt")
        self.model.load_trainable_state_dict(best["model"], f"checkpoint {self.out / 'best.pt'}")
        t0 = time.perf_counter()
        for split in ("train", "val", "test"):
            d = self.data[split]
            if d is None:
                continue
            if split == "train" and len(d) > 2000:  # a fixed subset is enough to see over-fitting
                sub = np.arange(2000)
                m = evaluate_accuracy(self.model, d.subset(sub), {k: v[:2000] for k, v in self.prepared[split].items()},
                                      batch_size=self.cfg.eval.batch_size, device=self.device)
            else:
                m = evaluate_accuracy(self.model, d, self.prepared[split], batch_size=self.cfg.eval.batch_size,
                                      device=self.device)
            summary[split] = m
        summary["eval_seconds"] = round(time.perf_counter() - t0, 2)
        if "test" in summary:
            self._log(f"test ({summary['test']['n']} examples): accuracy {summary['test']['accuracy']:.4f}")
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    # -- logging ------------------------------------------------------------------------------

    def _progress_bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.optim.max_steps, initial=self.step, desc=f"stage 2 {self.cfg.front_end.kind}",
                    unit="step", dynamic_ncols=True, mininterval=1.0)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        append_record(self.out / "metrics.jsonl", record)

    def _trim_metrics_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be written again)."""
        trim_after(self.out / "metrics.jsonl", self.step)


__all__ = ["DownstreamConfig", "DownstreamEvalConfig", "DownstreamOptimConfig", "DownstreamTrainer", "FORMAT",
           "TaskData", "evaluate_accuracy", "load_downstream", "prepare", "read_downstream_checkpoint"]
