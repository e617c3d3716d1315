"""``spair demo``: the pipeline end to end, in well under a minute on a laptop CPU.

The demo is a list of :class:`Step` objects run in order on a shared :class:`DemoContext`:

1. **generate data**: validation scenes (val digits, seed 1) and test scenes (test digits,
   seed 2), 48×48 with 1–9 digits, from the digits shipped with the package; saved as dataset
   folders ``data/val`` and ``data/test`` (usable with ``spair eval --data``);
2. **tune tau**: ConnComp's threshold chosen on the validation scenes by SPAIR-AP
   (``tau.json``, readable by ``spair detect --tau-file``);
3. **detect**: ConnComp on the test scenes;
4. **evaluate**: SPAIR-AP, COCO AP and count errors (``metrics.json``);
5. **pictures**: a grid of test scenes with predicted (blue) and true (yellow) boxes
   (``test_detections.png``), like Figure 2 of the paper.

Each step reads what earlier steps left in ``ctx.state`` and records the files it writes in
``ctx.files``; a step that trains SPAIR slots in before "detect" without touching the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from ..io import write_json_atomic
from .conncomp_baseline import TEST_SEED, VAL_SEED, detect_scenes, evaluate, tune_tau, write_tau_file

Log = Callable[[str], None]
Progress = Callable[..., Iterable]

N_OBJECTS = (1, 9)
GRID_IMAGES = 16


@dataclass
class DemoContext:
    """Everything the steps share: settings, values passed between steps, files written."""

    out: Path
    n_scenes: int
    log: Log = print
    progress: Progress = lambda iterable, desc="": iterable  # noqa: E731
    command: str = "spair demo"
    state: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One stage of the demo: a name shown while it runs, and the function doing it."""

    name: str
    run: Callable[[DemoContext], None]


def generate_data(ctx: DemoContext) -> None:
    from ..data.datasets import DatasetSpec, build_dataset, save_dataset
    from ..data.scenes import SceneConfig

    for split, seed in (("val", VAL_SEED), ("test", TEST_SEED)):
        spec = DatasetSpec(scene=SceneConfig(image_size=(48, 48), n_objects=N_OBJECTS, digit_source="embedded",
                                             split=split), n_images=ctx.n_scenes, seed=seed)
        scenes = build_dataset(spec)
        folder = ctx.out / "data" / split
        save_dataset(folder, scenes, spec, extra={"command": ctx.command})
        ctx.state[split] = scenes
        ctx.files[f"{split} scenes"] = folder


def tune(ctx: DemoContext) -> None:
    result = tune_tau(ctx.state["val"])
    path = ctx.out / "tau.json"
    write_tau_file(path, result, command=ctx.command,
                   dataset={"folder": "data/val", "n_images": len(ctx.state["val"])})
    ctx.state["tau"] = result.tau
    ctx.files["tuned tau"] = path
    ctx.log(f"    tau = {result.tau:.4f} (validation SPAIR-AP {result.score:.4f})")


def detect(ctx: DemoContext) -> None:
    from ..models.conncomp import ConnCompDetector

    detector = ConnCompDetector(tau=ctx.state["tau"])
    ctx.state["detections"] = detect_scenes(detector, ctx.state["test"], progress=ctx.progress)


def evaluate_step(ctx: DemoContext) -> None:
    metrics = evaluate(ctx.state["detections"], ctx.state["test"])
    ctx.state["metrics"] = metrics
    path = ctx.out / "metrics.json"
    write_json_atomic(path, {"method": "conncomp", "tau": ctx.state["tau"], "test_data": "data/test",
                             "metrics": metrics, "command": ctx.command, "spair_version": __version__})
    ctx.files["test metrics"] = path
    ctx.log(f"    SPAIR-AP {metrics['spair_AP']:.4f}, COCO AP[.1:.9] {metrics['coco_AP[.1:.9]']:.4f}, "
            f"count abs error {metrics['count_abs_error']:.3f}")


def pictures(ctx: DemoContext) -> None:
    from ..viz.figures import scene_grid

    test = ctx.state["test"]
    n = min(GRID_IMAGES, len(test))
    detections = ctx.state["detections"][:n]
    path = ctx.out / "test_detections.png"
    scene_grid([test.images[i] for i in range(n)], [d.boxes for d in detections], test.boxes[:n], path,
               titles=[f"{len(d)} found / {len(g)} true" for d, g in zip(detections, test.boxes[:n])])
    ctx.files["picture (predicted blue, true yellow)"] = path


STEPS: list[Step] = [
    Step("generate data", generate_data),
    Step("tune tau on validation scenes", tune),
    Step("detect on test scenes", detect),
    Step("evaluate", evaluate_step),
    Step("draw pictures", pictures),
]
"""The demo's stages, in order."""


def run_demo(out: str | Path, n_scenes: int = 500, log: Log = print,
             progress: Progress = lambda iterable, desc="": iterable, command: str = "spair demo",
             steps: list[Step] | None = None) -> DemoContext:
    """Run ``steps`` (default :data:`STEPS`) writing into ``out``; return the final context."""
    ctx = DemoContext(out=Path(out), n_scenes=n_scenes, log=log, progress=progress, command=command)
    t_start = time.perf_counter()
    for i, step in enumerate(steps or STEPS, start=1):
        log(f"[{i}/{len(steps or STEPS)}] {step.name}")
        t0 = time.perf_counter()
        step.run(ctx)
        ctx.seconds[step.name] = time.perf_counter() - t0
    log(f"done in {time.perf_counter() - t_start:.1f} s; wrote:")
    width = max((len(k) for k in ctx.files), default=0)
    for what, path in ctx.files.items():
        log(f"  {what:<{width}}  {path}")
    return ctx
