"""The SPAIR trainer: data, Adam, schedules, evaluation, checkpoints, logging, exact resume.

A run lives in one folder:

    config.json          the resolved TrainConfig (a resume with a different config is refused)
    last.pt, best.pt     checkpoints (atomic writes; weights-only loadable); best = best val SPAIR-AP
    metrics.jsonl        one JSON object per log / evaluation step
    summary.json         best validation metrics and the test metrics of the best checkpoint
    tb/                  TensorBoard: every loss term, fraction of cells on, count bias, AP, images

Running the same command again on a folder that holds ``last.pt`` resumes from it and, on the CPU,
ends with the same weights as an uninterrupted run: the checkpoint holds the model, the optimizer,
the step (which drives every schedule) and the states of the two random generators (batches, noise).

Under ``torchrun --nproc_per_node=N`` the trainer runs data-parallel (DDP; see
:mod:`spair.training.distributed`): the same global batch and the same per-image noise as one
process, gradients averaged over ranks, rank 0 alone logging, evaluating and checkpointing.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..data.scenes import Scenes
from ..errors import CheckpointError, ConfigError, SpairError
from ..io import read_json, write_json_atomic
from ..models.spair import Spair, SpairNoise
from . import distributed
from .checkpoint import FORMAT, config_differences, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import evaluate
from .metrics_log import append_record, trim_after
from .schedules import Exponential, Step


class TrainingAborted(SpairError):
    """Training could not continue (e.g. repeated non-finite losses)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a valid device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: CUDA was requested but is not available")
    return dev


def load_split(cfg: TrainConfig, which: str) -> Scenes:
    """Training ("train") or validation ("val") scenes of a config, through the dataset cache."""
    from ..data.datasets import DatasetSpec, get_dataset

    d = cfg.data
    scene = d.scene if which == "train" else _with_split(d.scene, "val", d.val_n_objects)
    spec = DatasetSpec(scene=scene, n_images=d.n_train if which == "train" else d.n_val,
                       seed=d.train_seed if which == "train" else d.val_seed, crop=d.crop)
    return get_dataset(spec)


def load_test(cfg: TrainConfig) -> Scenes | None:
    from ..data.datasets import DatasetSpec, get_dataset

    if cfg.test.n == 0:
        return None
    return get_dataset(DatasetSpec(scene=cfg.test.scene, n_images=cfg.test.n, seed=cfg.test.seed, crop=None))


def _with_split(scene: Any, split: str, n_objects: tuple[int, int] | None = None) -> Any:
    data = to_dict(scene)
    data["split"] = split
    if n_objects is not None:
        data["n_objects"] = list(n_objects)
    return from_dict(type(scene), data)


def truncated_normal(n: int, std: float, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` draws of N(0, std²) truncated to [−2·std, 2·std]: one normal draw for all ``n`` values,
    then redraws of only the values outside the bounds until none is left."""
    z = torch.empty(n, dtype=dtype, device=device).normal_(0.0, std, generator=generator)
    lo, hi = z.new_tensor(-2 * std).item(), z.new_tensor(2 * std).item()
    idx = ((z < lo) | (z > hi)).nonzero().squeeze(1)
    while idx.numel():
        redraw = torch.empty(idx.numel(), dtype=dtype, device=device).normal_(0.0, std, generator=generator)
        z[idx] = redraw
        idx = idx[(redraw < lo) | (redraw > hi)]
    return z


def add_gradient_noise(grads: list[torch.Tensor], std: float, generator: torch.Generator,
                       sampler: str = "per-tensor") -> None:
    """Add truncated-normal noise (±2σ, spec 6.1) to every gradient, in place. ``per-tensor`` is
    ``torch.nn.init.trunc_normal_`` on each gradient, whose rejection loop redraws the whole tensor
    until no value is out of bounds (~4–5 full draws each: about 40% of a 48×48 training step on
    2 cores); ``flat`` draws the same distribution with :func:`truncated_normal` in one go."""
    if sampler == "flat":
        if not grads:
            return
        noise = truncated_normal(sum(g.numel() for g in grads), std, generator, grads[0].dtype, grads[0].device)
        for g, part in zip(grads, noise.split([g.numel() for g in grads])):
            g.add_(part.view_as(g))
        return
    for g in grads:
        noise = torch.empty_like(g)
        torch.nn.init.trunc_normal_(noise, 0.0, std, -2 * std, 2 * std, generator=generator)
        g.add_(noise)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, progress: bool = True,
                 tensorboard: bool = True, log: Callable[[str], None] | None = None,
                 rank: int | None = None, world_size: int | None = None, train_data: Scenes | None = None,
                 val_data: Scenes | None = None, test_data: Scenes | None = None):
        """``rank``/``world_size`` default to the running process group, else to torchrun's
        environment (``fit`` then joins the group and leaves it at the end), else to 0 and 1."""
        self.cfg = cfg
        self.out = Path(out_dir)
        env = distributed.current() or distributed.launched_env()
        rank = (env.rank if env else 0) if rank is None else rank
        world_size = (env.world_size if env else 1) if world_size is None else world_size
        self.progress = progress and rank == 0
        self.use_tb = tensorboard and rank == 0
        self.rank, self.world_size = rank, world_size
        self._given = {"train": train_data, "val": val_data, "test": test_data}  # instead of the config's data
        say = log or (lambda s: print(s, flush=True))
        self._log = say if rank == 0 else (lambda s: None)
        self.device = resolve_device(cfg.device)
        if world_size > 1:
            self.device = distributed.device_for(self.device, env)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.optim.batch_size % world_size:
            raise ConfigError(f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by the number "
                              f"of processes ({world_size})")
        # schedules (spec 4.2, 6.1, 6.2): functions of the step, so the step in the checkpoint restores them
        s, o = cfg.schedule, cfg.optim
        self.count_prior = Exponential(s.count_prior_start_odds, s.count_prior_final_odds, 0.1,
                                       s.count_prior_decay_steps, log=True)
        self.training_wheels = Step(1.0, 0.0, s.training_wheels_steps)
        self.grad_noise = Exponential(o.grad_noise_std, 0.0, 0.1, o.grad_noise_decay_steps)
        self.step = 0
        self.best = {"ap": -1.0, "step": -1}
        self.bad_steps = 0
        self.collapse_warned = ""

    # -- set-up -------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        return o.lr * (o.lr_drop_factor if step >= o.lr_drop_at * o.max_steps else 1.0)

    def schedules_state(self, step: int) -> dict[str, Any]:
        return {"count_prior_log_odds": {**asdict(self.count_prior), "value": self.count_prior.value(step)},
                "training_wheels": {**asdict(self.training_wheels), "value": self.training_wheels.value(step)},
                "grad_noise_std": {**asdict(self.grad_noise), "value": self.grad_noise.value(step)},
                "lr": self.lr_at(step)}

    def _prepare_run_dir(self) -> dict[str, Any] | None:
        """Create the run folder or check that it belongs to this config; return a checkpoint to resume."""
        cfg_data = to_dict(self.cfg)
        cfg_path = self.out / "config.json"
        last = self.out / "last.pt"
        if cfg_path.exists():
            old = read_json(cfg_path, "run config")
            diff = config_differences(old, cfg_data)
            if diff and last.exists():
                raise ConfigError(f"refusing to resume {self.out}: its config differs in {', '.join(diff[:5])}; "
                                  "use another --out folder")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):  # temporary files of writes cut short by a kill
                stale.unlink(missing_ok=True)
            write_json_atomic(cfg_path, cfg_data)
        if last.exists():
            return load_checkpoint(last)
        return None

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # parameter initialization
        self.model = Spair(cfg.model).to(self.device)
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        if cfg.init_from:
            from ..models.io import load_model

            source = load_model(cfg.init_from)
            if to_dict(source.cfg) != to_dict(cfg.model):
                diff = config_differences(to_dict(source.cfg), to_dict(cfg.model))
                raise ConfigError(f"init_from: {cfg.init_from} has another model config ({', '.join(diff[:5])})")
            self.model.load_state_dict(source.state_dict())
        self.params = self._trainable_parameters()
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.optim.lr)
        self.data_gen = torch.Generator()
        self.noise_gen = torch.Generator(device=self.device)

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        prefixes = tuple(self.cfg.optim.train_only)
        if not prefixes:
            return list(self.model.parameters())
        named = [(n, p) for n, p in self.model.named_parameters() if n.startswith(prefixes)]
        if not named:
            known = sorted({n.split(".")[0] for n, _ in self.model.named_parameters()})
            raise ConfigError(f"optim.train_only {list(prefixes)} matches no parameter (top-level names: "
                              f"{', '.join(known)})")
        for n, p in self.model.named_parameters():
            p.requires_grad_(n.startswith(prefixes))
        return [p for _, p in named]

    def _restore(self, ckpt: dict[str, Any]) -> None:
        diff = config_differences(ckpt["train_config"], to_dict(self.cfg))
        if diff:
            raise ConfigError(f"refusing to resume from {self.out / 'last.pt'}: its config differs in "
                              f"{', '.join(diff[:5])}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.best = dict(ckpt.get("best", self.best))
        self.bad_steps = int(ckpt.get("bad_steps", 0))

    def _checkpoint(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_config": to_dict(self.cfg.model), "model": self.model.state_dict(),
                "train_config": to_dict(self.cfg), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "rng": {"scheme": "per-step", "seed": self.cfg.seed},
                "schedules": self.schedules_state(self.step), "best": dict(self.best), "bad_steps": self.bad_steps}

    def _seed_step(self) -> None:
        """Counter-based randomness: the generators are re-seeded from (seed, step) at every step, so
        a resumed run draws exactly the batches and noise of an uninterrupted one and a checkpoint
        needs no generator state. Every rank of a data-parallel job draws the same numbers (the
        global batch's noise, then the gradient noise), so the replicas stay identical."""
        base = self.cfg.seed * 1_000_003 + self.step
        self.data_gen.manual_seed(base * 2 + 1)
        self.noise_gen.manual_seed((base * 2 + 2) * 1009)

    # -- one step -----------------------------------------------------------------------------

    def _batch(self) -> tuple[torch.Tensor, np.ndarray]:
        """The global batch is drawn from one generator on every rank; each rank takes its slice."""
        n = len(self.train)
        idx = torch.randint(n, (self.cfg.optim.batch_size,), generator=self.data_gen)
        per = self.cfg.optim.batch_size // self.world_size
        idx = idx[self.rank * per:(self.rank + 1) * per].numpy()
        x = torch.from_numpy(self.train.images[idx]).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return x, idx

    def _noise(self, x: torch.Tensor) -> SpairNoise:
        """The sampling noise of this rank's images: drawn for the whole global batch and sliced, so an
        image gets the same noise whatever the number of processes."""
        B = self.cfg.optim.batch_size
        gh, gw = self.model.grid_shape(x.shape[-2], x.shape[-1])
        noise = SpairNoise.sample(B, gh * gw, self.cfg.model.A, self.device, self.noise_gen, x.dtype)
        if self.world_size == 1:
            return noise
        per = B // self.world_size
        lo = self.rank * per
        return SpairNoise(**{f.name: getattr(noise, f.name)[lo:lo + per] for f in fields(noise)})

    def _autocast(self) -> Any:
        """bf16 autocast for ``amp`` on CUDA and on the CPU; the model keeps its distribution maths,
        rendering, KLs and likelihood in fp32 (see ``Spair.encode`` / ``Spair.decode``)."""
        if self.cfg.amp and self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return _nullcontext()

    def train_step(self) -> dict[str, float] | None:
        cfg, step = self.cfg, self.step
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        self._seed_step()
        x, idx = self._batch()
        log_odds = self.count_prior.value(step)
        tw = self.training_wheels.value(step)
        noise = self._noise(x)
        with self._autocast():
            out = self.ddp_model(x, log_odds, sample="relaxed", training_wheels=tw, noise=noise)
        losses = out.losses
        loss = losses.total.float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        # every rank takes the same decision: a non-finite loss on any rank skips the step everywhere
        finite = bool(torch.isfinite(distributed.all_reduce_sum(loss.detach()) if self.world_size > 1 else loss))
        if finite:
            loss.backward()
            params = [p for p in self.params if p.grad is not None]
            if cfg.optim.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            else:
                gnorm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))
            finite = bool(torch.isfinite(gnorm))
        if not finite:
            self.bad_steps += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; step skipped "
                          f"({self.bad_steps} in a row)", RuntimeWarning, stacklevel=2)
            if self.bad_steps >= cfg.optim.max_bad_steps:
                raise TrainingAborted(f"training aborted at step {step}: {self.bad_steps} consecutive non-finite "
                                      "losses or gradients (try a lower optim.lr)")
            self.step += 1
            return None
        self.bad_steps = 0
        std = self.grad_noise.value(step)
        if std > 0:  # gradient noise after clipping (spec 6.1), truncated at ±2σ
            add_gradient_noise([p.grad for p in params], std, self.noise_gen, cfg.optim.grad_noise_sampler)
        self.optimizer.step()
        self.step += 1
        with torch.no_grad():
            on = (out.z_pres > 0.5).float()
            true_counts = self.train_counts[idx]
            pred_counts = on.sum((1, 2)).cpu().numpy()
            wh = out.z_where[..., 2:] * torch.tensor(cfg.model.anchor, device=x.device)
            size = (wh * on).sum((0, 1)) / on.sum().clamp(min=1)
            stats = {"loss": float(loss), **{k: v for k, v in losses.means().items() if k != "total"},
                     "frac_on": float(on.mean()), "count_bias": float((pred_counts - true_counts).mean()),
                     "box_h": float(size[0]), "box_w": float(size[1]), "grad_norm": float(gnorm),
                     "count_prior_log_odds": log_odds, "training_wheels": tw, "lr": self.lr_at(step)}
            if self.world_size > 1:
                self._reduce_stats(stats, on, wh)
        return stats

    def _reduce_stats(self, stats: dict[str, float], on: torch.Tensor, wh: torch.Tensor) -> None:
        """Replace the rank's batch statistics by those of the global batch (equal slices: means of
        means; the box size from summed numerators and denominators)."""
        keys = [k for k in ("loss", "recon", "kl_where", "kl_what", "kl_depth", "kl_pres", "kl", "frac_on",
                            "count_bias") if k in stats]
        local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        for k, v in zip(keys, distributed.all_reduce_mean(local).tolist()):
            stats[k] = v
        box = torch.cat([(wh * on).sum((0, 1)), on.sum().reshape(1)]).double()
        bh, bw, n_on = distributed.all_reduce_sum(box).tolist()
        stats["box_h"], stats["box_w"] = bh / max(n_on, 1.0), bw / max(n_on, 1.0)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end (or an early stop) and return the summary. Under torchrun, joins the
        process group for the run and leaves it at the end."""
        if self.world_size == 1:
            return self._fit()
        with distributed.process_group(self.device) as env:
            if env is None or (env.rank, env.world_size) != (self.rank, self.world_size):
                got = "no process group" if env is None else f"rank {env.rank} of {env.world_size}"
                raise ConfigError(f"trainer: rank {self.rank} of {self.world_size} processes was requested but "
                                  f"this process has {got} (start data-parallel runs with torchrun)")
            return self._fit()

    def _rank0_first(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0, then on the other ranks (run-folder creation, dataset caching)."""
        if self.world_size > 1 and self.rank != 0:
            distributed.barrier()
        result = fn()
        if self.world_size > 1 and self.rank == 0:
            distributed.barrier()
        return result

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = self._rank0_first(self._prepare_run_dir)
        self._build()
        if ckpt is not None:
            self._restore(ckpt)
            self._log(f"resuming {self.out} from step {self.step}")
        t0 = time.perf_counter()
        self.train, self.val = self._rank0_first(lambda: (self._given["train"] or load_split(cfg, "train"),
                                                          self._given["val"] or load_split(cfg, "val")))
        self.train_counts = self.train.counts.astype(np.float64)
        if self.rank == 0:
            self._log(f"data: {len(self.train)} training and {len(self.val)} validation images of "
                      f"{self.train.images.shape[1]}×{self.train.images.shape[2]} ({time.perf_counter() - t0:.1f} s)")
        self._trim_metrics_log()
        writer = self._tensorboard()
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
                    self._log_window(window, writer, bar)
                    window = []
                done = self.step >= cfg.optim.max_steps
                out_of_time = cfg.max_minutes > 0 and (time.perf_counter() - start_wall) > 60 * cfg.max_minutes
                if self.step % cfg.eval.every == 0 or done or out_of_time:
                    stop = self._evaluate_and_checkpoint(writer, bar)
                    if stop or out_of_time:
                        if out_of_time:
                            self._log(f"stopping at step {self.step}: max_minutes={cfg.max_minutes} reached")
                        break
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return self._finish(time.perf_counter() - start_wall)

    def _evaluate_and_checkpoint(self, writer: Any, bar: Any) -> bool:
        cfg = self.cfg
        stop = False
        if self.rank == 0:
            metrics = evaluate(self.model, self.val, batch_size=cfg.eval.batch_size, sample=cfg.eval.sample,
                               box_mode=cfg.eval.box_mode, refine_steps=0)
            ap = metrics["spair_AP"]
            improved = ap > self.best["ap"]
            if improved:
                self.best = {"ap": ap, "step": self.step}
            record = {"step": self.step, "kind": "eval", **{f"val_{k}": v for k, v in metrics.items()
                                                           if isinstance(v, (int, float))}}
            self._append_metrics(record)
            msg = (f"step {self.step}: val SPAIR-AP {ap:.3f} COCO AP[.1:.9] {metrics['coco_AP[.1:.9]']:.3f} "
                   f"count |err| {metrics['count_abs_error']:.2f}"
                   f"{'  (best)' if improved else ''}")
            (bar.write if bar is not None else self._log)(msg)
            if writer is not None:
                for k, v in record.items():
                    if k.startswith("val_") and isinstance(v, (int, float)):
                        writer.add_scalar(f"val/{k[4:]}", v, self.step)
                self._tb_images(writer)
            ckpt = self._checkpoint()
            if improved:
                save_checkpoint(self.out / "best.pt", ckpt)
            save_checkpoint(self.out / "last.pt", ckpt)
            if cfg.eval.patience and self.step - self.best["step"] >= cfg.eval.patience:
                self._log(f"early stopping at step {self.step}: no improvement for {cfg.eval.patience} steps")
                stop = True
            if ap >= cfg.eval.stop_at_ap:
                self._log(f"stopping at step {self.step}: validation AP {ap:.3f} ≥ {cfg.eval.stop_at_ap}")
                stop = True
        if self.world_size > 1:
            stop = distributed.broadcast_flag(stop, self.device)
        return stop

    def _finish(self, wall: float) -> dict[str, Any]:
        summary: dict[str, Any] = {"run": str(self.out), "steps": self.step, "train_seconds": round(wall, 1),
                                   "best_val_ap": self.best["ap"], "best_step": self.best["step"]}
        if self.rank != 0:
            return summary
        best_path = self.out / "best.pt"
        if best_path.exists():
            from ..models.io import load_model

            best = load_model(best_path, self.device)
            test = self._given["test"] or load_test(self.cfg)
            if test is not None:
                t = evaluate(best, test, batch_size=self.cfg.eval.batch_size, sample=self.cfg.eval.sample,
                             box_mode=self.cfg.eval.box_mode, refine_steps=self.cfg.eval.refine_steps)
                summary["test"] = t
                self._log(f"test ({len(test)} scenes): SPAIR-AP {t['spair_AP']:.3f}  COCO AP[.1:.9] {t['coco_AP[.1:.9]']:.3f}  "
                          f"AP@.5 {t['coco_AP@.5']:.3f}  count |err| {t['count_abs_error']:.3f}  "
                          f"count 0-1 {t['count_01_error']:.3f}")
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    # -- logging ------------------------------------------------------------------------------

    def _progress_bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.optim.max_steps, initial=self.step, desc="train", unit="step",
                    dynamic_ncols=True, mininterval=1.0)

    def _tensorboard(self) -> Any:
        if not self.use_tb:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional at run time
            warnings.warn("tensorboard is not installed; no TensorBoard logs", RuntimeWarning, stacklevel=2)
            return None
        return SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)

    def _log_window(self, window: list[dict[str, float]], writer: Any, bar: Any) -> None:
        mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        record = {"step": self.step, "kind": "train", **mean}
        if self.rank == 0:
            self._append_metrics(record)
            if writer is not None:
                for k, v in mean.items():
                    writer.add_scalar(f"train/{k}", v, self.step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean['loss']:.1f}", on=f"{mean['frac_on']:.2f}",
                                bias=f"{mean['count_bias']:+.2f}", best=f"{self.best['ap']:.3f}", refresh=False)
        self._check_collapse(mean, bar)

    def _check_collapse(self, mean: dict[str, float], bar: Any) -> None:
        """Presence collapse (no cells on, or all on) once the training wheels are off."""
        if self.step <= self.cfg.schedule.training_wheels_steps + 2 * self.cfg.log_every:
            return
        kind = ""
        if mean["frac_on"] < 1e-3:
            kind = "no cells are on: the background explains the images"
        elif mean["frac_on"] > 0.95:
            kind = "almost every cell is on"
        if kind and kind != self.collapse_warned and self.rank == 0:
            msg = (f"warning: presence collapse at step {self.step}: {kind} (fraction on {mean['frac_on']:.3f}, "
                   f"count bias {mean['count_bias']:+.2f}); see README 'When things go wrong'")
            (bar.write if bar is not None else self._log)(msg)
            self._append_metrics({"step": self.step, "kind": "warning", "message": msg})
        self.collapse_warned = kind

    def _append_metrics(self, record: dict[str, Any]) -> None:
        append_record(self.out / "metrics.jsonl", record)

    def _trim_metrics_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be written again)."""
        if self.rank == 0:
            trim_after(self.out / "metrics.jsonl", self.step)

    def _tb_images(self, writer: Any) -> None:
        from ..viz.model_figures import model_panel

        try:
            img = model_panel(self.model, self.val.subset(np.arange(min(8, len(self.val)))),
                              box_mode=self.cfg.eval.box_mode)
            writer.add_image("val/input_recon_boxes", img, self.step, dataformats="HWC")
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            warnings.warn(f"could not draw TensorBoard images: {e}", RuntimeWarning, stacklevel=2)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None
