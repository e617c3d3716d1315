"""Run folders shared by the experiment drivers: done markers, finished trainings, summaries.

Every experiment trains many runs, each in its own folder with a ``result.json`` done marker, so
that a rerun skips what is finished and resumes what was cut short. The helpers here are the pieces
every driver needs for that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..config import to_dict
from ..errors import ConfigError
from ..io import read_json

Log = Callable[[str], None]

TWO_CORE_SPEEDUP = 1.7
"""Wall-time speedup of a training step with 2 torch threads over 1 thread: SPAIR's demo run took
0.169 s per step with 2 threads on the same machine against 0.29 CPU-s on one."""


def no_log(message: str) -> None:
    """Default ``log``: say nothing."""


def finished_result(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's result when it finished with ``config``; None when it has not finished."""
    from ..training.checkpoint import config_differences

    path = run_dir / "result.json"
    if not path.exists():
        return None
    result = read_json(path, "run result")
    diff = config_differences(result.get("config", {}), config)
    if diff:
        raise ConfigError(f"{path} was produced with other settings ({', '.join(diff[:5])}); "
                          "use another --out folder")
    return result


def trained_summary(run_dir: Path, cfg: Any) -> dict[str, Any] | None:
    """The trainer's summary when the run already finished training with ``cfg`` (its evaluation by
    the driver was cut short): training is not resumed, since a resumed run that had stopped early
    would train on until its next validation."""
    from ..training.checkpoint import config_differences

    paths = [run_dir / name for name in ("config.json", "summary.json", "best.pt", "last.pt")]
    if not all(p.exists() for p in paths):
        return None
    if config_differences(read_json(paths[0], "run config"), to_dict(cfg)):
        return None  # the trainer itself refuses the folder with a clear message
    return read_json(paths[1], "run summary")


def mean_sd(values: list[float]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "n": len(vals)}
