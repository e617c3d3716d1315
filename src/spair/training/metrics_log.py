"""The run folder's ``metrics.jsonl``: one JSON record per line, appended as training goes, and
trimmed on resume so that a resumed run writes exactly the lines an uninterrupted one would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import write_text_atomic


def append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_after(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` (written after the checkpoint being resumed; they
    will be written again) and any line cut short by a kill."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    write_text_atomic(path, "".join(k + "\n" for k in keep))
