"""``spair experiment pretrained``: how well a SPAIR model detects digits out of the box.

The model (by default the one shipped in the package) is run, unchanged, on held-out scenes of test
digits:

- 48×48 scenes with exactly n = 1, 3, 5, 7, 9 digits (the comparison's scenes, seed 2);
- full 84×84 scenes with exactly 20 digits (the generalization experiment's hardest case, seed 2).

The detector refines the reported objects' latents on each image (``refine_steps``, 20 by default;
0 turns it off) and, with refinement, splits an object that two objects explain better by more than
``split_min_gain`` nats (30 by default; None turns it off); with ``grid_shifts`` = 4 (the default, as
in ``spair detect``) it does all this on the image at four offsets of the cell grid and keeps the
objects at least two of the views find (:mod:`spair.models.shifts`; 8: eight offsets; 1: the image alone). Each is
scored with SPAIR-AP (the paper's protocol), SPAIR-AP ranked by presence probability, COCO AP and the count errors. ``results.json`` and ``results.md`` (a table) are written into ``out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..io import write_json_atomic, write_text_atomic
from ..models.shifts import GRID_SHIFTS

Log = Callable[[str], None]

TEST_SEED = 2
REPORTED = ("spair_AP", "spair_ranked_AP", "coco_AP[.1:.9]", "coco_AP@.5", "count_abs_error", "count_01_error",
            "count_bias")


@dataclass(frozen=True)
class Case:
    """One test set: ``n`` digits on ``size``-pixel square images."""

    size: int
    n: int

    @property
    def name(self) -> str:
        return f"{self.size}x{self.size}, n={self.n}"


DEFAULT_CASES = (Case(48, 1), Case(48, 3), Case(48, 5), Case(48, 7), Case(48, 9), Case(84, 20))


def test_spec(case: Case, n_scenes: int):
    from ..data.datasets import DatasetSpec
    from ..data.scenes import SceneConfig

    scene = SceneConfig(image_size=(case.size, case.size), n_objects=(case.n, case.n), digit_source="embedded",
                        split="test")
    return DatasetSpec(scene=scene, n_images=n_scenes, seed=TEST_SEED)


def run_pretrained_eval(out: str | Path, checkpoint: str | Path | None = None, n_scenes: int = 1000,
                        cases: tuple[Case, ...] = DEFAULT_CASES, cache_dir: str | Path | None = None,
                        num_threads: int = 0, refine_steps: int = 20, split_min_gain: float | None = 30.0,
                        grid_shifts: int = GRID_SHIFTS, command: str = "spair experiment pretrained",
                        log: Log = print) -> dict[str, Any]:
    import torch

    from ..data.datasets import get_dataset
    from ..models.io import PRETRAINED, load_model
    from ..training.evaluate import evaluate

    if num_threads:
        torch.set_num_threads(num_threads)
    out = Path(out)
    model = load_model(checkpoint)
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        scenes = get_dataset(test_spec(case, n_scenes), cache_dir)
        metrics = evaluate(model, scenes, refine_steps=refine_steps, split_min_gain=split_min_gain,
                           grid_shifts=grid_shifts)
        row = {"image_size": case.size, "n_digits": case.n, "n_scenes": len(scenes),
               **{k: float(metrics[k]) for k in REPORTED}, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(f"{case.name}: SPAIR-AP {row['spair_AP']:.3f}, ranked {row['spair_ranked_AP']:.3f}, "
            f"COCO AP {row['coco_AP[.1:.9]']:.3f}, count 0-1 error {row['count_01_error']:.3f}")
    results = {"format": 1, "spair_version": __version__, "command": command,
               "checkpoint": "shipped" if checkpoint is None else Path(checkpoint).name,
               "checkpoint_file": (PRETRAINED if checkpoint is None else Path(checkpoint)).name,
               "test_seed": TEST_SEED, "digit_split": "test", "refine_steps": refine_steps,
               "split_min_gain": split_min_gain if refine_steps else None, "grid_shifts": grid_shifts, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", results_table(results))
    return results


def results_table(results: dict[str, Any]) -> str:
    gain = results.get("split_min_gain")
    split = "off" if gain is None else f"{gain:g} nats per object"
    lines = [f"Model: {results['checkpoint']}; held-out scenes of test digits (seed {results['test_seed']}); "
             f"refinement steps: {results.get('refine_steps', 0)}; split and removal moves: {split}; "
             f"grid views: {results.get('grid_shifts', 1)}; "
             f"`{results['command']}`", "",
             "| image | n digits | scenes | SPAIR-AP | SPAIR-AP (ranked) | COCO AP[.1:.9] | COCO AP@.5 | "
             "count abs. error | count 0-1 error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['image_size']}×{r['image_size']} | {r['n_digits']} | {r['n_scenes']} | "
                     f"{r['spair_AP']:.3f} | {r['spair_ranked_AP']:.3f} | {r['coco_AP[.1:.9]']:.3f} | "
                     f"{r['coco_AP@.5']:.3f} | {r['count_abs_error']:.3f} | {r['count_01_error']:.3f} |")
    return "\n".join(lines) + "\n"
