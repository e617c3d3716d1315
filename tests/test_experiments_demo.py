"""The demo end to end on the 'tiny' preset: every step runs, every file is written, and the
report holds the numbers of metrics.json."""

import json

import pytest

from spair.experiments.demo import STEPS, Step, run_demo


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


def test_demo_runs_every_step_and_can_be_extended(tmp_path):
    seen = []
    lines: list[str] = []
    steps = [*STEPS, Step("extra", lambda ctx: seen.append(sorted(ctx.state)))]
    out = tmp_path / "demo"
    ctx = run_demo(out, n_scenes=40, preset="tiny", overrides=["num_threads=1"], log=lines.append, steps=steps,
                   show_training_progress=False)
    assert seen and {"metrics", "tau", "test", "val", "train_summary", "model"} <= set(seen[0])
    assert [line for line in lines if line.startswith("[")] == [f"[{i}/7] {s.name}" for i, s in enumerate(steps, 1)]
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("spair", "spair_paper_protocol", "conncomp"):
        assert metrics["metrics"][method]["n_images"] == 40
        assert 0.0 <= metrics["metrics"][method]["spair_AP"] <= 1.0
    assert metrics["metrics"]["conncomp"]["spair_AP"] == pytest.approx(ctx.state["metrics"]["conncomp"]["spair_AP"])
    for name in ("tau.json", "test_detections_spair.png", "test_detections_conncomp.png",
                 "boxes_and_reconstructions.png", "glimpses.png", "training_curves.png", "report.md",
                 "data/val/manifest.json", "data/test/scenes.npz", "train/best.pt", "train/summary.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert f"{metrics['metrics']['conncomp']['spair_AP']:.3f}" in report
    # a second run reuses the finished training run instead of training again
    again = run_demo(out, n_scenes=40, preset="tiny", overrides=["num_threads=1"], log=lambda s: None,
                     show_training_progress=False)
    assert again.state["train_summary"]["steps"] == ctx.state["train_summary"]["steps"]
