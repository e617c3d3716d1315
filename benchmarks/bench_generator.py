#!/usr/bin/env python
"""Throughput of the scene generator and of random crops (single process, numpy only).

Cases:

- ``scenes_48x48_n5``: the comparison experiment's scenes, 48×48 with exactly 5 digits;
- ``scenes_84x84_n15``: the transfer experiment's densest training scenes, 84×84, 15 digits;
- ``crops_84x84_n11-15``: 84×84 scenes with 11–15 digits, 4 random 48×48 crops of each, boxes
  recomputed inside the crops (``generate_crops``); throughput counted in crops per second,
  and separately for the cropping step alone.

Each case is run ``--repeats`` times after a warm-up (which loads the digit pool); the best time
is reported. Prints a table and writes ``benchmarks/results/generator.json`` atomically.

Usage::

    PYTHONPATH=src python benchmarks/bench_generator.py [--n 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402

from spair.data.digits import load_digits  # noqa: E402
from spair.data.scenes import SceneConfig, generate_crops, generate_scenes, random_crops  # noqa: E402
from spair.io import write_json_atomic  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock timings of ``fn()``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="scenes per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (best is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generator.json")
    args = parser.parse_args(argv)

    load_digits()  # warm-up: read and resize the embedded digits once
    n = args.n
    results = {}

    cfg48 = SceneConfig(image_size=(48, 48), n_objects=(5, 5))
    t = best_time(lambda: generate_scenes(cfg48, n, seed=0), args.repeats)
    results["scenes_48x48_n5"] = {"n": n, "seconds": t, "per_second": n / t, "unit": "scenes"}

    cfg84 = SceneConfig(image_size=(84, 84), n_objects=(15, 15))
    n84 = max(n // 4, 1)
    t = best_time(lambda: generate_scenes(cfg84, n84, seed=0), args.repeats)
    results["scenes_84x84_n15"] = {"n": n84, "seconds": t, "per_second": n84 / t, "unit": "scenes"}

    cfg_crop = SceneConfig(image_size=(84, 84), n_objects=(11, 15))
    t = best_time(lambda: generate_crops(cfg_crop, n84, seed=0, crop_size=(48, 48), n_per_image=4),
                  args.repeats)
    results["crops_84x84_n11-15"] = {"n": 4 * n84, "seconds": t, "per_second": 4 * n84 / t,
                                     "unit": "48x48 crops (scene generation included)"}
    scenes = generate_scenes(cfg_crop, n84, seed=0)
    t = best_time(lambda: random_crops(scenes, (48, 48), 4, seed=1), args.repeats)
    results["crop_step_only"] = {"n": 4 * n84, "seconds": t, "per_second": 4 * n84 / t,
                                 "unit": "48x48 crops (cropping alone)"}

    report = {
        "benchmark": "scene generator throughput, one process",
        "results": results,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    for name, r in results.items():
        print(f"{name:22s} {r['per_second']:10.0f} {r['unit']}/s   ({r['n']} in {r['seconds']:.3f} s)")
    write_json_atomic(args.out, report)
    print(f"written {args.out.relative_to(HERE.parent) if args.out.is_relative_to(HERE.parent) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
