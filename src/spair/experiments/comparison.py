"""The paper's comparison experiment (section 5.1, Figure 2): SPAIR, AIR, DAIR and ConnComp on
48×48 scenes with exactly n digits, n = 1, 3, 5, 7, 9.

For every n (docs/comparison.md has the details and the budgets):

1. **Data** (spec 8.2), through the dataset cache (:func:`spair.data.datasets.get_dataset`):
   training scenes from the train digits (seed 0), validation scenes from the val digits (seed 1),
   test scenes from the test digits (seed 2), 14-px white digits on black, max overlap 98 px².
   The test digits are never seen in training or validation.
2. **ConnComp**: τ tuned on the validation scenes by SPAIR-AP
   (:func:`spair.experiments.conncomp_baseline.tune_tau`), evaluated on the test scenes.
3. **SPAIR, AIR, DAIR**, once per seed: trained on the training scenes with model selection by
   validation SPAIR-AP; the best checkpoint is evaluated on the test scenes. AIR and DAIR run the
   true number of digits as their number of steps, at training and at test time (as in the paper).
   SPAIR's settings come from :func:`spair_config` (the ``cpu`` preset with the data replaced),
   AIR's and DAIR's from :func:`air_config` (the authors' priors for n).

Every metric of :func:`spair.metrics.evaluate_detections` is recorded. The learned models' boxes
are evaluated three ways: the main results (``test``) use ``box_mode`` (default ``"segment"``, the
extent of the input pixels each object explains, what ``spair detect`` reports), and the other two
are kept beside them (``test_ink``: the extent of each object's own rendered ink; ``test_window``:
its sprite window, the paper's convention). Validation (checkpoint selection) uses
``val_box_mode`` (default ``"ink"``), which does not need the input pixels.

**Layout and resuming.** Each run has its own folder, ``OUT/n<n>/seed<s>/<method>/`` (ConnComp,
which has no seed: ``OUT/n<n>/conncomp/``), holding the trainer's files and, once the run is
finished and evaluated, ``result.json``: the done-marker. Running the experiment again skips runs
with a ``result.json`` of the same configuration, resumes interrupted trainings from their
``last.pt``, and refuses (ConfigError) a folder whose finished runs used other settings.
``OUT/results.json`` (settings, commands, per-seed numbers, mean and sd per method and n) and the
figure ``OUT/comparison_ap.png`` are rewritten after every finished run; ``OUT/n<n>/examples.png``
shows the first test images with every method's boxes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .. import __version__
from ..config import apply_overrides, from_dict, param, to_dict
from ..errors import ConfigError
from ..io import read_json, write_json_atomic
from .conncomp_baseline import TAU_GRID, TEST_SEED, VAL_SEED, detect_scenes, scene_spec
from .conncomp_baseline import evaluate as evaluate_conncomp
from .conncomp_baseline import tune_tau
from .runs import TWO_CORE_SPEEDUP, Log, finished_result, mean_sd, no_log, trained_summary

N_DIGITS: tuple[int, ...] = (1, 3, 5, 7, 9)
"""Numbers of digits per image of the comparison (the five training conditions of the paper)."""
TRAIN_SEED = 0
"""Seed of the training scenes (the authors' convention: train 0, val 1, test 2)."""
METHODS: tuple[str, ...] = ("spair", "air", "dair", "conncomp")
"""Methods of Figure 2, in the order they are run and plotted."""
LEARNED = ("spair", "air", "dair")
BOX_MODES: tuple[str, ...] = ("segment", "ink", "window")
"""Box modes every learned run is tested with (``ComparisonSettings.box_mode`` is the main one)."""

KEYS: tuple[str, ...] = ("spair_AP", "coco_AP[.1:.9]", "coco_AP[.5:.95]", "coco_AP@.5", "count_abs_error",
                         "count_01_error", "count_bias")
"""Test metrics whose mean and sd over seeds are reported."""

METRIC_DEFINITIONS = {
    "spair_AP": "SPAIR-AP: IoU > 0.1..0.9, 11-point AP per batch of 32 images, confidence 1 (the paper's protocol)",
    "coco_AP[.1:.9]": "COCO AP (101-point, ranked by score) averaged over IoU 0.1:0.1:0.9",
    "coco_AP[.5:.95]": "COCO AP averaged over IoU 0.5:0.05:0.95",
    "coco_AP@.5": "COCO AP at IoU 0.5",
    "count_abs_error": "mean |predicted - true| number of objects (0 for AIR/DAIR: they are told the count)",
    "count_01_error": "fraction of images with a wrong number of objects",
    "count_bias": "mean (predicted - true) number of objects",
}

#: CPU seconds per training step on one core (torch.set_num_threads(1), forward + backward + Adam,
#: ``time.thread_time``), measured on the 2-core development machine; the quick budget is set from
#: these (docs/comparison.md). SPAIR: batch 32 (the ``cpu`` preset), 48×48, 16 cells, any n. AIR/DAIR:
#: batch 64, 48×48, per number of steps n.
STEP_CPU_SECONDS: dict[str, dict[int, float]] = {
    "spair": {1: 0.29, 3: 0.29, 5: 0.29, 7: 0.29, 9: 0.29},
    "air": {1: 0.114, 3: 0.103, 5: 0.113, 7: 0.150, 9: 0.166},
    "dair": {1: 0.033, 3: 0.089, 5: 0.129, 7: 0.186, 9: 0.226},
}



# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class ComparisonSettings:
    """Budgets and evaluation settings of the experiment (``quick`` and ``paper`` are instances)."""

    n_train: int = param(10000, lo=1, help="training scenes per n (train digits, seed 0)")
    n_val: int = param(200, lo=1, help="validation scenes per n (val digits, seed 1): model selection and τ")
    n_test: int = param(1000, lo=1, help="test scenes per n (test digits, seed 2)")
    spair_preset: str = param("cpu", help="training preset SPAIR's config starts from")
    spair_steps: int = param(3000, lo=1, help="SPAIR: most training steps")
    spair_eval_every: int = param(250, lo=1, help="SPAIR: validation every this many steps")
    spair_patience: int = param(0, lo=0, help="SPAIR: early stopping patience in steps (0 = off)")
    spair_overrides: tuple[str, ...] = param((), help="SPAIR: extra KEY=VALUE settings of its TrainConfig")
    air_steps: int = param(2000, lo=1, help="AIR: most training steps")
    dair_steps: int = param(2000, lo=1, help="DAIR: most training steps")
    air_lr: float = param(1e-3, lo=0.0, lo_open=True, help="AIR and DAIR: Adam learning rate")
    air_batch_size: int = param(64, lo=1, help="AIR and DAIR: batch size")
    air_eval_every: int = param(250, lo=1, help="AIR and DAIR: validation every this many steps")
    air_patience: int = param(0, lo=0, help="AIR and DAIR: early stopping patience in steps (0 = off)")
    air_overrides: tuple[str, ...] = param((), help="AIR and DAIR: extra KEY=VALUE settings of their AirTrainConfig")
    stop_at_ap: float = param(0.99, lo=0.0, help="stop a training once its validation SPAIR-AP reaches this")
    box_mode: Literal["segment", "ink", "window"] = param(
        "segment", help="boxes of the learned models in the main test results (the other two are kept beside)")
    val_box_mode: Literal["segment", "ink", "window"] = param(
        "ink", help="boxes of the learned models during validation (checkpoint selection)")
    sample: Literal["mean", "hard"] = param("mean", help="inference of the learned models: means or samples")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = torch's default: all cores)")


def settings_for_scale(scale: str) -> ComparisonSettings:
    """``quick``: about 90 minutes on 2 CPU cores for 5 n × 1 seed (docs/comparison.md); ``paper``:
    the paper's budgets (64k training scenes, 1000 val/test, up to 300k steps, patience 50k)."""
    if scale == "quick":
        return ComparisonSettings()
    if scale == "paper":
        return ComparisonSettings(
            n_train=64000, n_val=1000, n_test=1000, spair_steps=300000, spair_eval_every=1000, spair_patience=50000,
            air_steps=300000, dair_steps=300000, air_lr=1e-4, air_eval_every=1000, air_patience=50000)
    raise ConfigError(f"unknown scale '{scale}' (use 'quick' or 'paper')")


def comparison_spec(n: int, split: str, n_scenes: int):
    """The :class:`~spair.data.datasets.DatasetSpec` of ``n_scenes`` 48×48 scenes with exactly ``n``
    digits from the digit split ``split`` (seed 0 / 1 / 2 for train / val / test)."""
    seed = {"train": TRAIN_SEED, "val": VAL_SEED, "test": TEST_SEED}[split]
    return scene_spec((n, n), split, seed, n_scenes)


def spair_config(n: int, settings: ComparisonSettings, seed: int):
    """SPAIR's :class:`~spair.training.config.TrainConfig` for ``n`` digits: the one place to tune it.

    The preset ``settings.spair_preset`` (``cpu``: the CPU recipe on the paper's 12-px cells) with the data replaced by the
    comparison scenes (48×48, exactly n digits, no crops), the step budget, validation schedule and
    inference settings of ``settings``, no test scenes (the driver evaluates the best checkpoint
    itself), then ``settings.spair_overrides``.
    """
    from ..training.config import TrainConfig
    from ..training.presets import get_preset

    data = to_dict(get_preset(settings.spair_preset))
    data["data"].update(scene=to_dict(comparison_spec(n, "train", 1).scene), crop=None, n_train=settings.n_train,
                        n_val=settings.n_val, train_seed=TRAIN_SEED, val_seed=VAL_SEED)
    data["test"]["n"] = 0
    cfg = from_dict(TrainConfig, data)
    return apply_overrides(cfg, [
        f"optim.max_steps={settings.spair_steps}", f"eval.every={settings.spair_eval_every}",
        f"eval.patience={settings.spair_patience}", f"eval.stop_at_ap={settings.stop_at_ap}",
        f"eval.sample={settings.sample}", f"eval.box_mode={settings.val_box_mode}", f"seed={seed}",
        f"num_threads={settings.num_threads}", *settings.spair_overrides])


def air_config(variant: str, n: int, settings: ComparisonSettings, seed: int):
    """AIR's or DAIR's :class:`~spair.training.air_trainer.AirTrainConfig` for ``n`` digits: the
    authors' run (their priors for n, batch 64, clip 1.0) with the budgets of ``settings``."""
    from ..training.air_trainer import paper_air_config

    steps = settings.air_steps if variant == "air" else settings.dair_steps
    cfg = paper_air_config(variant, n)
    return apply_overrides(cfg, [
        f"data.n_train={settings.n_train}", f"data.n_val={settings.n_val}", "test.n=0",
        f"optim.max_steps={steps}", f"optim.lr={settings.air_lr}", f"optim.batch_size={settings.air_batch_size}",
        f"eval.every={settings.air_eval_every}", f"eval.patience={settings.air_patience}",
        f"eval.stop_at_ap={settings.stop_at_ap}", f"eval.sample={settings.sample}",
        f"eval.box_mode={settings.val_box_mode}", f"seed={seed}", f"num_threads={settings.num_threads}",
        *settings.air_overrides])


def budget_estimate(settings: ComparisonSettings, n_values: Sequence[int], seeds: Sequence[int],
                    methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Training CPU time (one core) the settings ask for, from :data:`STEP_CPU_SECONDS`, in seconds
    per learned method and in total (an upper bound: early stopping only shortens runs)."""
    steps = {"spair": settings.spair_steps, "air": settings.air_steps, "dair": settings.dair_steps}
    out = {}
    for m in LEARNED:
        if m in methods:
            table = STEP_CPU_SECONDS[m]
            out[m] = len(seeds) * sum(steps[m] * table[min(table, key=lambda k: abs(k - n))] for n in n_values)
    out["total"] = sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """The scenes of one n: training (None when no training is pending), validation and test."""

    train: Any
    val: Any
    test: Any


def _data_info(n: int, settings: ComparisonSettings, cache_dir: str | Path | None) -> dict[str, Any]:
    """Cache folder name and specification of the three datasets of ``n`` digits."""
    from ..data.datasets import dataset_folder

    info = {}
    for split, count in (("train", settings.n_train), ("val", settings.n_val), ("test", settings.n_test)):
        spec = comparison_spec(n, split, count)
        info[split] = {"id": dataset_folder(spec, cache_dir).name, "spec": to_dict(spec)}
    return info


def _load_data(n: int, settings: ComparisonSettings, cache_dir: str | Path | None, need_train: bool) -> _Data:
    """The datasets of ``n`` digits from the cache (generated on first use); no training scenes
    unless ``need_train``."""
    from ..data.datasets import get_dataset

    sets = {}
    for split, count in (("train", settings.n_train), ("val", settings.n_val), ("test", settings.n_test)):
        sets[split] = get_dataset(comparison_spec(n, split, count), cache_dir=cache_dir) \
            if split != "train" or need_train else None
    return _Data(sets["train"], sets["val"], sets["test"])


def _select(metrics: dict[str, Any]) -> dict[str, Any]:
    """The reported metrics, NaN as None (JSON has no NaN)."""
    keep = {}
    for k, v in metrics.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        if isinstance(v, (int, float, list)) or v is None:
            keep[k] = v
    return keep


def _run_conncomp(n: int, run_dir: Path, data: _Data, settings: ComparisonSettings) -> dict[str, Any]:
    from ..models.conncomp import ConnCompDetector

    t0 = time.perf_counter()
    tuned = tune_tau(data.val)
    test = evaluate_conncomp(detect_scenes(ConnCompDetector(tau=tuned.tau), data.test), data.test)
    return {"tau": tuned.tau, "best_val_ap": tuned.score, "test": _select(test),
            "eval_seconds": round(time.perf_counter() - t0, 2)}


def _run_spair(cfg: Any, run_dir: Path, data: _Data, settings: ComparisonSettings, log: Log,
               progress: bool) -> dict[str, Any]:
    from ..models.io import load_model
    from ..training.evaluate import evaluate
    from ..training.trainer import Trainer

    summary = trained_summary(run_dir, cfg) or Trainer(
        cfg, run_dir, progress=progress, tensorboard=False, log=log, train_data=data.train, val_data=data.val).fit()
    t0 = time.perf_counter()
    model = load_model(run_dir / "best.pt")
    tests = {mode: evaluate(model, data.test, sample=settings.sample, box_mode=mode) for mode in BOX_MODES}
    return {**_train_record(summary), **_test_record(tests, settings), "eval_seconds": round(time.perf_counter() - t0, 2),
            "same_as": f"spair train --config {run_dir / 'config.json'} --out {run_dir}"}


def _run_air(cfg: Any, run_dir: Path, data: _Data, settings: ComparisonSettings, log: Log,
             progress: bool) -> dict[str, Any]:
    from ..models.air import load_air_model
    from ..training.air_trainer import AirTrainer, evaluate_air

    summary = trained_summary(run_dir, cfg) or AirTrainer(
        cfg, run_dir, progress=progress, log=log, train_data=data.train, val_data=data.val).fit()
    t0 = time.perf_counter()
    model = load_air_model(run_dir / "best.pt")
    tests = {mode: evaluate_air(model, data.test, sample=settings.sample, box_mode=mode) for mode in BOX_MODES}
    return {**_train_record(summary), **_test_record(tests, settings), "eval_seconds": round(time.perf_counter() - t0, 2)}


def _train_record(summary: dict[str, Any]) -> dict[str, Any]:
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "best_val_ap": summary["best_val_ap"], "best_step": summary["best_step"]}


def _test_record(tests: dict[str, dict[str, Any]], settings: ComparisonSettings) -> dict[str, Any]:
    return {"test_box_mode": settings.box_mode, "test": _select(tests[settings.box_mode]),
            **{f"test_{m}": _select(tests[m]) for m in BOX_MODES if m != settings.box_mode}}


def _needs_test(record: dict[str, Any], settings: ComparisonSettings) -> bool:
    """Whether a finished learned run's test record lacks what this driver reports (its main box
    mode, or one of the other two): then its best checkpoint is evaluated again (no training)."""
    if record.get("method") == "conncomp":
        return False
    return record.get("test_box_mode", "ink") != settings.box_mode or any(
        f"test_{m}" not in record for m in BOX_MODES if m != settings.box_mode)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def run_comparison(out: str | Path, scale: str = "quick", seeds: Sequence[int] = (0,),
                   n_values: Sequence[int] = N_DIGITS, *, methods: Sequence[str] = METHODS,
                   settings: ComparisonSettings | None = None, overrides: Sequence[str] = (),
                   cache_dir: str | Path | None = None, command: str = "", log: Log = no_log,
                   progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment (module docstring); return the contents of ``results.json``.

    ``settings`` replaces the settings of ``scale``; ``overrides`` are ``KEY=VALUE`` changes of
    them (e.g. ``"spair_steps=3000"``). ``methods`` is a subset of :data:`METHODS`. Progress goes
    to ``log``; ``progress`` shows the trainers' progress bars.
    """
    out = Path(out)
    seeds, n_values = [int(s) for s in seeds], [int(n) for n in n_values]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: expected distinct non-negative integers, got {seeds}")
    if not n_values or len(set(n_values)) != len(n_values) or min(n_values) < 1:
        raise ConfigError(f"n_values: expected distinct positive numbers of digits, got {n_values}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods: unknown {unknown} (known: {', '.join(METHODS)})" if unknown
                          else "methods: choose at least one")
    methods = [m for m in METHODS if m in methods]
    settings = apply_overrides(settings or settings_for_scale(scale), list(overrides))
    for n in n_values:
        comparison_spec(n, "test", 1).scene.check_feasible()

    t_start = time.perf_counter()
    state: dict[str, Any] = {"runs": {}, "data": {}}
    log(f"comparison ({scale}): n = {', '.join(map(str, n_values))}; seeds {', '.join(map(str, seeds))}; "
        f"methods {', '.join(methods)}; estimated training CPU time "
        f"{budget_estimate(settings, n_values, seeds, methods)['total'] / 60:.0f} min on one core")
    for n in n_values:
        jobs: list[tuple[str, int | None, Path, dict[str, Any], Any]] = []
        if "conncomp" in methods:
            cc_config = {"method": "conncomp", "n": n, "n_val": settings.n_val, "n_test": settings.n_test,
                         "tau_grid": {"lo": TAU_GRID[0], "hi": TAU_GRID[-1], "n": len(TAU_GRID)}}
            jobs.append(("conncomp", None, out / f"n{n}" / "conncomp", cc_config, None))
        for seed in seeds:
            for m in methods:
                if m == "conncomp":
                    continue
                cfg = spair_config(n, settings, seed) if m == "spair" else air_config(m, n, settings, seed)
                run_config = {"method": m, "n": n, "seed": seed, "n_test": settings.n_test,
                              "train_config": to_dict(cfg)}
                jobs.append((m, seed, out / f"n{n}" / f"seed{seed}" / m, run_config, cfg))
        state["data"][f"n{n}"] = _data_info(n, settings, cache_dir)
        pending = []
        for method, seed, run_dir, run_config, cfg in jobs:
            key = f"n{n}/{method}" + ("" if seed is None else f"/seed{seed}")
            done = finished_result(run_dir, run_config)
            if done is None:
                pending.append((key, method, seed, run_dir, run_config, cfg))
            elif _needs_test(done, settings):
                log(f"  {key}: trained; testing it with box mode '{settings.box_mode}' ({run_dir})")
                pending.append((key, method, seed, run_dir, run_config, cfg))
            else:
                log(f"  {key}: already finished ({run_dir})")
                state["runs"][key] = done
        examples = out / f"n{n}" / "examples.png"
        if not pending:
            if not examples.exists():
                test = _load_data(n, settings, cache_dir, need_train=False).test
                plot_examples(examples, n, test, state["runs"], settings)
            continue
        data = _load_data(n, settings, cache_dir, need_train=any(p[1] != "conncomp" for p in pending))
        for key, method, seed, run_dir, run_config, cfg in pending:
            log(f"  {key}: running in {run_dir}")
            if method == "conncomp":
                record = _run_conncomp(n, run_dir, data, settings)
            elif method == "spair":
                record = _run_spair(cfg, run_dir, data, settings, log, progress)
            else:
                record = _run_air(cfg, run_dir, data, settings, log, progress)
            record = {"method": method, "n": n, "seed": seed, "run": str(run_dir), **record, "config": run_config,
                      "spair_version": __version__}
            write_json_atomic(run_dir / "result.json", record)
            state["runs"][key] = record
            t = record["test"]
            log(f"  {key}: test SPAIR-AP {t['spair_AP']:.3f}, COCO AP[.1:.9] {t['coco_AP[.1:.9]']:.3f}")
            _write_results(out, scale, settings, seeds, n_values, methods, state, command, t_start, complete=False)
        plot_examples(examples, n, data.test, state["runs"], settings)
    results = _write_results(out, scale, settings, seeds, n_values, methods, state, command, t_start, complete=True)
    log(f"wrote {out / 'results.json'} and {out / 'comparison_ap.png'}")
    return results


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stats = {k: mean_sd([r["test"].get(k) for r in runs]) for k in KEYS}
    for field_ in ("test_segment", "test_window", "test_ink"):
        if any(field_ in r for r in runs):
            stats[f"{field_[5:]}_boxes_spair_AP"] = mean_sd([r[field_]["spair_AP"] for r in runs if field_ in r])
    return stats


def _write_results(out: Path, scale: str, settings: ComparisonSettings, seeds: list[int], n_values: list[int],
                   methods: list[str], state: dict[str, Any], command: str, t_start: float,
                   complete: bool) -> dict[str, Any]:
    per_n = []
    for n in n_values:
        row: dict[str, Any] = {"n_digits": n, "methods": {}}
        for m in methods:
            runs = [r for key, r in state["runs"].items() if r["n"] == n and r["method"] == m]
            if not runs:
                continue
            runs.sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
            entry = {"stats": _aggregate(runs),
                     "runs": [{k: r[k] for k in ("seed", "run", "test_box_mode", "test", "test_segment", "test_window",
                                                 "test_ink", "best_val_ap",
                                                 "best_step", "steps", "train_seconds", "eval_seconds", "tau", "same_as")
                               if k in r} for r in runs]}
            row["methods"][m] = entry
        per_n.append(row)
    train_seconds = sum(r.get("train_seconds", 0.0) for r in state["runs"].values())
    eval_seconds = sum(r.get("eval_seconds", 0.0) for r in state["runs"].values())
    results = {
        "experiment": "comparison",
        "description": "SPAIR, AIR, DAIR and ConnComp on 48x48 scenes with exactly n digits (paper section 5.1, "
                       "Figure 2): trained per n on train digits, selected on val digits, tested on unseen test digits",
        "complete": complete,
        "scale": scale,
        "command": command,
        "spair_version": __version__,
        "seeds": seeds,
        "n_digits": n_values,
        "methods": methods,
        "settings": to_dict(settings),
        "data": {"image_size": [48, 48], "object_size": 14, "max_overlap": 98.0, "digit_source": "embedded",
                 "train": {"digit_split": "train", "seed": TRAIN_SEED, "n": settings.n_train},
                 "val": {"digit_split": "val", "seed": VAL_SEED, "n": settings.n_val},
                 "test": {"digit_split": "test", "seed": TEST_SEED, "n": settings.n_test},
                 "datasets": state["data"]},
        "protocol": {
            "spair": "SPAIR trained with spair.experiments.comparison.spair_config (preset "
                     f"'{settings.spair_preset}', data replaced); best validation SPAIR-AP checkpoint tested",
            "air/dair": "the true number of digits is the number of steps (z_pres = 1), in training and test",
            "conncomp": "tau tuned per n on the validation scenes by SPAIR-AP over linspace(0.01, 3, 100), "
                        "given the true (black) background",
            "boxes": f"main results (test) with box_mode '{settings.box_mode}' for SPAIR/AIR/DAIR; the other "
                     "modes in test_segment / test_ink / test_window; validation (checkpoint selection) with "
                     f"box_mode '{settings.val_box_mode}'",
            "inference": settings.sample,
            "spread": "sd = sample standard deviation over seeds (0 with one seed; ConnComp has no seed)"},
        "metric_definitions": METRIC_DEFINITIONS,
        "budget": {"step_cpu_seconds_one_core": {m: {str(n): v for n, v in t.items()} for m, t in STEP_CPU_SECONDS.items()},
                   "estimated_training_cpu_seconds": budget_estimate(settings, n_values, seeds, methods),
                   "estimated_training_wall_seconds_two_cores": round(
                       budget_estimate(settings, n_values, seeds, methods)["total"] / TWO_CORE_SPEEDUP, 1),
                   "measured_training_seconds": round(train_seconds, 1),
                   "measured_test_evaluation_seconds": round(eval_seconds, 1),
                   "this_invocation_seconds": round(time.perf_counter() - t_start, 1)},
        "per_n": per_n,
    }
    write_json_atomic(out / "results.json", results)
    plot_comparison(results, out / "comparison_ap.png")
    return results


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------

N_EXAMPLES = 6
"""Test images per row of the examples figure."""

LABELS = {"spair": "SPAIR", "air": "AIR", "dair": "DAIR", "conncomp": "ConnComp"}
PANELS = (("spair_AP", "SPAIR-AP (paper protocol)"), ("coco_AP[.1:.9]", "COCO AP[.1:.9]"))


def plot_comparison(results: dict[str, Any], path: str | Path) -> None:
    """Figure 2 (bottom): test AP against the number of digits, one line per method, mean over
    seeds with ± sd error bars; left SPAIR-AP, right COCO AP[.1:.9]."""
    from ..viz.figures import new_figure, save_figure

    fig = new_figure(10.0, 3.8)
    markers = {"spair": "o", "air": "s", "dair": "^", "conncomp": "D"}
    n_seeds = len(results["seeds"])
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(1, 2, i + 1)
        for m in results["methods"]:
            xs, ys, es = [], [], []
            for row in results["per_n"]:
                entry = row["methods"].get(m)
                if entry is None or entry["stats"][key]["mean"] is None:
                    continue
                xs.append(row["n_digits"])
                ys.append(entry["stats"][key]["mean"])
                es.append(entry["stats"][key]["sd"])
            if xs:
                ax.errorbar(xs, ys, yerr=es if any(es) else None, marker=markers.get(m, "o"), capsize=3,
                            label=LABELS.get(m, m))
        ax.set_xticks(list(results["n_digits"]))
        ax.set_xlabel("digits per image")
        ax.set_ylabel("test AP")
        ax.set_ylim(0.0, 1.05)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    suffix = f"mean ± sd over {n_seeds} seeds" if n_seeds > 1 else "1 seed"
    fig.suptitle(f"48x48 scattered digits, {results['settings']['n_test']} test images per n ({suffix}; "
                 f"scale '{results['scale']}')", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_examples(path: str | Path, n: int, test: Any, runs: dict[str, dict[str, Any]],
                  settings: ComparisonSettings) -> None:
    """Figure 2 (top): the first test images of ``n`` digits with each method's boxes (blue) and the
    ground truth (yellow), one row per method (the run of the lowest seed)."""
    import numpy as np

    from ..models.air import AirDetector, load_air_model
    from ..models.conncomp import ConnCompDetector
    from ..models.io import load_model
    from ..models.spair_detector import SpairDetector
    from ..viz.figures import scene_grid

    k = min(N_EXAMPLES, len(test))
    images, backgrounds, counts = test.images[:k], test.backgrounds[:k], test.counts[:k]
    grid_images, preds, gts, titles = [], [], [], []
    for method in METHODS:
        mine = [r for r in runs.values() if r["n"] == n and r["method"] == method]
        if not mine:
            continue
        run = min(mine, key=lambda r: -1 if r["seed"] is None else r["seed"])
        run_dir = Path(run["run"])
        if method == "conncomp":
            dets = ConnCompDetector(tau=run["tau"]).detect(images, backgrounds=backgrounds)
        elif method == "spair":
            dets = SpairDetector(model=load_model(run_dir / "best.pt"), box_mode=settings.box_mode,
                                 sample=settings.sample, grid_shifts=1).detect(images, backgrounds)  # as evaluated
        else:
            dets = AirDetector(model=load_air_model(run_dir / "best.pt"), box_mode=settings.box_mode,
                               sample=settings.sample).detect(images, n_steps=np.asarray(counts))
        seed = "" if run["seed"] is None else f" (seed {run['seed']})"
        for i in range(k):
            grid_images.append(images[i])
            preds.append(dets[i].boxes)
            gts.append(test.boxes[i])
            titles.append(f"{LABELS[method]}{seed}" if i == 0 else "")
    if grid_images:
        scene_grid(grid_images, preds, gts, path, ncols=k, titles=titles)
