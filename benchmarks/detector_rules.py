#!/usr/bin/env python
"""How the detector's post-processing rules change SPAIR-AP, for one trained checkpoint.

The model's forward pass is the same in every row; only the step from latents to reported boxes
changes (``spair.models.spair_detector``):

- ``strongest-0.05``: the rule before 2026-12-04: a segment pixel goes to the object with the most
  visible ink there, if that ink exceeds 0.05; only objects with presence probability ≥ 0.5;
- ``claim-0.01``: the same with a claim threshold of 0.01;
- ``shared``: ``claim-0.01``, and an object whose visible ink exceeds 0.5 claims the pixel even where
  another object has more (overlapping digits);
- ``shared+explain`` (today's default): ``shared``, plus the objects with probability ≥ 0.05 that explain
  at least 10 input pixels no reported object explains (``unexplained_objects``).

Duplicates are removed in every row. Scenes: 48×48 with ``--digits`` digits of the ``--split`` digit split
(seed 1 for val, 2 for test, as the demo). Prints a JSON object and, with ``--out``, writes it atomically.

Usage::

    PYTHONPATH=src python benchmarks/detector_rules.py CHECKPOINT [--split val|test] [--digits 5] [--out F]
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

RULES = {
    "strongest-0.05": dict(claim=0.05, share=2.0, explain=None),
    "claim-0.01": dict(claim=0.01, share=2.0, explain=None),
    "shared": dict(claim=0.01, share=0.5, explain=None),
    "shared+explain": dict(claim=0.01, share=0.5, explain=0.05),
}


def analyse(checkpoint: str, split: str = "test", digits: int = 5, n: int = 1000) -> dict:
    import torch

    from spair.data.scenes import SceneConfig, generate_scenes
    from spair.metrics import evaluate_detections
    from spair.models import spair_detector as sd
    from spair.models.io import load_model

    model = load_model(checkpoint).eval()
    seed = {"val": 1, "test": 2}[split]
    scenes = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(digits, digits), split=split), n, seed)
    found: dict[str, list] = {name: [] for name in RULES}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, n, 100):
            x = torch.from_numpy(scenes.images[start:start + 100]).permute(0, 3, 1, 2).float().div(255.0)
            out = sd.run_model(model, x, "mean", gen)
            prob = out.pres_prob.squeeze(-1)
            base = prob >= 0.5
            base = base & ~sd.duplicate_objects(model, out, x, base, sd.DEDUP_IOU)
            ink, has_ink = sd.ink_boxes_px(model, out)
            fallback = torch.where(has_ink[..., None], ink, sd.window_boxes_px(out))
            for name, rule in RULES.items():
                keep = base
                if rule["explain"] is not None:
                    keep = keep | sd.unexplained_objects(model, out, x, keep, rule["explain"])
                seg, has = sd.segment_boxes_px(model, out, x, keep, claim_threshold=rule["claim"],
                                               share_threshold=rule["share"])
                boxes = torch.where(has[..., None], seg, fallback)
                found[name] += [sd.Detections(boxes[b][keep[b]].numpy(), prob[b][keep[b]].numpy())
                                for b in range(len(x))]
    rows = {}
    for name, dets in found.items():
        m = evaluate_detections([d.boxes for d in dets], [d.scores for d in dets], scenes.boxes,
                                image_sizes=[(48, 48)] * n)
        rows[name] = {k: m[k] for k in ["spair_AP"] + [f"spair_AP@0.{t}" for t in range(1, 10)]
                      + ["coco_AP[.1:.9]", "count_01_error", "count_bias"]}
        rows[name]["n_pred"] = int(sum(len(d) for d in dets))
    return {"checkpoint": checkpoint, "split": split, "digits_per_scene": digits, "n_scenes": n,
            "n_gt": int(sum(len(b) for b in scenes.boxes)), "rules": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--digits", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from spair.io import write_json_atomic

    result = analyse(args.checkpoint, args.split, args.digits, args.n)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
