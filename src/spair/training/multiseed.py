"""Several seeds of one configuration: the mean, the spread and the success rate.

Unsupervised detectors succeed on some seeds and fail on others; a single number hides that. Each
seed trains into ``<out>/seed<S>`` (resumable like any run; a finished run is not trained again),
then ``<out>/seeds_summary.json`` records every run's test metrics, their mean and sample standard
deviation, and the fraction of runs whose test SPAIR-AP reaches ``success_ap``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from ..config import apply_overrides
from ..io import read_json, write_json_atomic
from .config import TrainConfig
from .trainer import Trainer

KEYS = ("spair_AP", "coco_AP[.1:.9]", "coco_AP@.5", "count_abs_error", "count_01_error")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def train_seeds(cfg: TrainConfig, seeds: list[int], out: str | os.PathLike, success_ap: float = 0.9,
                progress: bool = True, tensorboard: bool = True, log: Callable[[str], None] = print,
                command: str = "") -> dict[str, Any]:
    out = Path(out)
    runs = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        summary_path = run_dir / "summary.json"
        seed_cfg = apply_overrides(cfg, [f"seed={seed}"])
        if summary_path.exists() and (run_dir / "last.pt").exists():
            summary = read_json(summary_path, "run summary")
            if summary.get("steps", 0) >= seed_cfg.optim.max_steps and "test" in summary:
                log(f"seed {seed}: already trained ({run_dir})")
                runs.append({"seed": seed, **{k: summary["test"][k] for k in KEYS}, "run": str(run_dir),
                             "train_seconds": summary.get("train_seconds")})
                continue
        log(f"seed {seed}: training into {run_dir}")
        summary = Trainer(seed_cfg, run_dir, progress=progress, tensorboard=tensorboard, log=log).fit()
        if "test" not in summary:
            raise ValueError("multi-seed runs need test scenes (test.n > 0)")
        runs.append({"seed": seed, **{k: summary["test"][k] for k in KEYS}, "run": str(run_dir),
                     "train_seconds": summary.get("train_seconds")})
    stats = {}
    for k in KEYS:
        m, sd = _mean_sd([r[k] for r in runs])
        stats[k] = {"mean": m, "sd": sd}
    successes = sum(r["spair_AP"] >= success_ap for r in runs)
    report = (f"{len(runs)} seeds: test SPAIR-AP {stats['spair_AP']['mean']:.3f} ± {stats['spair_AP']['sd']:.3f} "
              f"(sd), COCO AP[.1:.9] {stats['coco_AP[.1:.9]']['mean']:.3f} ± {stats['coco_AP[.1:.9]']['sd']:.3f}; "
              f"{successes}/{len(runs)} runs reach SPAIR-AP ≥ {success_ap}")
    summary = {"command": command, "seeds": seeds, "runs": runs, "stats": stats, "success_ap": success_ap,
               "successes": successes, "success_rate": successes / len(runs), "report": report}
    write_json_atomic(out / "seeds_summary.json", summary)
    return summary
