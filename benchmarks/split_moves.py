#!/usr/bin/env python
"""SPAIR-AP with and without split moves (``spair.models.split``), on *validation* scenes.

For each ``--digits`` n, scenes with exactly n digits of the validation digit split (seed ``--seed``;
48×48, 84×84 for n ≥ 15 with half as many scenes) go through ``SpairDetector`` (one grid view, deterministic
inference, refinement on) with each ``--gains`` value of ``split_min_gain`` ("off" = no split moves,
and no second refinement pass). Prints one JSON line per setting and n with SPAIR-AP, AP@0.1,
AP@0.5, AP@0.9, the number of boxes against the number of digits, and the detection time; with
``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/split_moves.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--gains off,20,30,40] [--n 512] [--seed 11] [--threads 2] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))


def val_scenes(k: int, n: int, seed: int):
    """Scenes with exactly ``k`` digits of the validation digit split: ``n`` of 48×48, or for k ≥ 15
    half as many of 84×84."""
    from spair.data.scenes import SceneConfig, generate_scenes

    size = 84 if k >= 15 else 48
    return generate_scenes(SceneConfig(image_size=(size, size), n_objects=(k, k), split="val"),
                           n if size == 48 else max(n // 2, 1), seed)


def measure(detector, scenes, k: int, setting: dict) -> dict:
    """One row for the ``k``-digit ``scenes``: ``setting``, then SPAIR-AP (and at IoU 0.1, 0.5, 0.9),
    boxes against digits and detection speed of ``detector`` on ``scenes``; printed as a JSON line."""
    from spair.metrics import spair_ap

    t0 = time.perf_counter()
    found = detector.detect(list(scenes.images))
    seconds = time.perf_counter() - t0
    ap = spair_ap([d.boxes for d in found], scenes.boxes, None)
    row = {"n_digits": k, "image_size": int(scenes.images.shape[1]),
           "n_scenes": len(scenes), **setting,
           "spair_AP": ap["AP"], "AP@0.1": ap["AP@0.1"], "AP@0.5": ap["AP@0.5"], "AP@0.9": ap["AP@0.9"],
           "boxes": int(sum(len(d) for d in found)), "digits": int(sum(len(b) for b in scenes.boxes)),
           "images_per_s": round(len(scenes) / seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def sweep_rule(checkpoint: str | None, digits: list[int], n: int, seed: int, name: str, key: str,
               settings: list[tuple[object, object]]) -> dict:
    """A row of :func:`measure` for each n in ``digits`` and each (label, rule) of ``settings``, with
    ``spair.models.spair_detector.<name>`` (which every caller reads there) replaced by ``rule``
    while measuring; the row records ``key``: label. The original rule is put back afterwards."""
    from spair.models import spair_detector as sd
    from spair.models.io import load_model

    model = load_model(checkpoint)
    original = getattr(sd, name)
    rows = []
    try:
        for k in digits:
            scenes = val_scenes(k, n, seed)
            for label, rule in settings:
                setattr(sd, name, rule)
                rows.append(measure(sd.SpairDetector(model=model, grid_shifts=1), scenes, k, {key: label}))
    finally:
        setattr(sd, name, original)
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "rows": rows}


def run(checkpoint: str | None, digits: list[int], gains: list[float | None], n: int, seed: int) -> dict:
    from spair.models.io import load_model
    from spair.models.spair_detector import SpairDetector

    model = load_model(checkpoint)
    rows = []
    for k in digits:
        scenes = val_scenes(k, n, seed)
        for gain in gains:
            rows.append(measure(SpairDetector(model=model, split_min_gain=gain, grid_shifts=1), scenes, k,
                                {"split_min_gain": "off" if gain is None else gain}))
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--gains", default="off,20,30,40")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    gains = [None if g.strip() == "off" else float(g) for g in args.gains.split(",")]
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], gains, args.n, args.seed)
    report(result, "split_min_gain", "split_moves.py", argv, args.out, digits=3)
    return 0


def report(result: dict, key: str, script: str, argv: list[str] | None, out: str | None, digits: int) -> None:
    """Record the command in ``result``, print SPAIR-AP per n and per ``key`` setting, and write
    ``result`` atomically to ``out`` (if given)."""
    from spair.io import write_json_atomic

    result["command"] = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    for k in sorted({r["n_digits"] for r in result["rows"]}):
        line = ", ".join(f"{r[key]}: {r['spair_AP']:.{digits}f}" for r in result["rows"] if r["n_digits"] == k)
        print(f"n = {k}: SPAIR-AP {line}")
    if out:
        write_json_atomic(Path(out), result)


if __name__ == "__main__":
    sys.exit(main())
