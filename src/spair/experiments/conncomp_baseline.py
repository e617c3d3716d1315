"""The ConnComp baseline on the paper's comparison scenes, and the helpers ``spair`` uses to run it.

Experiment (``spair experiment conncomp``): for ``n`` in 1, 3, 5, 7, 9 digits on 48×48 images
(14-px digits, ``max_overlap`` 98 px², white on black, the paper's comparison setting):

1. validation scenes (val digits, seed 1) and test scenes (test digits, seed 2), ``n_scenes``
   each, come from the dataset cache (:func:`spair.data.datasets.get_dataset`);
2. τ is tuned per ``n`` on its validation scenes by SPAIR-AP (the paper's protocol) over the
   authors' grid ``linspace(0.01, 3.0, 100)``, and one global τ on validation scenes with 1–9
   digits (same seed and size);
3. both τ are evaluated on the test scenes of every ``n`` with SPAIR-AP, COCO AP (IoU .1:.9,
   .5:.95, .5) and the count errors; ConnComp is given each image's true background colour.

Outputs: ``results.json`` (settings, τ values and validation scores, test metrics, dataset
hashes, the command, timings) and ``conncomp_ap.png`` (AP against the number of digits).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import __version__
from ..errors import DataError
from ..io import write_json_atomic
from .runs import no_log

N_DIGITS: tuple[int, ...] = (1, 3, 5, 7, 9)
"""Numbers of digits per image of the comparison experiment."""
VAL_SEED, TEST_SEED = 1, 2
"""Seeds of the validation and test scenes (the authors' convention: train 0, val 1, test 2)."""
IMAGE_SIZE = (48, 48)
MAX_OVERLAP = 98.0
TAU_GRID: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.01, 3.0, 100))
"""The authors' τ search grid, ``linspace(0.01, 3.0, 100)``."""
PAPER_TAUS = {1: 0.01, 3: 0.01, 5: 0.02, 7: 0.6, 9: 0.52}
"""τ the authors' code selected per number of digits on its own validation data (for reference)."""

REPORTED_METRICS: tuple[str, ...] = (
    "spair_AP", "coco_AP[.1:.9]", "coco_AP[.5:.95]", "coco_AP@.5",
    "count_abs_error", "count_01_error", "count_bias", "n_images", "n_gt", "n_pred")
"""Keys of :func:`spair.metrics.evaluate_detections` kept in the results."""

Log = Callable[[str], None]
Progress = Callable[..., Iterable]


def _no_progress(iterable: Iterable, desc: str = "") -> Iterable:
    return iterable


# ---------------------------------------------------------------------------------------------
# The shipped default τ and τ files
# ---------------------------------------------------------------------------------------------


def default_tau_path() -> Path:
    """The τ file shipped with the package (``spair/models/conncomp_tau.json``)."""
    return Path(str(resources.files("spair.models").joinpath("conncomp_tau.json")))


def read_tau_file(path: str | Path) -> float:
    """τ from a file written by ``spair conncomp tune`` (errors name the file)."""
    from ..models.conncomp import load_tau

    path = Path(path)
    if not path.exists() and path == default_tau_path():
        raise DataError(f"the default ConnComp tau file is missing from the installation: {path}; "
                        "pass --tau or --tau-file")
    return load_tau(path)[0]


@dataclass
class TuneResult:
    """The outcome of a τ search: the best τ, its score, and the score of every τ tried."""

    tau: float
    metric: str
    score: float
    table: list[dict[str, float]]
    n_images: int


TUNE_METRIC_KEYS = {"ap": "AP", "count_abs": "count_abs_error", "count_01": "count_01_error"}
TUNE_METRIC_DEFINITIONS = {
    "ap": "SPAIR-AP (paper protocol, confidence 1, batches of 32), maximised",
    "count_abs": "count absolute error, minimised",
    "count_01": "count 0-1 error, minimised",
}


def tune_tau(scenes, grid: Sequence[float] = TAU_GRID, metric: str = "ap") -> TuneResult:
    """Grid search of τ on ``scenes`` (given their true backgrounds); ties go to the smallest τ."""
    from ..models.conncomp import tune_tau as search

    tau, table = search(scenes.images, scenes.boxes, scenes.backgrounds, metric=metric, grid=np.asarray(grid))
    score = next(row[TUNE_METRIC_KEYS[metric]] for row in table if row["tau"] == tau)
    return TuneResult(tau=tau, metric=metric, score=float(score), table=table, n_images=len(scenes))


def write_tau_file(path: str | Path, result: TuneResult, *, command: str, dataset: dict[str, Any],
                   seconds: float | None = None) -> None:
    """Save a tuned τ with how it was obtained (the command, the data, the whole search)."""
    from ..models.conncomp import save_tau

    info = {"metric": result.metric, "metric_definition": TUNE_METRIC_DEFINITIONS[result.metric],
            "score": result.score, "command": command, "data": dataset, "n_images": result.n_images,
            "grid": {"lo": result.table[0]["tau"], "hi": result.table[-1]["tau"], "n": len(result.table)},
            "spair_version": __version__}
    if seconds is not None:
        info["seconds"] = round(seconds, 2)
    info["table"] = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
                     for row in result.table]
    save_tau(path, result.tau, info)


# ---------------------------------------------------------------------------------------------
# Detection and evaluation of a dataset
# ---------------------------------------------------------------------------------------------


def detect_scenes(detector, scenes, progress: Progress = _no_progress, chunk: int = 256) -> list:
    """Run ``detector`` on every scene (given its true background), in chunks of ``chunk`` images."""
    out = []
    for start in progress(range(0, len(scenes), chunk)):
        stop = min(start + chunk, len(scenes))
        out.extend(detector.detect(scenes.images[start:stop], backgrounds=scenes.backgrounds[start:stop]))
    return out


def evaluate(detections: Sequence, scenes) -> dict[str, float]:
    """Every metric of :func:`spair.metrics.evaluate_detections` for detections of ``scenes``."""
    from ..metrics import evaluate_detections

    sizes = [tuple(scenes.images.shape[1:3])] * len(scenes)
    return evaluate_detections([d.boxes for d in detections], [d.scores for d in detections], scenes.boxes,
                               image_sizes=sizes)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def scene_spec(n_objects: tuple[int, int], split: str, seed: int, n_scenes: int):
    """The :class:`~spair.data.datasets.DatasetSpec` of 48×48 comparison scenes."""
    from ..data.datasets import DatasetSpec
    from ..data.scenes import SceneConfig

    scene = SceneConfig(image_size=IMAGE_SIZE, n_objects=n_objects, max_overlap=MAX_OVERLAP,
                        digit_source="embedded", split=split)
    return DatasetSpec(scene=scene, n_images=n_scenes, seed=seed)


def generate_command(spec, out: str = "DIR") -> str:
    """The ``spair data generate`` command that writes the dataset ``spec`` describes."""
    sc = spec.scene
    lo, hi = sc.n_objects
    return (f"spair data generate --out {out} --size {sc.image_size[0]},{sc.image_size[1]} "
            f"--n-objects {lo if lo == hi else f'{lo}-{hi}'} --num {spec.n_images} --split {sc.split} "
            f"--seed {spec.seed} --max-overlap {sc.max_overlap:g} --digit-source {sc.digit_source}")


def _dataset_id(spec, cache_dir: str | Path | None) -> str:
    """The cache folder name of a dataset spec (readable name + key of spec and digit file)."""
    from ..data.datasets import dataset_folder

    return dataset_folder(spec, cache_dir).name


def _select(metrics: dict[str, float]) -> dict[str, float]:
    return {k: (None if isinstance(metrics[k], float) and math.isnan(metrics[k]) else metrics[k])
            for k in REPORTED_METRICS if k in metrics}


def run_experiment(out: str | Path, n_scenes: int = 1000, cache_dir: str | Path | None = None,
                   command: str = "", log: Log = no_log, progress: Progress = _no_progress,
                   n_values: Sequence[int] = N_DIGITS) -> str:
    """Run the experiment (module docstring), write ``out/results.json`` and ``out/conncomp_ap.png``.

    Progress goes to ``log`` (one line per ``n``); returns a one-line summary of what was written.
    """
    from ..config import to_dict
    from ..data.datasets import get_dataset
    from ..models.conncomp import ConnCompDetector

    out = Path(out)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def load(n_objects: tuple[int, int], split: str, seed: int):
        spec = scene_spec(n_objects, split, seed, n_scenes)
        t0 = time.perf_counter()
        scenes = get_dataset(spec, cache_dir=cache_dir)
        timings[f"data_{split}_{n_objects[0]}-{n_objects[1]}"] = round(time.perf_counter() - t0, 3)
        return scenes, {"id": _dataset_id(spec, cache_dir), "same_as": generate_command(spec), "spec": to_dict(spec)}

    log(f"ConnComp experiment: n = {', '.join(map(str, n_values))} digits, "
        f"{n_scenes} val + {n_scenes} test scenes each")
    t0 = time.perf_counter()
    global_val, global_val_info = load((1, max(n_values)), "val", VAL_SEED)
    global_tune = tune_tau(global_val)
    timings["tune_global"] = round(time.perf_counter() - t0, 3)
    log(f"  global tau (1-{max(n_values)} digits): {global_tune.tau:.4f} (val SPAIR-AP {global_tune.score:.4f})")

    rows = []
    for n in progress(list(n_values), desc="n digits"):
        val, val_info = load((n, n), "val", VAL_SEED)
        test, test_info = load((n, n), "test", TEST_SEED)
        t0 = time.perf_counter()
        tuned = tune_tau(val)
        timings[f"tune_n{n}"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        per_n = evaluate(detect_scenes(ConnCompDetector(tau=tuned.tau), test), test)
        shared = evaluate(detect_scenes(ConnCompDetector(tau=global_tune.tau), test), test)
        timings[f"test_n{n}"] = round(time.perf_counter() - t0, 3)
        rows.append({"n_digits": n, "tau": tuned.tau, "val_spair_AP": tuned.score, "paper_tau": PAPER_TAUS.get(n),
                     "test": _select(per_n), "test_with_global_tau": _select(shared),
                     "data": {"val": val_info, "test": test_info}})
        log(f"  n={n}: tau {tuned.tau:.4f} (val SPAIR-AP {tuned.score:.4f}); test SPAIR-AP {per_n['spair_AP']:.4f}, "
            f"COCO AP[.1:.9] {per_n['coco_AP[.1:.9]']:.4f}, count abs err {per_n['count_abs_error']:.3f}")
    timings["total"] = round(time.perf_counter() - t_start, 3)

    results = {
        "experiment": "conncomp",
        "description": "ConnComp on 48x48 scenes with n digits: tau tuned on validation scenes "
                       "(per n, and one global tau on 1-9 digits), evaluated on test scenes",
        "command": command,
        "spair_version": __version__,
        "settings": {"image_size": list(IMAGE_SIZE), "object_size": 14, "max_overlap": MAX_OVERLAP,
                     "digit_source": "embedded", "n_digits": list(n_values), "n_scenes": n_scenes,
                     "val": {"digit_split": "val", "seed": VAL_SEED},
                     "test": {"digit_split": "test", "seed": TEST_SEED},
                     "tau_grid": {"lo": TAU_GRID[0], "hi": TAU_GRID[-1], "n": len(TAU_GRID)},
                     "tune_metric": TUNE_METRIC_DEFINITIONS["ap"],
                     "background": "each image's true background colour (black)",
                     "score": "ConnComp 'mass' score: m / (m + 1) of the component's summed colour difference"},
        "metric_definitions": {
            "spair_AP": "SPAIR-AP: IoU > 0.1..0.9, 11-point AP per batch of 32, confidence 1 (the paper's protocol)",
            "coco_AP[.1:.9]": "COCO AP (101-point, ranked by score) averaged over IoU 0.1:0.1:0.9",
            "coco_AP[.5:.95]": "COCO AP averaged over IoU 0.5:0.05:0.95",
            "coco_AP@.5": "COCO AP at IoU 0.5",
            "count_abs_error": "mean |predicted - true| number of objects",
            "count_01_error": "fraction of images with a wrong number of objects",
            "count_bias": "mean (predicted - true) number of objects"},
        "global_tau": {"tau": global_tune.tau, "val_spair_AP": global_tune.score, "data": global_val_info},
        "per_n": rows,
        "timings_s": timings,
    }
    write_json_atomic(out / "results.json", results)
    plot_results(results, out / "conncomp_ap.png")
    return f"wrote {out / 'results.json'} and {out / 'conncomp_ap.png'} in {timings['total']:.0f} s"


def plot_results(results: dict, path: str | Path) -> None:
    """AP against the number of digits: SPAIR-AP and COCO AP[.1:.9], per-n τ and global τ."""
    from ..viz.figures import line_plot

    rows = results["per_n"]
    x = [r["n_digits"] for r in rows]
    global_tau = f"global tau {results['global_tau']['tau']:.2f}"
    series = {
        "SPAIR-AP (tau per n)": [r["test"]["spair_AP"] for r in rows],
        "COCO AP[.1:.9] (tau per n)": [r["test"]["coco_AP[.1:.9]"] for r in rows],
        f"SPAIR-AP ({global_tau})": [r["test_with_global_tau"]["spair_AP"] for r in rows],
        f"COCO AP[.1:.9] ({global_tau})": [r["test_with_global_tau"]["coco_AP[.1:.9]"] for r in rows],
    }
    line_plot(x, series, path, xlabel="digits per image", ylabel="test AP",
              title=f"ConnComp, 48x48 scenes, {results['settings']['n_scenes']} test images per n",
              ylim=(0.0, 1.02))
