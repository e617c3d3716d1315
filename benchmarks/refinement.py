#!/usr/bin/env python
"""SPAIR-AP with and without test-time refinement of the latents, on *validation* scenes.

For each ``--digits`` n, 48×48 scenes with exactly n digits of the validation digit split (seed
``--seed``; 84×84 for n ≥ 15) go through ``SpairDetector`` (one grid view, deterministic inference, segment boxes,
duplicate removal, unexplained-ink completion) with each ``--steps`` value of ``refine_steps``
(``spair.models.refine``; 0 = off), and, with ``--sweep``, the refinement's other settings around
their defaults (learning rate, box std, z_what prior weight) at the default step count. Prints one
JSON line per setting with SPAIR-AP, AP@0.5, AP@0.9 and the detection time, and a summary; with
``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/refinement.py [CHECKPOINT] [--digits 3,5,9] [--steps 0,10,20,30]
        [--sweep] [--n 512] [--seed 11] [--threads 1] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

SWEEP = ({"lr": 0.05}, {"lr": 0.15}, {"box_std_px": 1.5}, {"box_std_px": 3.0}, {"what_prior": 0.5},
         {"what_prior": 2.0})


def run(checkpoint: str | None, digits: list[int], steps: list[int], sweep: bool, n: int, seed: int) -> dict:
    import numpy as np

    from spair.data.scenes import SceneConfig, generate_scenes
    from spair.metrics import spair_ap
    from spair.models import refine, spair_detector
    from spair.models.io import load_model

    model = load_model(checkpoint)
    scenes = {}
    for k in digits:
        size = 84 if k >= 15 else 48
        scenes[k] = generate_scenes(SceneConfig(image_size=(size, size), n_objects=(k, k), split="val"),
                                    n if size == 48 else max(n // 2, 1), seed)
    settings = [(s, {}) for s in steps] + ([(refine.REFINE_STEPS, kw) for kw in SWEEP] if sweep else [])
    rows = []
    original = spair_detector.refine_latents
    try:
        for s, kw in settings:
            spair_detector.refine_latents = functools.partial(original, **kw)
            det = spair_detector.SpairDetector(model=model, refine_steps=s, grid_shifts=1)
            for k, sc in scenes.items():
                t0 = time.perf_counter()
                found = det.detect(list(sc.images))
                seconds = time.perf_counter() - t0
                m = spair_ap([d.boxes for d in found], sc.boxes)
                row = {"digits": k, "image_size": int(sc.images.shape[1]), "refine_steps": s, **kw,
                       "spair_AP": m["AP"], "AP@0.5": m["AP@0.5"], "AP@0.9": m["AP@0.9"],
                       "seconds": round(seconds, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        spair_detector.refine_latents = original
    summary = {}
    for s, kw in settings:
        key = f"steps={s}" + "".join(f",{a}={b}" for a, b in kw.items())
        vals = [r["spair_AP"] for r in rows if r["refine_steps"] == s and all(r.get(a) == b for a, b in kw.items())
                and (kw or not any(a in r for a in ("lr", "box_std_px", "what_prior")))]
        summary[key] = float(np.mean(vals))
    print(json.dumps({"mean SPAIR-AP over n": summary}), flush=True)
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "n_scenes_48": n, "rows": rows,
            "mean_spair_AP": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="3,5,9")
    ap.add_argument("--steps", default="0,10,20,30")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from spair.io import write_json_atomic

    torch.set_num_threads(args.threads)
    result = run(args.checkpoint, [int(v) for v in args.digits.split(",")],
                 [int(v) for v in args.steps.split(",")], args.sweep, args.n, args.seed)
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
