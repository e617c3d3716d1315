"""``spair demo``: the main job, end to end on a 2-core laptop CPU in about nine minutes.

The demo is a list of :class:`Step` objects run in order on a shared :class:`DemoContext`:

1. **generate data**: validation and test scenes, 48×48 with exactly 5 digits (val digits, seed 1;
   test digits, seed 2), from the digits shipped with the package, saved as dataset folders
   ``data/val`` and ``data/test`` (usable with ``spair eval --data``); the training scenes of the
   preset are generated (or taken from the cache) by the trainer;
2. **train SPAIR** with the ``demo`` preset (the CPU recipe, docs/cpu-recipe.md) into ``train/``
   (checkpoints, metrics.jsonl, TensorBoard logs); running the demo again resumes or reuses it;
3. **tune ConnComp**: its threshold τ chosen on the validation scenes (``tau.json``);
4. **evaluate** both on the test scenes of unseen digits: SPAIR-AP (the paper's protocol), COCO AP,
   count errors (``metrics.json``);
5. **pictures**: test scenes with predicted (blue) and true (yellow) boxes for SPAIR and ConnComp,
   SPAIR's reconstructions, per-object glimpses and sprites, training curves;
6. **report**: ``report.md`` with the numbers and the pictures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from ..io import write_json_atomic, write_text_atomic
from .conncomp_baseline import TEST_SEED, VAL_SEED, detect_scenes, evaluate, tune_tau, write_tau_file

Log = Callable[[str], None]
Progress = Callable[..., Iterable]

N_OBJECTS = (5, 5)
GRID_IMAGES = 16


@dataclass
class DemoContext:
    """Everything the steps share: settings, values passed between steps, files written."""

    out: Path
    n_scenes: int
    preset: str = "demo"
    overrides: list[str] = field(default_factory=list)
    log: Log = print
    progress: Progress = lambda iterable, desc="": iterable  # noqa: E731
    show_training_progress: bool = True
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
        ctx.files[f"{split} scenes (48×48, 5 digits)"] = folder


def train(ctx: DemoContext) -> None:
    from ..config import apply_overrides
    from ..training.presets import get_preset
    from ..training.trainer import Trainer

    cfg = apply_overrides(get_preset(ctx.preset), ctx.overrides)
    run_dir = ctx.out / "train"
    trainer = Trainer(cfg, run_dir, progress=ctx.show_training_progress, tensorboard=True,
                      log=lambda s: ctx.log("    " + s), test_data=ctx.state["test"])
    ctx.state["train_config"] = cfg
    ctx.state["train_summary"] = trainer.fit()
    ctx.state["run_dir"] = run_dir
    ctx.files["training run (best.pt, metrics.jsonl, tb/)"] = run_dir


def tune(ctx: DemoContext) -> None:
    result = tune_tau(ctx.state["val"])
    path = ctx.out / "tau.json"
    write_tau_file(path, result, command=ctx.command,
                   dataset={"folder": "data/val", "n_images": len(ctx.state["val"])})
    ctx.state["tau"] = result.tau
    ctx.files["ConnComp tau"] = path
    ctx.log(f"    tau = {result.tau:.4f} (validation SPAIR-AP {result.score:.4f})")


def evaluate_step(ctx: DemoContext) -> None:
    from ..models.conncomp import ConnCompDetector
    from ..models.io import load_model
    from ..training.config import EvalConfig
    from ..training.evaluate import evaluate as evaluate_spair
    from ..training.evaluate import predict

    test = ctx.state["test"]
    model = load_model(ctx.state["run_dir"] / "best.pt")
    ctx.state["model"] = model
    # the trainer has already tested the best checkpoint on these scenes; reuse that unless the run's
    # evaluation settings differ from evaluate()'s defaults (the EvalConfig defaults), which this row reports
    ev, default = ctx.state["train_config"].eval, EvalConfig()
    same = all(getattr(ev, k) == getattr(default, k) for k in ("sample", "box_mode", "batch_size", "refine_steps"))
    trainer_test = ctx.state["train_summary"].get("test")
    spair = trainer_test if same and trainer_test else evaluate_spair(model, test)
    spair_paper = evaluate_spair(model, test, sample="hard", box_mode="window")
    ctx.state["spair_detections"] = predict(model, test.images[:GRID_IMAGES], backgrounds=test.backgrounds[:GRID_IMAGES])
    cc_dets = detect_scenes(ConnCompDetector(tau=ctx.state["tau"]), test, progress=ctx.progress)
    ctx.state["conncomp_detections"] = cc_dets
    conncomp = evaluate(cc_dets, test)
    metrics = {"spair": spair, "spair_paper_protocol": spair_paper, "conncomp": conncomp}
    ctx.state["metrics"] = metrics
    summary = ctx.state["train_summary"]
    path = ctx.out / "metrics.json"
    write_json_atomic(path, {
        "test_data": {"folder": "data/test", "n_images": len(test), "image_size": [48, 48], "digits": 5,
                      "digit_split": "test", "seed": TEST_SEED},
        "definitions": {
            "spair": "SPAIR, deterministic inference (means, z_pres = 1[alpha > 0]), segment boxes",
            "spair_paper_protocol": "SPAIR as the authors evaluate it: sampled latents, Bernoulli z_pres, "
                                    "sprite-window boxes",
            "conncomp": f"ConnComp with tau = {ctx.state['tau']:.4f} tuned on the validation scenes"},
        "metrics": metrics, "training": {k: summary.get(k) for k in ("steps", "train_seconds", "best_step",
                                                                       "best_val_ap")},
        "seconds": ctx.seconds, "command": ctx.command, "spair_version": __version__})
    ctx.files["test metrics"] = path
    for name, m in (("SPAIR", spair), ("SPAIR (paper protocol)", spair_paper), ("ConnComp", conncomp)):
        ctx.log(f"    {name:<22} SPAIR-AP {m['spair_AP']:.3f}  COCO AP[.1:.9] {m['coco_AP[.1:.9]']:.3f}  "
                f"AP@.5 {m['coco_AP@.5']:.3f}  count |err| {m['count_abs_error']:.3f}")


def pictures(ctx: DemoContext) -> None:
    from ..viz.figures import scene_grid
    from ..viz.model_figures import save_model_figures, training_curves

    test = ctx.state["test"]
    n = min(GRID_IMAGES, len(test))
    for name, dets in (("spair", ctx.state["spair_detections"]), ("conncomp", ctx.state["conncomp_detections"])):
        path = ctx.out / f"test_detections_{name}.png"
        scene_grid([test.images[i] for i in range(n)], [d.boxes for d in dets[:n]], test.boxes[:n], path,
                   titles=[f"{len(d)} found / {len(g)} true" for d, g in zip(dets[:n], test.boxes[:n])])
        ctx.files[f"{name}: predicted (blue) and true (yellow) boxes"] = path
    figs = save_model_figures(ctx.state["model"], test, ctx.out, n=8)
    ctx.files["SPAIR: boxes | reconstructions"] = Path(figs["boxes"])
    ctx.files["SPAIR: per-object glimpses (top) and sprites (bottom)"] = Path(figs["glimpses"])
    curves = ctx.out / "training_curves.png"
    training_curves(ctx.state["run_dir"] / "metrics.jsonl", curves)
    ctx.files["training curves"] = curves


def report(ctx: DemoContext) -> None:
    m = ctx.state["metrics"]
    s = ctx.state["train_summary"]
    rows = [("SPAIR (ours: means, segment boxes)", m["spair"]),
            ("SPAIR (paper protocol: samples, window boxes)", m["spair_paper_protocol"]),
            (f"ConnComp (tau {ctx.state['tau']:.3f})", m["conncomp"])]
    table = ["| method | SPAIR-AP | COCO AP[.1:.9] | COCO AP@.5 | count abs. error | count 0-1 error |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        table.append(f"| {name} | {r['spair_AP']:.3f} | {r['coco_AP[.1:.9]']:.3f} | {r['coco_AP@.5']:.3f} | "
                     f"{r['count_abs_error']:.3f} | {r['count_01_error']:.3f} |")
    text = f"""# spair demo report

`{ctx.command}` — SPAIR trained for {s.get('steps')} steps ({s.get('train_seconds', 0) / 60:.1f} min) with
the `{ctx.preset}` preset, best validation SPAIR-AP {s.get('best_val_ap', float('nan')):.3f} at step
{s.get('best_step')}; tested on {len(ctx.state['test'])} 48×48 scenes with 5 digits never seen in training.

{chr(10).join(table)}

SPAIR-AP is the paper's protocol (IoU > 0.1 … 0.9, 11-point AP per batch of 32, confidence 1);
COCO AP ranks boxes by presence probability. Definitions: docs/metrics.md.

![SPAIR detections](test_detections_spair.png)
![ConnComp detections](test_detections_conncomp.png)
![boxes and reconstructions](boxes_and_reconstructions.png)
![glimpses and sprites](glimpses.png)
![training curves](training_curves.png)
"""
    path = ctx.out / "report.md"
    write_text_atomic(path, text)
    ctx.files["report"] = path


STEPS: list[Step] = [
    Step("generate data", generate_data),
    Step("train SPAIR", train),
    Step("tune ConnComp tau on validation scenes", tune),
    Step("evaluate SPAIR and ConnComp on test scenes", evaluate_step),
    Step("draw pictures", pictures),
    Step("write the report", report),
]
"""The demo's stages, in order."""


def run_demo(out: str | Path, n_scenes: int = 1000, preset: str = "demo", overrides: list[str] | None = None,
             log: Log = print, progress: Progress = lambda iterable, desc="": iterable,
             command: str = "spair demo", steps: list[Step] | None = None,
             show_training_progress: bool = True) -> DemoContext:
    """Run ``steps`` (default :data:`STEPS`) writing into ``out``; return the final context."""
    ctx = DemoContext(out=Path(out), n_scenes=n_scenes, preset=preset, overrides=list(overrides or []), log=log,
                      progress=progress, command=command, show_training_progress=show_training_progress)
    t_start = time.perf_counter()
    for i, step in enumerate(steps or STEPS, start=1):
        log(f"[{i}/{len(steps or STEPS)}] {step.name}")
        t0 = time.perf_counter()
        step.run(ctx)
        ctx.seconds[step.name] = round(time.perf_counter() - t0, 1)
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; wrote:")
    width = max((len(k) for k in ctx.files), default=0)
    for what, path in ctx.files.items():
        log(f"  {what:<{width}}  {path}")
    return ctx
