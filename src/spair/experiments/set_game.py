"""The game of SET (paper section 5.3, Table 1): does an image of 7 cards hold a SET?

For every seed (docs/downstream.md has the details and the budgets):

1. **Data** (spec 8.6, :mod:`spair.data.set_cards`): 48×48 images of 7 distinct overlapping cards
   on a cyan, magenta or yellow background, balanced labels; training images seed 0, validation
   seed 1, test seed 2, through the dataset cache.
2. **Stage 1**: SPAIR trained without labels on the training images (:func:`spair_stage1_config`:
   the ``cpu`` preset with the authors' SET settings: colour and alpha logit scales 1, alpha
   logit bias 1, no training wheels, a learned per-image background). Model selection by
   validation detection AP against the cards' boxes.
3. **Stage 2**: for every method (SPAIR Fixed / Unfixed, ConvNet, TrueBB) and classifier (the
   paper's LSTM-256 ``recurrent`` by default; ``mlp``, ``obj``, ``arn1``, ``arn3`` as options) a
   binary classifier trained with early stopping on validation accuracy; the test accuracy of the
   best checkpoint is reported.

``OUT/results.json`` holds the table (test accuracy, mean ± sd over seeds, per classifier and
method) next to the paper's numbers, ``OUT/table.md`` the same as a Markdown table, and each
stage-1 folder ``boxes_and_reconstructions.png`` (Figure 5: images, SPAIR's boxes, reconstructions).
Layout and resuming as in :mod:`spair.experiments.addition`: ``OUT/seed<s>/stage1_spair/`` and
``OUT/seed<s>/<method>-<classifier>/``, each with a ``result.json`` done-marker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import __version__
from ..config import apply_overrides, from_dict, param, to_dict
from ..errors import ConfigError
from ..io import write_json_atomic, write_text_atomic
from .addition import relative_config, run_spair_stage1, run_stage2, stage2_config
from .runs import TWO_CORE_SPEEDUP, finished_result, mean_sd, no_log

METHODS: tuple[str, ...] = ("spair_fixed", "spair_unfixed", "convnet", "truebb")
"""Methods of Table 1 (SPAIR in both stage-2 variants), in the order they are run and tabulated."""
CLASSIFIERS: tuple[str, ...] = ("recurrent", "mlp", "obj", "arn1", "arn3")
"""Classifiers of the authors' SET stage 2; ``recurrent`` (LSTM 256) is the paper's."""
LABELS = {"spair_fixed": "SPAIR Fixed", "spair_unfixed": "SPAIR Unfixed", "convnet": "ConvNet", "truebb": "TrueBB"}
CLASSIFIER_LABELS = {"recurrent": "LSTM 256", "mlp": "MLP over 7 slots", "obj": "object network",
                     "arn1": "ARN, 1 block", "arn3": "ARN, 3 blocks"}
PAPER_TABLE1 = {"spair": {"test_accuracy_percent": 57.9, "std_dev": 0.019},
                "convnet": {"test_accuracy_percent": 50.1, "std_dev": 0.0},
                "truebb": {"test_accuracy_percent": 57.7, "std_dev": 0.012}}
"""Table 1 of the paper as printed (accuracy in percent; the "Std. Dev." row as printed, which
reads as a fraction, i.e. 1.9 and 1.2 points); LSTM-256 classifier, 128k training images."""
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2
N_CLASSES = 2

#: CPU seconds per training step on one core (``torch.set_num_threads(1)``, forward + backward +
#: Adam, ``time.thread_time``) on the 2-core development machine (docs/downstream.md). Stage 1:
#: SPAIR batch 32 with a learned background; stage 2: batch 32, LSTM-256 classifier.
STEP_CPU_SECONDS: dict[str, float] = {"stage1_spair": 0.34, "spair_fixed": 0.0163, "spair_unfixed": 0.0314,
                                      "convnet": 0.114, "truebb": 0.016}
CLASSIFIER_STEP_CPU_SECONDS = {"recurrent": 0.0163, "mlp": 0.0048, "obj": 0.0208, "arn1": 0.0476, "arn3": 0.1194}
"""CPU seconds per stage-2 step of each classifier on a fixed SPAIR front end (whose own cost is
nil): a run with another classifier costs ``STEP_CPU_SECONDS[method]`` plus the difference."""

Log = Callable[[str], None]


@dataclass
class SetSettings:
    """Budgets and settings of the experiment (``quick`` and ``paper`` are instances)."""

    n_train: int = param(32000, lo=1, help="training images (seed 0)")
    n_val: int = param(1000, lo=1, help="validation images (seed 1): stage-2 early stopping")
    n_test: int = param(1000, lo=1, help="test images (seed 2)")
    stage1_n_val: int = param(200, lo=1, help="stage 1: the first this many validation images select the checkpoint")
    spair_preset: str = param("cpu", help="stage 1: training preset SPAIR's config starts from")
    spair_steps: int = param(3000, lo=1, help="stage 1: SPAIR's most training steps")
    spair_eval_every: int = param(250, lo=1, help="stage 1: SPAIR validation every this many steps")
    spair_patience: int = param(0, lo=0, help="stage 1: SPAIR early stopping patience in steps (0 = off)")
    spair_overrides: tuple[str, ...] = param((), help="stage 1: extra KEY=VALUE settings of SPAIR's TrainConfig")
    stage2_steps: int = param(4000, lo=1, help="stage 2: most training steps")
    stage2_lr: float = param(1e-3, lo=0.0, lo_open=True, help="stage 2: Adam learning rate")
    stage2_batch_size: int = param(32, lo=1, help="stage 2: batch size")
    stage2_eval_every: int = param(250, lo=1, help="stage 2: validation accuracy every this many steps")
    stage2_patience: int = param(3000, lo=0, help="stage 2: early stopping patience in steps (0 = off)")
    stage2_overrides: tuple[str, ...] = param((), help="stage 2: extra KEY=VALUE settings of every DownstreamConfig")
    lstm_units: int = param(256, lo=1, help="stage 2: LSTM units of the recurrent classifier (256 for SET)")
    num_threads: int = param(0, lo=0, help="torch CPU threads (0 = torch's default: all cores)")


def settings_for_scale(scale: str) -> SetSettings:
    """``quick``: about 60 minutes on 2 CPU cores for 3 seeds and the LSTM classifier
    (docs/downstream.md); ``paper``: 128k training images, stage 1 up to 200k steps (patience
    50k), stage 2 up to 200k steps (patience 20k)."""
    if scale == "quick":
        return SetSettings()
    if scale == "paper":
        return SetSettings(n_train=128000, stage1_n_val=1000, spair_steps=200000, spair_eval_every=1000,
                           spair_patience=50000, spair_preset="paper", stage2_steps=200000, stage2_lr=1e-4,
                           stage2_eval_every=1000, stage2_patience=20000)
    raise ConfigError(f"unknown scale '{scale}' (use 'quick' or 'paper')")


def set_spec(split: str, n_images: int):
    """The :class:`~spair.data.set_cards.SetSpec` of the ``split`` images (seed 0 / 1 / 2)."""
    from ..data.set_cards import SetConfig, SetSpec

    seed = {"train": TRAIN_SEED, "val": VAL_SEED, "test": TEST_SEED}[split]
    return SetSpec(cards=SetConfig(), n_images=n_images, seed=seed)


SET_STAGE1_OVERRIDES: tuple[str, ...] = (
    "model.color_logit_scale=1.0", "model.alpha_logit_scale=1.0", "model.alpha_logit_bias=1.0",
    "schedule.training_wheels_steps=0", "model.background=learn")
"""The authors' stage-1 settings for SET (spec 8.6) on top of the preset."""


def spair_stage1_config(settings: SetSettings, seed: int):
    """SPAIR's stage-1 :class:`~spair.training.config.TrainConfig` for SET: the one place to tune it.

    The preset ``settings.spair_preset`` (``cpu``: the CPU recipe on the paper's 12-px cells) with :data:`SET_STAGE1_OVERRIDES`,
    the step budget and validation schedule of ``settings``, no test scenes, then
    ``settings.spair_overrides``. The trainer is given the SET images directly; the config's
    ``data`` section only records their number and image size (its digit-scene fields are unused).
    """
    from ..training.config import TrainConfig
    from ..training.presets import get_preset

    data = to_dict(get_preset(settings.spair_preset))
    data["data"].update(crop=None, n_train=settings.n_train, n_val=settings.stage1_n_val, train_seed=TRAIN_SEED,
                        val_seed=VAL_SEED)
    data["data"]["scene"].update(image_size=[48, 48], n_objects=[7, 7], max_overlap=14 * 14 / 3.0)
    data["test"]["n"] = 0
    cfg = from_dict(TrainConfig, data)
    return apply_overrides(cfg, [
        *SET_STAGE1_OVERRIDES, f"optim.max_steps={settings.spair_steps}", f"eval.every={settings.spair_eval_every}",
        f"eval.patience={settings.spair_patience}", f"seed={seed}", f"num_threads={settings.num_threads}",
        *settings.spair_overrides])


def set_stage2_config(method: str, classifier: str, settings: SetSettings, seed: int, checkpoint: str | Path = ""):
    """The :class:`~spair.training.downstream.DownstreamConfig` of one SET stage-2 run (2 classes)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    return stage2_config(method, settings, seed, checkpoint, n_classes=N_CLASSES, classifier=classifier)


def budget_estimate(settings: SetSettings, seeds: Sequence[int], methods: Sequence[str] = METHODS,
                    classifiers: Sequence[str] = ("recurrent",)) -> dict[str, float]:
    """Training CPU seconds on one core (:data:`STEP_CPU_SECONDS`), per part and in total; an
    upper bound, since early stopping only shortens runs."""
    out: dict[str, float] = {}
    if any(m.startswith("spair") for m in methods):
        out["stage1_spair"] = len(seeds) * settings.spair_steps * STEP_CPU_SECONDS["stage1_spair"]
    extra = {c: CLASSIFIER_STEP_CPU_SECONDS[c] - CLASSIFIER_STEP_CPU_SECONDS["recurrent"] for c in classifiers}
    for m in methods:
        per_step = sum(STEP_CPU_SECONDS[m] + extra[c] for c in classifiers)
        out[m] = len(seeds) * settings.stage2_steps * per_step
    out["total"] = sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


@dataclass
class _Data:
    train: Any
    train_cards: Any
    val: Any
    val_cards: Any
    test: Any
    test_cards: Any


def _load_data(settings: SetSettings, cache_dir: str | Path | None) -> _Data:
    from ..data.set_cards import get_set_dataset
    from ..training.downstream import TaskData

    parts = {}
    for split, count in (("train", settings.n_train), ("val", settings.n_val), ("test", settings.n_test)):
        cards = get_set_dataset(set_spec(split, count), cache_dir=cache_dir)
        parts[split] = (TaskData.from_scenes(cards.scenes, cards.targets), cards)
    return _Data(parts["train"][0], parts["train"][1], parts["val"][0], parts["val"][1], parts["test"][0],
                 parts["test"][1])


def _data_info(settings: SetSettings, cache_dir: str | Path | None) -> dict[str, Any]:
    from ..data.set_cards import set_dataset_folder

    return {split: {"id": set_dataset_folder(set_spec(split, count), cache_dir).name,
                    "spec": to_dict(set_spec(split, count))}
            for split, count in (("train", settings.n_train), ("val", settings.n_val), ("test", settings.n_test))}


def run_set(out: str | Path, scale: str = "quick", seeds: Sequence[int] = (0, 1, 2), *,
            methods: Sequence[str] = METHODS, classifiers: Sequence[str] = ("recurrent",),
            settings: SetSettings | None = None, overrides: Sequence[str] = (), cache_dir: str | Path | None = None,
            command: str = "", log: Log = no_log, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment (module docstring); return the contents of ``results.json``.

    ``methods`` ⊆ :data:`METHODS`, ``classifiers`` ⊆ :data:`CLASSIFIERS`; ``settings`` replaces
    the settings of ``scale``, ``overrides`` are ``KEY=VALUE`` changes of them.
    """
    out = Path(out)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: expected distinct non-negative integers, got {seeds}")
    for what, given, known in (("methods", methods, METHODS), ("classifiers", classifiers, CLASSIFIERS)):
        unknown = [v for v in given if v not in known]
        if unknown or not given:
            raise ConfigError(f"{what}: unknown {unknown} (known: {', '.join(known)})" if unknown
                              else f"{what}: choose at least one")
    methods = [m for m in METHODS if m in methods]
    classifiers = [c for c in CLASSIFIERS if c in classifiers]
    settings = apply_overrides(settings or settings_for_scale(scale), list(overrides))
    t_start = time.perf_counter()
    state: dict[str, Any] = {"runs": {}, "stage1": {}}
    data_info = _data_info(settings, cache_dir)
    log(f"SET ({scale}): seeds {', '.join(map(str, seeds))}; methods {', '.join(methods)}; classifiers "
        f"{', '.join(classifiers)}; estimated training CPU time "
        f"{budget_estimate(settings, seeds, methods, classifiers)['total'] / 60:.0f} min on one core")
    data: _Data | None = None

    def write(complete: bool) -> dict[str, Any]:
        return _write_results(out, scale, settings, seeds, methods, classifiers, state, data_info, command, t_start,
                              complete)

    for seed in seeds:
        base = out / f"seed{seed}"
        s1_cfg, s1_dir = spair_stage1_config(settings, seed), base / "stage1_spair"
        s1_config = {"stage": "stage1_spair", "seed": seed, "n_test": settings.n_test, "train_config": to_dict(s1_cfg),
                     "data": {k: v["spec"] for k, v in data_info.items()}}
        done = finished_result(s1_dir, s1_config)
        if done is not None:
            state["stage1"][f"stage1_spair/seed{seed}"] = done
        pending = []
        for m in methods:
            for c in classifiers:
                fam = "spair" if m.startswith("spair") else None
                cfg = set_stage2_config(m, c, settings, seed, (s1_dir / "best.pt").resolve() if fam else "")
                run_config = {"method": m, "classifier": c, "seed": seed, "stage2_config": relative_config(cfg, out),
                              "data": {k: v["spec"] for k, v in data_info.items()},
                              "stage1": s1_config if fam else None}
                key = f"{m}-{c}/seed{seed}"
                run_dir = base / f"{m}-{c}"
                finished = finished_result(run_dir, run_config)
                if finished is None:
                    pending.append((key, m, c, fam, cfg, run_dir, run_config))
                else:
                    log(f"  {key}: already finished ({run_dir})")
                    state["runs"][key] = finished
        if not pending:
            continue
        if data is None:
            data = _load_data(settings, cache_dir)
        shared: dict[str, Any] = {}
        for key, m, c, fam, cfg, run_dir, run_config in pending:
            if fam and f"stage1_spair/seed{seed}" not in state["stage1"]:
                log(f"  stage1_spair/seed{seed}: training in {s1_dir}")
                val = data.val_cards.scenes.subset(np.arange(min(settings.stage1_n_val, len(data.val_cards))))
                record = run_spair_stage1(s1_cfg, s1_dir, data.train_cards.scenes, val, data.test_cards.scenes, log,
                                          progress, same_as=False)
                record = {"stage": "stage1_spair", "seed": seed, "run": str(s1_dir), **record, "config": s1_config,
                          "spair_version": __version__}
                write_json_atomic(s1_dir / "result.json", record)
                state["stage1"][f"stage1_spair/seed{seed}"] = record
                log(f"  stage1_spair/seed{seed}: val AP {record['best_val_ap']:.3f}, test SPAIR-AP "
                    f"{record['test_detection']['spair_AP']:.3f}")
            log(f"  {key}: running in {run_dir}")
            record, prepared = run_stage2(cfg, run_dir, data.train, data.val, data.test, log, progress,
                                          shared.get(fam) if fam else None)
            if fam:
                shared[fam] = prepared
            record = {"method": m, "classifier": c, "seed": seed, "run": str(run_dir), **record, "config": run_config,
                      "spair_version": __version__}
            write_json_atomic(run_dir / "result.json", record)
            state["runs"][key] = record
            log(f"  {key}: test accuracy {record['test_accuracy']:.4f} (best val {record['best_val_accuracy']:.4f})")
            write(complete=False)
    results = write(complete=True)
    log(f"wrote {out / 'results.json'} and {out / 'table.md'}")
    return results


RUN_KEYS = ("seed", "run", "test_accuracy", "best_val_accuracy", "train_accuracy", "best_step", "steps",
            "stopped_early", "mean_objects", "train_seconds", "eval_seconds")


def _write_results(out: Path, scale: str, settings: SetSettings, seeds: list[int], methods: list[str],
                   classifiers: list[str], state: dict[str, Any], data_info: dict[str, Any], command: str,
                   t_start: float, complete: bool) -> dict[str, Any]:
    table = []
    for c in classifiers:
        row: dict[str, Any] = {"classifier": c, "methods": {}}
        for m in methods:
            runs = sorted((r for r in state["runs"].values() if r["method"] == m and r["classifier"] == c),
                          key=lambda r: r["seed"])
            if runs:
                row["methods"][m] = {"stats": {"test_accuracy": mean_sd([r["test_accuracy"] for r in runs]),
                                               "best_val_accuracy": mean_sd([r["best_val_accuracy"] for r in runs])},
                                     "runs": [{k: r[k] for k in RUN_KEYS if k in r} for r in runs]}
        table.append(row)
    s1_runs = sorted(state["stage1"].values(), key=lambda r: r["seed"])
    stage1 = {"stats": {"test_spair_AP": mean_sd([r["test_detection"].get("spair_AP") for r in s1_runs]),
                        "test_count_abs_error": mean_sd([r["test_detection"].get("count_abs_error") for r in s1_runs])},
              "runs": [{k: r[k] for k in ("seed", "run", "best_val_ap", "best_step", "steps", "train_seconds",
                                          "test_detection") if k in r} for r in s1_runs]}
    every = list(state["runs"].values()) + s1_runs
    estimate = budget_estimate(settings, seeds, methods, classifiers)
    results = {
        "experiment": "set",
        "description": "the game of SET (paper section 5.3, Table 1): does a 48x48 image of 7 overlapping cards "
                       "hold a SET? Stage 1 unsupervised SPAIR, stage 2 a classifier over objects; test accuracy",
        "complete": complete,
        "scale": scale,
        "command": command,
        "spair_version": __version__,
        "seeds": seeds,
        "methods": methods,
        "classifiers": classifiers,
        "labels": {**{m: LABELS[m] for m in methods}, **{c: CLASSIFIER_LABELS[c] for c in classifiers}},
        "settings": to_dict(settings),
        "data": {"generator": "spair.data.set_cards (spec 8.6)", "image_size": [48, 48], "n_cards": 7,
                 "train": {"seed": TRAIN_SEED, "n": settings.n_train}, "val": {"seed": VAL_SEED, "n": settings.n_val},
                 "test": {"seed": TEST_SEED, "n": settings.n_test}, "datasets": data_info},
        "protocol": {
            "stage1": "SPAIR trained without labels on the training images (set_game.spair_stage1_config); "
                      "checkpoint selected by validation detection AP against the cards' boxes",
            "stage2": "binary classifier over the objects, cross-entropy, Adam, early stopping on validation "
                      "accuracy; test accuracy of the best checkpoint",
            "fixed/unfixed": "Fixed: SPAIR frozen; Unfixed: its object encoder trained by the task loss",
            "spread": "sd = sample standard deviation over seeds (0 with one seed)"},
        "paper_table1": PAPER_TABLE1,
        "table": table,
        "stage1": stage1,
        "budget": {"step_cpu_seconds_one_core": STEP_CPU_SECONDS,
                   "classifier_step_cpu_seconds_one_core": CLASSIFIER_STEP_CPU_SECONDS,
                   "estimated_training_cpu_seconds": estimate,
                   "estimated_training_wall_seconds_two_cores": round(estimate["total"] / TWO_CORE_SPEEDUP, 1),
                   "measured_training_seconds": round(sum(r.get("train_seconds", 0.0) for r in every), 1),
                   "measured_evaluation_seconds": round(sum(r.get("eval_seconds", 0.0) for r in every), 1),
                   "this_invocation_seconds": round(time.perf_counter() - t_start, 1)},
    }
    results["markdown"] = markdown_table(results)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "table.md", results["markdown"] + "\n")
    return results


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats or stats["mean"] is None:
        return "–"
    text = f"{100 * stats['mean']:.1f}"
    if stats["n"] > 1:
        text += f" ± {100 * stats['sd']:.1f}"
    return f"{text} ({stats['n']})"


def markdown_table(results: dict[str, Any]) -> str:
    """Table 1: test accuracy in percent, mean ± sd over seeds (number of seeds), one row per
    classifier and one column per method, and the paper's row."""
    methods = results["methods"]
    lines = ["| Classifier | " + " | ".join(LABELS[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for row in results["table"]:
        cells = [_cell(row["methods"].get(m, {}).get("stats", {}).get("test_accuracy")) for m in methods]
        lines.append(f"| {CLASSIFIER_LABELS[row['classifier']]} | " + " | ".join(cells) + " |")
    paper = {"spair_fixed": "spair", "spair_unfixed": "spair", "convnet": "convnet", "truebb": "truebb"}
    cells = []
    for m in methods:
        p = PAPER_TABLE1[paper[m]]
        cells.append(f"{p['test_accuracy_percent']:.1f} (sd {p['std_dev']:g})")
    lines.append("| paper, Table 1 (LSTM 256, 128k images) | " + " | ".join(cells) + " |")
    n_train = results["settings"]["n_train"]
    lines += ["", f"Test accuracy in percent on {results['settings']['n_test']} test images, mean ± sd over seeds "
                  f"(number of seeds); {n_train} training images; scale '{results['scale']}'. The paper reports one "
                  "SPAIR column; both stage-2 variants are shown here. Chance is 50 % (balanced classes)."]
    return "\n".join(lines)
