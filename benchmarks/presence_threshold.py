#!/usr/bin/env python
"""SPAIR-AP of a checkpoint on *validation* scenes by number of digits and presence threshold.

For each ``--digits`` n, 48×48 scenes with exactly n digits of the validation digit split (seed
``--seed``, never the test scenes) go through ``SpairDetector`` (one grid view, deterministic inference, segment
boxes, duplicate removal) with each ``--min-scores`` value, with and without the unexplained-ink
completion (``explain_min_score`` 0.05 / off). Prints one line per setting and a JSON object; with
``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/presence_threshold.py [CHECKPOINT] [--digits 3,5,9]
        [--min-scores 0.3,0.4,0.5,0.6] [--n 500] [--seed 11] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))


def sweep(checkpoint: str | None, digits: list[int], min_scores: list[float], n: int, seed: int) -> dict:
    from spair.data.scenes import SceneConfig, generate_scenes
    from spair.metrics import evaluate_detections
    from spair.models.spair_detector import EXPLAIN_MIN_SCORE, SpairDetector

    det = SpairDetector(checkpoint=checkpoint, grid_shifts=1)
    rows = []
    for k in digits:
        scenes = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(k, k), split="val"), n, seed)
        for ms in min_scores:
            for explain in (EXPLAIN_MIN_SCORE, None):
                det.min_score, det.explain_min_score = ms, explain
                found = det.detect(list(scenes.images))
                m = evaluate_detections([d.boxes for d in found], [d.scores for d in found], scenes.boxes)
                row = {"digits": k, "min_score": ms, "explain_min_score": explain,
                       **{key: m[key] for key in ("spair_AP", "coco_AP[.1:.9]", "count_01_error", "count_bias")}}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "n_scenes": n, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="3,5,9")
    ap.add_argument("--min-scores", default="0.3,0.4,0.5,0.6")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from spair.io import write_json_atomic

    result = sweep(args.checkpoint, [int(v) for v in args.digits.split(",")],
                   [float(v) for v in args.min_scores.split(",")], args.n, args.seed)
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
