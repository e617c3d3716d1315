"""ConnComp end to end: the acceptance target through the real CLI and pycocotools, the shipped τ,
the experiment's results file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spair.experiments.conncomp_baseline import TAU_GRID, default_tau_path, generate_command, run_experiment, scene_spec

SRC = Path(__file__).resolve().parents[1] / "src"


def spair(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``python -m spair ARGS`` in a fresh interpreter (the real entry point)."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "spair", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def pycocotools_ap(annotations: Path, detections: Path) -> np.ndarray:
    """pycocotools' stats with IoU thresholds 0.1:0.1:0.9 (stats[0] = AP averaged over them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        ev = COCOeval(gt, gt.loadRes(str(detections)), "bbox")
        ev.params.iouThrs = np.linspace(0.1, 0.9, 9)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_acceptance_coco_ap_on_held_out_three_digit_scenes(tmp_path):
    """Held-out 48x48 scenes with 3 test digits (seed 3: tuning used val digits with seed 1),
    exported as PNG + annotations.json; `spair detect` with the shipped tau must reach COCO
    AP[.1:.9] >= 0.75 by pycocotools."""
    data = tmp_path / "test3"
    spair("data", "generate", "--out", data, "--split", "test", "--n-objects", "3", "--num", "200",
          "--seed", "3", "--export-png", "--quiet")
    det = tmp_path / "det.json"
    spair("detect", data / "images", "--method", "conncomp", "--out", det, "--quiet")

    results = json.loads(det.read_text())
    gt = json.loads((data / "annotations.json").read_text())
    assert len(gt["images"]) == 200 and len(gt["annotations"]) == 600
    names = {img["id"]: img["file_name"] for img in gt["images"]}
    assert all(names[r["image_id"]] == r["file_name"] for r in results)  # ids agree without --gt

    stats = pycocotools_ap(data / "annotations.json", det)
    assert stats[0] >= 0.75, f"COCO AP[.1:.9] = {stats[0]:.4f}"


def test_shipped_tau_is_the_recorded_search_result(tmp_path):
    saved = json.loads(default_tau_path().read_text())
    info = saved["info"]
    assert saved["method"] == "conncomp" and info["metric"] == "ap"
    assert info["command"] == "spair conncomp tune --data data/val-1to9 --out src/spair/models/conncomp_tau.json"
    spec = info["data"]["spec"]
    assert spec["scene"]["split"] == "val" and spec["scene"]["n_objects"] == [1, 9]
    assert spec["scene"]["image_size"] == [48, 48] and spec["n_images"] == 1000
    table = info["table"]
    assert [row["tau"] for row in table] == pytest.approx(list(TAU_GRID), abs=1e-6)
    best = max(row["AP"] for row in table)
    assert saved["tau"] == pytest.approx(next(row["tau"] for row in table if row["AP"] == best), abs=1e-6)

    # Regenerate the validation data it records and check the SPAIR-AP at the shipped tau.
    from spair.config import from_dict
    from spair.data.datasets import DatasetSpec, build_dataset, read_manifest, save_dataset
    from spair.metrics import spair_ap
    from spair.models.conncomp import ConnCompDetector

    dataset_spec = from_dict(DatasetSpec, spec)
    scenes = build_dataset(dataset_spec)
    save_dataset(tmp_path / "val", scenes, dataset_spec)
    assert read_manifest(tmp_path / "val")["content_sha256"] == info["data"]["content_sha256"]
    detections = ConnCompDetector(tau=saved["tau"]).detect(scenes.images, scenes.backgrounds)
    assert spair_ap([d.boxes for d in detections], scenes.boxes)["AP"] == pytest.approx(info["score"], abs=1e-6)


def test_experiment_writes_results_and_plot(tmp_path):
    out = tmp_path / "results"
    summary = run_experiment(out, n_scenes=40, cache_dir=tmp_path / "cache",
                             command="spair experiment conncomp --num 40", n_values=(1, 3))
    assert "results.json" in summary
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "spair experiment conncomp --num 40"
    assert [row["n_digits"] for row in results["per_n"]] == [1, 3]
    assert results["settings"]["val"] == {"digit_split": "val", "seed": 1}
    assert results["settings"]["test"] == {"digit_split": "test", "seed": 2}
    for row in results["per_n"]:
        assert row["tau"] in TAU_GRID
        assert row["test"]["n_images"] == 40 and row["test"]["n_gt"] == 40 * row["n_digits"]
        for key in ("spair_AP", "coco_AP[.1:.9]", "coco_AP[.5:.95]", "count_abs_error", "count_01_error"):
            assert 0.0 <= row["test"][key] <= 1.0 + 2 * (key == "count_abs_error")
    # single isolated digits are found almost perfectly
    assert results["per_n"][0]["test"]["coco_AP[.1:.9]"] > 0.9
    assert results["global_tau"]["tau"] in TAU_GRID
    assert (out / "conncomp_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "timings_s" in results and results["timings_s"]["total"] > 0


def test_recorded_generate_command_reproduces_the_cached_dataset(tmp_path):
    from spair.data.datasets import get_dataset, read_manifest

    spec = scene_spec((3, 3), "test", 2, 30)
    get_dataset(spec, cache_dir=tmp_path / "cache")
    cached = next((tmp_path / "cache" / "datasets").iterdir())
    command = generate_command(spec, out=str(tmp_path / "regenerated")).split()
    assert command[:3] == ["spair", "data", "generate"]
    spair(*command[1:], "--quiet")
    assert read_manifest(tmp_path / "regenerated")["content_sha256"] == read_manifest(cached)["content_sha256"]
