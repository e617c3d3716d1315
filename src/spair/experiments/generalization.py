"""Generalization to larger, denser scenes (paper section 5.2, Figure 3), and the protocol that
the lateral-connection ablation (:mod:`spair.experiments.ablation`) shares with it.

**Training conditions.** A condition is a range of digits per *base image*: ``"1-5"``, ``"6-10"``,
``"11-15"`` in the paper. Base images are 84×84 (a 7×7 grid of 12-px cells) with 14-px white digits
on black, summed overlap ≤ 98 px² (spec 8.3). SPAIR never sees a base image: it trains on
``crops_per_image`` (4) random 48×48 crops of each training base image (train digits, seed 0) and
its checkpoints are selected by validation SPAIR-AP on crops of validation base images (val
digits, seed 1); crops keep the visible part of cut digits as ground truth. SPAIR's settings come
from :func:`spair_config` (the ``cpu`` preset with the data replaced): the one place to tune them.

**Test protocol** (:func:`evaluate_full_images`). The best checkpoint of every run is applied,
without further training, to **full** 84×84 test images (test digits, seed 2) holding exactly
``n`` digits, for ``n = 1 .. max_digits`` (20), ``n_test`` images per ``n``. Every metric of
:func:`spair.metrics.evaluate_detections` is recorded per ``n``: SPAIR-AP (the paper's AP), COCO
AP[.1:.9], count absolute error and count 0-1 error among them. Boxes: ``settings.box_mode``
(``segment`` by default, as ``spair detect``: the extent of the image pixels each object explains),
plus the paper's sprite ``window`` for the record. Checkpoints are selected on validation crops
with ``settings.val_box_mode`` (``ink``, the extent of each object's own drawn ink).

**ConnComp** (:func:`conncomp_for_n`). As in the authors' code (spec 7.3), τ is tuned **per n and
per metric** on full validation images with exactly ``n`` digits (val digits, seed 1): the τ of
best SPAIR-AP gives ConnComp's AP, the τ of least count absolute error its count absolute error
(and count bias), the τ of least count 0-1 error its count 0-1 error. Tuning per ``n`` tells
ConnComp the number of digits of the test images (through the validation images), which SPAIR is
never told; ``conncomp_global`` is therefore recorded too: one τ per metric tuned on the
validation images of every ``n`` pooled, drawn as a dashed line.

**Layout and resuming.** ``OUT/<condition>/seed<s>/`` is one SPAIR run (the trainer's files and,
once it is trained and tested, ``result.json``, the done-marker); ``OUT/conncomp/n<n>/`` and
``OUT/conncomp/global/`` hold ConnComp's. Running again skips runs whose ``result.json`` has the
same configuration, resumes interrupted trainings from ``last.pt``, only tests a run that finished
training, and refuses (ConfigError) a folder whose finished runs used other settings.
``OUT/results.json`` and the three-panel figure ``OUT/generalization.png`` are rewritten after
every finished run; ``OUT/examples.png`` shows test images with each method's boxes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from .. import __version__
from ..config import apply_overrides, from_dict, param, to_dict
from ..errors import ConfigError
from ..io import write_json_atomic
from .runs import TWO_CORE_SPEEDUP, finished_result, mean_sd, no_log, trained_summary
from .conncomp_baseline import REPORTED_METRICS, TAU_GRID, TUNE_METRIC_DEFINITIONS

CONDITIONS: tuple[str, ...] = ("1-5", "6-10", "11-15")
"""The paper's training conditions: digits per 84×84 base image."""
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2
"""Seeds of the training, validation and test data (the authors' convention)."""
OBJECT_SIZE = 14
MAX_OVERLAP = 98.0
CELL_SIZE = 12

CURVE_KEYS: tuple[str, ...] = ("spair_AP", "coco_AP[.1:.9]", "coco_AP[.5:.95]", "coco_AP@.5", "count_abs_error",
                               "count_01_error", "count_bias")
"""Test metrics whose mean and sd over seeds are reported per number of digits."""
TAU_METRIC_OF_KEY = {"spair_AP": "ap", "coco_AP[.1:.9]": "ap", "coco_AP[.5:.95]": "ap", "coco_AP@.5": "ap",
                     "count_abs_error": "count_abs", "count_01_error": "count_01", "count_bias": "count_abs"}
"""Which of ConnComp's tuned τ (by validation metric) each reported metric is read with."""
TAU_METRICS: tuple[str, ...] = ("ap", "count_abs", "count_01")

METRIC_DEFINITIONS = {
    "spair_AP": "SPAIR-AP: IoU > 0.1..0.9, 11-point AP per batch of 32 images, confidence 1 (the paper's AP)",
    "coco_AP[.1:.9]": "COCO AP (101-point, ranked by score) averaged over IoU 0.1:0.1:0.9",
    "coco_AP[.5:.95]": "COCO AP averaged over IoU 0.5:0.05:0.95",
    "coco_AP@.5": "COCO AP at IoU 0.5",
    "count_abs_error": "mean |predicted - true| number of objects (the paper's count absolute error)",
    "count_01_error": "fraction of images with a wrong number of objects (the paper's count 0-1 error)",
    "count_bias": "mean (predicted - true) number of objects",
}

#: CPU seconds per SPAIR training step on one core (``torch.set_num_threads(1)``, forward +
#: backward + Adam, ``time.thread_time``), the ``cpu`` preset, batch 32 of 48×48 crops of 84×84 scenes with
#: 11–15 digits, by lookback L (kernel size 1; kernel size 2 measured the same within noise). Measured
#: on the 2-core development machine while two other trainings shared it (docs/generalization.md).
STEP_CPU_SECONDS: dict[int, float] = {0: 0.34, 1: 0.38, 2: 0.39}
#: CPU seconds to test one full 84×84 image (forward pass + ink and window boxes + metrics).
TEST_CPU_SECONDS_PER_IMAGE = 0.014
#: CPU seconds to evaluate one 48×48 validation crop during training.
VAL_CPU_SECONDS_PER_CROP = 0.006
#: ConnComp's seconds per full 84×84 image (validation or test, per n): generation, the per-n and the
#: pooled τ searches, 4 test evaluations; 378 s for 20 × (200 + 200) images on the loaded machine.
CONNCOMP_CPU_SECONDS_PER_IMAGE = 0.047

Log = Callable[[str], None]


def _fmt(value: float | None) -> str:
    """A metric for a log line (``n/a`` for an undefined one)."""
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class GeneralizationSettings:
    """Budgets and evaluation settings of the experiment (``quick`` and ``paper`` are instances)."""

    image_size: int = param(84, lo=CELL_SIZE, hi=1024, help="side of the base (and test) images in pixels")
    crop_size: int = param(48, lo=CELL_SIZE, hi=1024, help="side of the random training and validation crops")
    crops_per_image: int = param(4, lo=1, hi=64, help="random crops taken from each training / validation base image")
    n_train: int = param(10000, lo=1, help="training base images per condition (train digits, seed 0)")
    n_val: int = param(125, lo=1, help="validation base images per condition (val digits, seed 1), cropped "
                                        "like the training images: model selection")
    n_test: int = param(200, lo=1, help="full test images per number of digits (test digits, seed 2)")
    n_cc_val: int = param(200, lo=1, help="full validation images per number of digits (val digits, seed 1): "
                                          "ConnComp's tau")
    max_digits: int = param(20, lo=1, hi=200, help="test images hold exactly n = 1..max_digits digits")
    spair_preset: str = param("cpu", help="training preset SPAIR's config starts from")
    spair_steps: int = param(4000, lo=1, help="SPAIR: most training steps")
    spair_eval_every: int = param(250, lo=1, help="SPAIR: validation every this many steps")
    spair_patience: int = param(0, lo=0, help="SPAIR: early stopping patience in steps (0 = off)")
    spair_overrides: tuple[str, ...] = param((), help="SPAIR: extra KEY=VALUE settings of its TrainConfig")
    stop_at_ap: float = param(0.99, lo=0.0, help="stop a training once its validation SPAIR-AP reaches this")
    box_mode: Literal["ink", "window", "segment"] = param(
        "segment", help="SPAIR's boxes in the test results (the detector's default: the pixels each object explains)")
    val_box_mode: Literal["ink", "window", "segment"] = param(
        "ink", help="SPAIR's boxes in the validation AP that selects each run's checkpoint")
    sample: Literal["mean", "hard"] = param("mean", help="SPAIR's inference: means or samples")
    refine_steps: int = param(20, lo=0, help="SPAIR's test: refine the reported objects' latents for this many "
                                             "steps before reading their boxes (spair.models.refine; 0 = off)")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = torch's default: all cores)")

    def __post_init__(self) -> None:
        if self.crop_size > self.image_size:
            raise ConfigError(f"crop_size: {self.crop_size}-px crops do not fit in {self.image_size}-px images")


def settings_for_scale(scale: str) -> GeneralizationSettings:
    """``quick``: about 55 minutes on 2 CPU cores for 3 conditions × 1 seed (docs/generalization.md);
    ``paper``: the paper's data (25k base images, 1000 validation, 1000 test images per n) and
    budgets (up to 200k steps with patience 50k) with the ``paper`` preset (the authors' settings)."""
    if scale == "quick":
        return GeneralizationSettings()
    if scale == "paper":
        return GeneralizationSettings(n_train=25000, n_val=1000, n_test=1000, n_cc_val=1000, spair_preset="paper",
                                      spair_steps=200000, spair_eval_every=1000, spair_patience=50000)
    raise ConfigError(f"unknown scale '{scale}' (use 'quick' or 'paper')")


def parse_condition(name: str) -> tuple[int, int]:
    """``"6-10"`` → ``(6, 10)``; ``"5"`` → ``(5, 5)`` (ConfigError for anything else)."""
    text = str(name).strip()
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise ConfigError(f"condition '{name}': expected a range of digits like '6-10'") from None
    if lo < 0 or hi < max(lo, 1):
        raise ConfigError(f"condition '{name}': expected 0 <= lo <= hi and hi >= 1")
    return lo, hi


def condition_name(name: str) -> str:
    """The canonical name of a condition (``"5"`` → ``"5-5"``, ``" 1-5"`` → ``"1-5"``)."""
    lo, hi = parse_condition(name)
    return f"{lo}-{hi}"


def _scene(settings: GeneralizationSettings, n_objects: tuple[int, int], split: str):
    from ..data.scenes import SceneConfig

    return SceneConfig(image_size=(settings.image_size, settings.image_size), n_objects=n_objects,
                       object_size=OBJECT_SIZE, max_overlap=MAX_OVERLAP, digit_source="embedded", split=split)


def full_image_spec(n: int, split: str, settings: GeneralizationSettings):
    """The :class:`~spair.data.datasets.DatasetSpec` of the full images with exactly ``n`` digits:
    ``n_test`` test images (test digits, seed 2) or ``n_cc_val`` validation images (val digits, seed 1)."""
    from ..data.datasets import DatasetSpec

    if split == "test":
        return DatasetSpec(scene=_scene(settings, (n, n), "test"), n_images=settings.n_test, seed=TEST_SEED)
    if split == "val":
        return DatasetSpec(scene=_scene(settings, (n, n), "val"), n_images=settings.n_cc_val, seed=VAL_SEED)
    raise ValueError(f"split must be 'test' or 'val', got {split!r}")


def spair_config(condition: str, settings: GeneralizationSettings, seed: int, overrides: Sequence[str] = ()):
    """SPAIR's :class:`~spair.training.config.TrainConfig` for a training condition: the place to tune it.

    The preset ``settings.spair_preset`` (``cpu``: the CPU recipe on the paper's 12-px cells) with the data replaced by the
    condition's crops (``crops_per_image`` random ``crop_size`` crops of ``image_size`` base images
    with ``condition`` digits; ``n_train`` / ``n_val`` base images, seeds 0 / 1), the step budget,
    validation schedule and inference settings of ``settings``, no test scenes (the driver tests
    the best checkpoint on full images itself), then ``settings.spair_overrides``, then
    ``overrides`` (a line's own settings, e.g. the ablation's lookback).
    """
    from ..training.config import TrainConfig
    from ..training.presets import get_preset

    data = to_dict(get_preset(settings.spair_preset))
    crop = {"size": [settings.crop_size, settings.crop_size], "n_per_image": settings.crops_per_image}
    data["data"].update(scene=to_dict(_scene(settings, parse_condition(condition), "train")), crop=crop,
                        n_train=settings.n_train, n_val=settings.n_val, train_seed=TRAIN_SEED, val_seed=VAL_SEED)
    data["test"]["n"] = 0
    cfg = from_dict(TrainConfig, data)
    return apply_overrides(cfg, [
        f"optim.max_steps={settings.spair_steps}", f"eval.every={settings.spair_eval_every}",
        f"eval.patience={settings.spair_patience}", f"eval.stop_at_ap={settings.stop_at_ap}",
        f"eval.sample={settings.sample}", f"eval.box_mode={settings.val_box_mode}", f"seed={seed}",
        f"num_threads={settings.num_threads}", *settings.spair_overrides, *overrides])


def check_feasible(settings: GeneralizationSettings, conditions: Sequence[str]) -> None:
    """ConfigError unless every condition and ``max_digits`` digits fit in a base image.

    By area, 84×84 images hold at most 71 digits of 14 px under the 98-px² overlap rule; the
    generator places 20 digits without ever reaching a dead end (docs/generalization.md).
    """
    for c in conditions:
        _scene(settings, parse_condition(c), "train").check_feasible()
    _scene(settings, (settings.max_digits, settings.max_digits), "test").check_feasible()


def other_box_mode(box_mode: str) -> str:
    """The box mode recorded next to the main one: ``window`` (the paper's), or ``ink`` when the
    main mode is ``window``."""
    return "ink" if box_mode == "window" else "window"


def budget_estimate(settings: GeneralizationSettings, lookbacks: Sequence[int], n_seeds: int = 1,
                    conncomp: bool = False) -> dict[str, float]:
    """CPU seconds (one core) the settings ask for: training (one run per entry of ``lookbacks``
    and seed, from :data:`STEP_CPU_SECONDS`, scaled by batch size and crop area), validation during
    training, the full-image tests and, with ``conncomp``, ConnComp (data, τ searches, tests).
    ``wall_two_cores`` divides SPAIR's share by the measured 2-thread speedup (ConnComp runs on one
    core). An upper bound: early stopping only shortens runs."""
    cfg = spair_config(CONDITIONS[0], settings, 0)
    scale = (cfg.optim.batch_size / 32) * (settings.crop_size / 48) ** 2
    train = n_seeds * sum(settings.spair_steps * STEP_CPU_SECONDS.get(int(L), STEP_CPU_SECONDS[2]) * scale
                          for L in lookbacks)
    n_evals = math.ceil(settings.spair_steps / settings.spair_eval_every)
    val = n_seeds * len(lookbacks) * n_evals * settings.n_val * settings.crops_per_image * VAL_CPU_SECONDS_PER_CROP
    area = (settings.image_size / 84) ** 2
    test = n_seeds * len(lookbacks) * settings.max_digits * settings.n_test * TEST_CPU_SECONDS_PER_IMAGE * area
    cc = (settings.max_digits * (settings.n_cc_val + settings.n_test) * CONNCOMP_CPU_SECONDS_PER_IMAGE * area
          if conncomp else 0.0)
    parts = {"training": train, "validation": val, "test": test, "conncomp": cc, "total": train + val + test + cc,
             "wall_two_cores": (train + val + test) / TWO_CORE_SPEEDUP + cc}
    return {k: round(v, 1) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def training_specs(cfg: Any) -> dict[str, Any]:
    """The training and validation :class:`~spair.data.datasets.DatasetSpec` of a TrainConfig: the
    datasets ``spair train --config`` would load for it (:func:`spair.training.trainer.load_split`)."""
    from ..data.datasets import DatasetSpec

    d = cfg.data
    val_scene = from_dict(type(d.scene), {**to_dict(d.scene), "split": "val"})
    return {"train": DatasetSpec(scene=d.scene, n_images=d.n_train, seed=d.train_seed, crop=d.crop),
            "val": DatasetSpec(scene=val_scene, n_images=d.n_val, seed=d.val_seed, crop=d.crop)}


def load_full_images(settings: GeneralizationSettings, split: str, n_values: Sequence[int],
                     cache_dir: str | Path | None = None) -> dict[int, Any]:
    """The full images of every ``n`` (:func:`full_image_spec`), through the dataset cache."""
    from ..data.datasets import get_dataset

    return {n: get_dataset(full_image_spec(n, split, settings), cache_dir=cache_dir) for n in n_values}


def concat_scenes(parts: Sequence[Any]):
    """One :class:`~spair.data.scenes.Scenes` holding the images of ``parts`` (all of one size), in order."""
    import numpy as np

    from ..data.scenes import Scenes

    return Scenes(images=np.concatenate([p.images for p in parts]), boxes=[b for p in parts for b in p.boxes],
                  labels=[x for p in parts for x in p.labels],
                  backgrounds=np.concatenate([p.backgrounds for p in parts]))


def _dataset_id(spec: Any, cache_dir: str | Path | None) -> str:
    from ..data.datasets import dataset_folder

    return dataset_folder(spec, cache_dir).name


# ---------------------------------------------------------------------------------------------
# The full-image test protocol
# ---------------------------------------------------------------------------------------------


def _select(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The reported metrics, NaN as None (JSON has no NaN)."""
    out = {}
    for k in REPORTED_METRICS:
        if k in metrics:
            v = metrics[k]
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def evaluate_full_images(model: Any, tests: Mapping[int, Any], settings: GeneralizationSettings,
                         batch_size: int = 100) -> dict[str, dict[int, dict[str, Any]]]:
    """Test a SPAIR model on full images: ``{box_mode: {n: metrics}}`` for ``settings.box_mode``
    and :func:`other_box_mode`, one forward pass per batch for both.

    ``tests`` maps each number of digits to its :class:`~spair.data.scenes.Scenes`. Inference is
    ``settings.sample`` (``mean``: deterministic; ``hard``: samples from a generator seeded with 0
    for every ``n``); cells with presence probability ≥ 0.5 (or a Bernoulli sample of 1) are reported.
    """
    import torch

    from ..metrics import evaluate_detections
    from ..models.spair_detector import INK_THRESHOLD, object_detections, reported_objects, run_model, to_tensor

    modes = (settings.box_mode, other_box_mode(settings.box_mode))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    given = model.cfg.background == "given"
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in modes}
    with torch.no_grad():
        for n, scenes in tests.items():
            gen = torch.Generator(device=device).manual_seed(0)
            dets: dict[str, list] = {m: [] for m in modes}
            for start in range(0, len(scenes), batch_size):
                stop = min(start + batch_size, len(scenes))
                x = to_tensor(scenes.images[start:stop], device)
                bg = (torch.from_numpy(scenes.backgrounds[start:stop]).float().div(255.0).to(device)
                      if given else None)
                out = run_model(model, x, settings.sample, gen, bg)
                # one selection (and refinement) of the reported objects, read in both box modes
                out, keep = reported_objects(model, out, 0.5, INK_THRESHOLD, use_samples=settings.sample != "mean",
                                             x=x, refine_steps=settings.refine_steps)
                for m in modes:
                    dets[m] += object_detections(model, out, keep, m, INK_THRESHOLD, x)
            sizes = [tuple(scenes.images.shape[1:3])] * len(scenes)
            for m in modes:
                metrics = evaluate_detections([d.boxes for d in dets[m]], [d.scores for d in dets[m]], scenes.boxes,
                                              image_sizes=sizes)
                results[m][int(n)] = _select(metrics)
    model.train(was_training)
    return results


def conncomp_tune(val: Any) -> dict[str, Any]:
    """ConnComp's τ on validation images for each criterion of :data:`TAU_METRICS` (the authors'
    grid ``linspace(0.01, 3, 100)``, true backgrounds): ``{"tau": {metric: τ}, "val": {metric: score}}``."""
    from .conncomp_baseline import tune_tau

    tuned = {m: tune_tau(val, metric=m) for m in TAU_METRICS}
    return {"tau": {m: r.tau for m, r in tuned.items()}, "val": {m: r.score for m, r in tuned.items()}}


def conncomp_test(taus: Mapping[str, float], test: Any) -> dict[str, dict[str, Any]]:
    """ConnComp's test metrics with the τ of each criterion: ``{metric: metrics}``."""
    from ..models.conncomp import ConnCompDetector
    from .conncomp_baseline import detect_scenes, evaluate

    cache: dict[float, dict[str, Any]] = {}
    out = {}
    for m, tau in taus.items():
        if tau not in cache:
            cache[tau] = _select(evaluate(detect_scenes(ConnCompDetector(tau=tau), test), test))
        out[m] = cache[tau]
    return out


def conncomp_for_n(val: Any, test: Any) -> dict[str, Any]:
    """ConnComp for one number of digits: τ tuned per criterion on ``val``, tested on ``test``."""
    tuned = conncomp_tune(val)
    return {**tuned, "test": conncomp_test(tuned["tau"], test)}


# ---------------------------------------------------------------------------------------------
# Runs and curves
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One SPAIR curve of a figure: a training condition and a configuration, trained per seed.

    ``name`` is the curve's key in ``results.json`` and its folder below the output folder
    (``"11-15"``, or ``"11-15/L0"`` in the ablation); ``config(seed)`` gives the TrainConfig;
    ``row`` groups curves into rows of panels (the ablation draws one row per condition).
    """

    name: str
    label: str
    condition: str
    lookback: int
    config: Callable[[int], Any]
    row: str = ""


@dataclass
class _Job:
    key: str
    line: Line
    seed: int
    run_dir: Path
    cfg: Any
    run_config: dict[str, Any]


def _spair_job(line: Line, seed: int, out: Path, settings: GeneralizationSettings) -> _Job:
    cfg = line.config(seed)
    run_config = {"method": "spair", "line": line.name, "condition": line.condition, "seed": seed,
                  "test": {"n_test": settings.n_test, "max_digits": settings.max_digits, "seed": TEST_SEED,
                           "image_size": settings.image_size, "box_mode": settings.box_mode,
                           "sample": settings.sample},
                  "train_config": to_dict(cfg)}
    return _Job(f"{line.name}/seed{seed}", line, seed, out / line.name / f"seed{seed}", cfg, run_config)


def _run_spair(job: _Job, data: dict[str, Any], tests: Mapping[int, Any], settings: GeneralizationSettings,
               log: Log, progress: bool) -> dict[str, Any]:
    """Train (or resume, or reuse a finished training) and test one run; return its record."""
    from ..models.io import load_model
    from ..training.trainer import Trainer

    summary = trained_summary(job.run_dir, job.cfg) or Trainer(
        job.cfg, job.run_dir, progress=progress, tensorboard=False, log=log, train_data=data["train"],
        val_data=data["val"]).fit()
    best = job.run_dir / "best.pt"
    if not best.exists():  # no validation ever gave a number (e.g. NaN AP): test the last weights
        log(f"  {job.key}: no best.pt (validation AP never defined); testing last.pt")
        best = job.run_dir / "last.pt"
    t0 = time.perf_counter()
    model = load_model(best)
    tests_by_mode = evaluate_full_images(model, tests, settings)
    other = other_box_mode(settings.box_mode)
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "best_val_ap": summary["best_val_ap"], "best_step": summary["best_step"], "checkpoint": best.name,
            "test": {str(n): m for n, m in tests_by_mode[settings.box_mode].items()},
            f"test_{other}": {str(n): m for n, m in tests_by_mode[other].items()},
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "same_as": f"spair train --config {job.run_dir / 'config.json'} --out {job.run_dir}"}


def _spair_curve(line: Line, runs: list[dict[str, Any]], n_values: list[int], box_mode: str) -> dict[str, Any]:
    """Mean and sd over seeds, per n, of every :data:`CURVE_KEYS` metric (and the other box mode's AP)."""
    other = other_box_mode(box_mode)
    mean: dict[str, list] = {}
    sd: dict[str, list] = {}
    sources = [(k, "test", k) for k in CURVE_KEYS] + [(f"{other}_boxes_{k}", f"test_{other}", k)
                                                       for k in ("spair_AP", "coco_AP[.1:.9]")]
    for name, field_, key in sources:
        stats = [mean_sd([r[field_].get(str(n), {}).get(key) for r in runs]) for n in n_values]
        mean[name] = [s["mean"] for s in stats]
        sd[name] = [s["sd"] for s in stats]
    return {"label": line.label, "kind": "spair", "condition": line.condition, "lookback": line.lookback,
            "row": line.row, "seeds": [r["seed"] for r in runs], "n_runs": len(runs), "mean": mean, "sd": sd}


def _conncomp_curves(per_n: dict[int, dict[str, Any]], global_: dict[str, Any] | None,
                     n_values: list[int]) -> dict[str, Any]:
    """ConnComp's curves: each metric read with the τ tuned for it (per n, and global)."""
    curves = {}
    if per_n:
        curves["conncomp"] = {
            "label": "ConnComp (tau per n)", "kind": "conncomp", "row": "",
            "mean": {k: [per_n[n]["test"][TAU_METRIC_OF_KEY[k]][k] if n in per_n else None for n in n_values]
                     for k in CURVE_KEYS},
            "tau": {m: [per_n[n]["tau"][m] if n in per_n else None for n in n_values] for m in TAU_METRICS}}
    if global_ is not None:
        curves["conncomp_global"] = {
            "label": "ConnComp (one tau)", "kind": "conncomp", "row": "",
            "mean": {k: [global_["test"][str(n)][TAU_METRIC_OF_KEY[k]][k] for n in n_values] for k in CURVE_KEYS},
            "tau": dict(global_["tau"])}
    return curves


# ---------------------------------------------------------------------------------------------
# The driver shared by the generalization experiment and the ablation
# ---------------------------------------------------------------------------------------------


def run_transfer(out: str | Path, *, experiment: str, description: str, scale: str, lines: Sequence[Line],
                 seeds: Sequence[int], settings: GeneralizationSettings, conncomp: bool,
                 plot: Callable[[dict[str, Any], Path], None], figure_name: str,
                 extra: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None, command: str = "",
                 log: Log = no_log, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) SPAIR ``lines`` × ``seeds`` and, with ``conncomp``, ConnComp, all under the
    full-image test protocol; write ``OUT/results.json``, ``OUT/<figure_name>`` (drawn by ``plot``)
    and ``OUT/examples.png``; return the contents of ``results.json``.

    This is the engine of :func:`run_generalization` and
    :func:`spair.experiments.ablation.run_ablation`; ``experiment``, ``description`` and ``extra``
    go into ``results.json`` as they are.
    """
    out = Path(out)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: expected distinct non-negative integers, got {seeds}")
    if len({line.name for line in lines}) != len(lines):
        raise ConfigError("lines: two curves have the same name")
    check_feasible(settings, [line.condition for line in lines])
    n_values = list(range(1, settings.max_digits + 1))
    t_start = time.perf_counter()
    state: dict[str, Any] = {"runs": {}, "conncomp": {}, "conncomp_global": None, "data": {}}
    loaded: dict[str, Any] = {}

    def tests() -> dict[int, Any]:
        if "test" not in loaded:
            loaded["test"] = load_full_images(settings, "test", n_values, cache_dir)
        return loaded["test"]

    def write(complete: bool) -> dict[str, Any]:
        return _write_results(out, experiment, description, scale, settings, seeds, lines, n_values, state,
                              command, t_start, complete, plot, figure_name, extra or {}, conncomp)

    estimate = budget_estimate(settings, [line.lookback for line in lines], len(seeds), conncomp)
    log(f"{experiment} ({scale}): {len(lines)} SPAIR curves x {len(seeds)} seeds; test n = 1..{settings.max_digits}, "
        f"{settings.n_test} full {settings.image_size}x{settings.image_size} images each; estimated "
        f"{estimate['wall_two_cores'] / 60:.0f} min on 2 cores (an upper bound)")
    state["data"]["test"] = {str(n): _dataset_id(full_image_spec(n, "test", settings), cache_dir) for n in n_values}
    if conncomp:
        state["data"]["conncomp_val"] = {str(n): _dataset_id(full_image_spec(n, "val", settings), cache_dir)
                                         for n in n_values}
        _run_conncomp_all(out, settings, n_values, state, tests, cache_dir, log)
        write(False)

    jobs = [_spair_job(line, seed, out, settings) for line in lines for seed in seeds]
    for condition in dict.fromkeys(line.condition for line in lines):
        pending = []
        for job in (j for j in jobs if j.line.condition == condition):
            done = finished_result(job.run_dir, job.run_config)
            if done is None:
                pending.append(job)
            else:
                log(f"  {job.key}: already finished ({job.run_dir})")
                state["runs"][job.key] = done
        first = next(j for j in jobs if j.line.condition == condition)
        specs = training_specs(first.cfg)
        state["data"][condition] = {k: {"id": _dataset_id(s, cache_dir), "spec": to_dict(s)} for k, s in specs.items()}
        if not pending:
            continue
        data: dict[str, Any] = {"train": None, "val": None, "specs": None}
        for job in pending:
            job_specs = {k: to_dict(s) for k, s in training_specs(job.cfg).items()}
            if trained_summary(job.run_dir, job.cfg) is None and data["specs"] != job_specs:
                from ..data.datasets import get_dataset

                data = {k: get_dataset(s, cache_dir=cache_dir) for k, s in training_specs(job.cfg).items()}
                data["specs"] = job_specs
            log(f"  {job.key}: running in {job.run_dir}")
            record = _run_spair(job, data, tests(), settings, log, progress)
            record = {"line": job.line.name, "condition": condition, "seed": job.seed, "run": str(job.run_dir),
                      **record, "config": job.run_config, "spair_version": __version__}
            write_json_atomic(job.run_dir / "result.json", record)
            state["runs"][job.key] = record
            summary = ", ".join(f"n={n}: {_fmt(record['test'][str(n)]['spair_AP'])}" for n in _example_ns(n_values))
            log(f"  {job.key}: test SPAIR-AP {summary}")
            write(False)
        del data
    results = write(True)
    examples = out / "examples.png"
    plot_examples(examples, lines, state, tests(), settings)
    log(f"wrote {out / 'results.json'}, {out / figure_name} and {examples}")
    return results


def _run_conncomp_all(out: Path, settings: GeneralizationSettings, n_values: list[int], state: dict[str, Any],
                      tests: Callable[[], dict[int, Any]], cache_dir: str | Path | None, log: Log) -> None:
    """ConnComp per n and with one global τ per criterion (resumable, one done-marker each)."""
    from ..data.datasets import get_dataset

    grid = {"lo": TAU_GRID[0], "hi": TAU_GRID[-1], "n": len(TAU_GRID)}
    base = {"method": "conncomp", "n_cc_val": settings.n_cc_val, "n_test": settings.n_test,
            "image_size": settings.image_size, "tau_grid": grid}
    for n in n_values:
        run_dir = out / "conncomp" / f"n{n}"
        config = {**base, "n": n}
        done = finished_result(run_dir, config)
        if done is None:
            t0 = time.perf_counter()
            val = get_dataset(full_image_spec(n, "val", settings), cache_dir=cache_dir)
            done = {"n": n, **conncomp_for_n(val, tests()[n]), "seconds": round(time.perf_counter() - t0, 2),
                    "config": config, "spair_version": __version__}
            write_json_atomic(run_dir / "result.json", done)
            log(f"  conncomp n={n}: tau {done['tau']}; test SPAIR-AP {_fmt(done['test']['ap']['spair_AP'])}, "
                f"count |err| {_fmt(done['test']['count_abs']['count_abs_error'])}")
        state["conncomp"][n] = done
    run_dir = out / "conncomp" / "global"
    config = {**base, "method": "conncomp-global", "n_values": n_values}
    done = finished_result(run_dir, config)
    if done is None:
        t0 = time.perf_counter()
        val = concat_scenes([get_dataset(full_image_spec(n, "val", settings), cache_dir=cache_dir) for n in n_values])
        tuned = conncomp_tune(val)
        done = {**tuned, "test": {str(n): conncomp_test(tuned["tau"], tests()[n]) for n in n_values},
                "seconds": round(time.perf_counter() - t0, 2), "config": config, "spair_version": __version__}
        write_json_atomic(run_dir / "result.json", done)
        log(f"  conncomp, one tau for n = 1..{n_values[-1]}: {done['tau']}")
    state["conncomp_global"] = done


def _write_results(out: Path, experiment: str, description: str, scale: str, settings: GeneralizationSettings,
                   seeds: list[int], lines: Sequence[Line], n_values: list[int], state: dict[str, Any], command: str,
                   t_start: float, complete: bool, plot: Callable[[dict[str, Any], Path], None], figure_name: str,
                   extra: Mapping[str, Any], conncomp: bool) -> dict[str, Any]:
    curves: dict[str, Any] = {}
    runs_out = []
    for line in lines:
        runs = sorted((r for r in state["runs"].values() if r["line"] == line.name), key=lambda r: r["seed"])
        if runs:
            curves[line.name] = _spair_curve(line, runs, n_values, settings.box_mode)
        runs_out += [{k: r[k] for k in r if k not in ("config",)} for r in runs]
    curves.update(_conncomp_curves(state["conncomp"], state["conncomp_global"], n_values))
    train_seconds = sum(r.get("train_seconds", 0.0) for r in state["runs"].values())
    eval_seconds = sum(r.get("eval_seconds", 0.0) for r in state["runs"].values())
    cc_seconds = sum(r.get("seconds", 0.0) for r in state["conncomp"].values()) + (
        state["conncomp_global"] or {}).get("seconds", 0.0)
    lookbacks = sorted({line.lookback for line in lines})
    estimate = budget_estimate(settings, [line.lookback for line in lines], len(seeds), conncomp)
    size, crop = settings.image_size, settings.crop_size
    results = {
        "experiment": experiment,
        "description": description,
        "complete": complete,
        "scale": scale,
        "command": command,
        "spair_version": __version__,
        "seeds": seeds,
        "conditions": list(dict.fromkeys(line.condition for line in lines)),
        "lookbacks": lookbacks,
        "n_digits": n_values,
        **dict(extra),
        "settings": to_dict(settings),
        "data": {
            "image_size": [size, size], "object_size": OBJECT_SIZE, "max_overlap": MAX_OVERLAP,
            "digit_source": "embedded",
            "train": {"digit_split": "train", "seed": TRAIN_SEED, "base_images": settings.n_train,
                      "crops": f"{settings.crops_per_image} random {crop}x{crop} crops per base image"},
            "val": {"digit_split": "val", "seed": VAL_SEED, "base_images": settings.n_val,
                    "crops": f"{settings.crops_per_image} random {crop}x{crop} crops per base image"},
            "test": {"digit_split": "test", "seed": TEST_SEED, "images_per_n": settings.n_test,
                     "full_images": f"{size}x{size}, exactly n digits"},
            "conncomp_val": {"digit_split": "val", "seed": VAL_SEED, "images_per_n": settings.n_cc_val,
                             "full_images": f"{size}x{size}, exactly n digits"} if conncomp else None,
            "datasets": state["data"]},
        "protocol": {
            "spair": f"trained on {crop}x{crop} crops only (spair_config: preset '{settings.spair_preset}', data "
                     "replaced), best validation SPAIR-AP checkpoint (on validation crops) tested without further "
                     f"training on full {size}x{size} images with exactly n digits",
            "conncomp": "tau tuned per n and per metric on full validation images with exactly n digits (the "
                        "authors' protocol): AP with the tau of best SPAIR-AP, count absolute error and count bias "
                        "with the tau of least count absolute error, count 0-1 error with the tau of least count "
                        "0-1 error; conncomp_global: one tau per metric tuned on the validation images of every n "
                        "pooled; grid linspace(0.01, 3, 100), true (black) background" if conncomp else None,
            "tune_metrics": TUNE_METRIC_DEFINITIONS if conncomp else None,
            "boxes": f"main results with box_mode '{settings.box_mode}'; test_{other_box_mode(settings.box_mode)} "
                     "holds the other box mode",
            "inference": settings.sample,
            "spread": "sd = sample standard deviation over seeds (0 with one seed; ConnComp has no seed)"},
        "metric_definitions": METRIC_DEFINITIONS,
        "budget": {"step_cpu_seconds_one_core": {str(k): v for k, v in STEP_CPU_SECONDS.items()},
                   "estimated_cpu_seconds": estimate,
                   "measured_training_seconds": round(train_seconds, 1),
                   "measured_test_seconds": round(eval_seconds, 1),
                   "measured_conncomp_seconds": round(cc_seconds, 1),
                   "this_invocation_seconds": round(time.perf_counter() - t_start, 1)},
        "curves": curves,
        "runs": runs_out,
        "conncomp": ({"per_n": [{k: v for k, v in state["conncomp"][n].items() if k != "config"}
                                for n in n_values if n in state["conncomp"]],
                      "global": {k: v for k, v in (state["conncomp_global"] or {}).items() if k != "config"} or None}
                     if conncomp else None),
    }
    write_json_atomic(out / "results.json", results)
    plot(results, out / figure_name)
    return results


# ---------------------------------------------------------------------------------------------
# The generalization experiment
# ---------------------------------------------------------------------------------------------


def generalization_lines(conditions: Sequence[str], settings: GeneralizationSettings) -> list[Line]:
    """One SPAIR curve per training condition, configured by :func:`spair_config`."""
    lines = []
    for c in conditions:
        name = condition_name(c)
        lookback = spair_config(name, settings, 0).model.n_lookback
        lines.append(Line(name=name, label=f"SPAIR, trained on {name} digits", condition=name, lookback=lookback,
                          config=lambda seed, name=name: spair_config(name, settings, seed)))
    return lines


def run_generalization(out: str | Path = "results/generalization", scale: str = "quick", seeds: Sequence[int] = (0,),
                       conditions: Sequence[str] = CONDITIONS, *, settings: GeneralizationSettings | None = None,
                       overrides: Sequence[str] = (), cache_dir: str | Path | None = None, command: str = "",
                       log: Log = no_log, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment of the module docstring; return the contents of ``results.json``.

    ``settings`` replaces the settings of ``scale``; ``overrides`` are ``KEY=VALUE`` changes of them
    (e.g. ``"spair_steps=6000"``). Progress goes to ``log``; ``progress`` shows the trainer's bars.
    """
    names = [condition_name(c) for c in conditions]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"conditions: expected distinct ranges like 1-5, got {list(conditions)}")
    settings = apply_overrides(settings or settings_for_scale(scale), list(overrides))
    return run_transfer(
        out, experiment="generalization",
        description=f"SPAIR trained on random {settings.crop_size}x{settings.crop_size} crops of "
                    f"{settings.image_size}x{settings.image_size} images with {' or '.join(names)} digits, tested "
                    f"on full images with exactly n digits, n = 1..{settings.max_digits}, with ConnComp as a "
                    "baseline (paper section 5.2, Figure 3)",
        scale=scale, lines=generalization_lines(names, settings), seeds=seeds, settings=settings, conncomp=True,
        plot=plot_generalization, figure_name="generalization.png", cache_dir=cache_dir, command=command, log=log,
        progress=progress)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

PANELS: tuple[tuple[str, str], ...] = (("spair_AP", "AP (SPAIR-AP, IoU .1:.9)"),
                                       ("count_abs_error", "count absolute error"),
                                       ("count_01_error", "count 0-1 error"))
"""The three panels of Figures 3 and 7: metric key and axis label."""
EXAMPLE_NS: tuple[int, ...] = (1, 5, 10, 15, 20)


def _example_ns(n_values: Sequence[int]) -> list[int]:
    ns = [n for n in EXAMPLE_NS if n in n_values]
    return ns if n_values[-1] in ns else ns + [n_values[-1]]


def plot_panels(results: dict[str, Any], path: str | Path, rows: Sequence[tuple[str, Sequence[str]]], title: str,
                shade: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Rows of three panels (:data:`PANELS`) of test metrics against the number of digits.

    ``rows``: (row title, curve names of ``results["curves"]``) per row. SPAIR curves are drawn as
    mean lines with a ± sd band over seeds; ConnComp curves in grey (dashed: one global τ).
    ``shade`` maps a row title to a range of digits (the training condition) shaded in its panels.
    """
    from ..viz.figures import new_figure, save_figure

    n_values = results["n_digits"]
    fig = new_figure(13.0, 3.6 * len(rows) + 0.4)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for r, (row_title, names) in enumerate(rows):
        for p, (key, ylabel) in enumerate(PANELS):
            ax = fig.add_subplot(len(rows), len(PANELS), r * len(PANELS) + p + 1)
            if shade and row_title in shade:
                lo, hi = shade[row_title]
                ax.axvspan(lo - 0.5, hi + 0.5, color="0.85", alpha=0.5, lw=0, label="training range")
            i = 0
            for name in names:
                curve = results["curves"].get(name)
                if curve is None:
                    continue
                pts = [(n, m, s) for n, m, s in zip(n_values, curve["mean"][key], curve.get("sd", {}).get(
                    key, [None] * len(n_values))) if m is not None]
                if not pts:
                    continue
                xs, ys = [q[0] for q in pts], [q[1] for q in pts]
                if curve["kind"] == "conncomp":
                    ax.plot(xs, ys, color="0.35", ls="--" if name.endswith("global") else "-", marker="s",
                            ms=3, label=curve["label"])
                    continue
                colour = colours[i % len(colours)]
                i += 1
                ax.plot(xs, ys, color=colour, marker="o", ms=3, label=curve["label"])
                sds = [q[2] or 0.0 for q in pts]
                if any(sds):
                    ax.fill_between(xs, [y - s for y, s in zip(ys, sds)], [y + s for y, s in zip(ys, sds)],
                                    color=colour, alpha=0.2, lw=0)
            ax.set_xlabel("digits per test image")
            ax.set_ylabel(ylabel)
            ax.set_xticks([n for n in n_values if n == 1 or n % 5 == 0 or len(n_values) <= 10])
            ax.set_xlim(0.5, n_values[-1] + 0.5)
            if key == "spair_AP" or key == "count_01_error":
                ax.set_ylim(0.0, 1.05)
            else:
                ax.set_ylim(bottom=0.0)
            ax.grid(True, alpha=0.3)
            if row_title:
                ax.set_title(row_title, fontsize=10)
            if p == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def spread_note(results: dict[str, Any]) -> str:
    """How a figure's spread reads: ``1 seed`` or ``mean ± sd over k seeds``."""
    n = len(results["seeds"])
    return f"mean ± sd over {n} seeds" if n > 1 else "1 seed"


def plot_generalization(results: dict[str, Any], path: str | Path) -> None:
    """Figure 3: AP, count absolute error and count 0-1 error against n, one line per training
    condition (mean ± sd over seeds) and ConnComp (τ per n and metric; dashed: one τ)."""
    s = results["settings"]
    names = [c for c in results["conditions"]] + ["conncomp", "conncomp_global"]
    plot_panels(results, path, [("", names)],
                f"Trained on {s['crop_size']}x{s['crop_size']} crops, tested on full {s['image_size']}x"
                f"{s['image_size']} images, {s['n_test']} per n ({spread_note(results)}; scale '{results['scale']}')")


def plot_examples(path: str | Path, lines: Sequence[Line], state: dict[str, Any], tests: Mapping[int, Any],
                  settings: GeneralizationSettings) -> None:
    """The first test image of a few n (columns) with each curve's boxes (blue; the run of the
    lowest seed) and ConnComp's (τ tuned for AP at that n), ground truth in yellow."""
    from ..models.conncomp import ConnCompDetector
    from ..models.io import load_model
    from ..models.spair_detector import SpairDetector
    from ..viz.figures import scene_grid

    ns = _example_ns(sorted(tests))
    images = [tests[n].images[0] for n in ns]
    backgrounds = [tests[n].backgrounds[0] for n in ns]
    gts = [tests[n].boxes[0] for n in ns]
    grid_images, preds, truth, titles = [], [], [], []
    for line in lines:
        runs = sorted((r for r in state["runs"].values() if r["line"] == line.name), key=lambda r: r["seed"])
        if not runs:
            continue
        ckpt = Path(runs[0]["run"]) / runs[0].get("checkpoint", "best.pt")
        detector = SpairDetector(model=load_model(ckpt), box_mode=settings.box_mode, sample=settings.sample,
                                 refine_steps=settings.refine_steps, grid_shifts=1)   # one view, as evaluated
        dets = detector.detect(images, backgrounds)
        for i, n in enumerate(ns):
            grid_images.append(images[i])
            preds.append(dets[i].boxes)
            truth.append(gts[i])
            titles.append(f"{line.name} s{runs[0]['seed']}: n={n}, {len(dets[i].boxes)} found")
    for i, n in enumerate(ns):
        cc = state["conncomp"].get(n)
        if cc is None:
            continue
        det = ConnCompDetector(tau=cc["tau"]["ap"]).detect([images[i]], backgrounds=[backgrounds[i]])[0]
        grid_images.append(images[i])
        preds.append(det.boxes)
        truth.append(gts[i])
        titles.append(f"ConnComp: n={n}, {len(det.boxes)} found")
    if grid_images:
        scene_grid(grid_images, preds, truth, path, ncols=len(ns), titles=titles, panel_inches=2.0)
