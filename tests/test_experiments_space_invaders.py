"""The Space Invaders experiment end to end on the ``tiny`` scale (a few frames, a few steps per
stage): the curriculum, results.json, the figures, resuming, and the pieces of the evaluation.

The end-to-end tests are skipped when ale-py is not installed (pip install "ale-py>=0.9").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from spair.errors import ConfigError
from spair.viz.boxes import GT_COLOUR, PRED_COLOUR
from spair.experiments import space_invaders as SI

needs_ale = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None,
                               reason="ale-py is not installed (pip install 'ale-py>=0.9')")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run shared by the tests below: (out folder, cache folder, results, log lines)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("space_invaders")
    lines: list[str] = []
    results = SI.run_space_invaders(root / "out", "tiny", seed=0, cache_dir=root / "cache", num_threads=1,
                                    device="cpu", log=lines.append)
    return root / "out", root / "cache", results, lines


@needs_ale
def test_results_file_and_figures(tiny_run):
    out, _, results, _ = tiny_run
    on_disk = json.loads((out / SI.RESULTS_FILE).read_text())
    assert on_disk == results
    test = results["test"]
    assert test["n_frames"] == 2 and test["frame_size"] == [210, 160] and test["grid"] == [18, 14]
    for which in ("reconstruction", "background_only_reconstruction"):
        for part in ("frame", "invader_rows"):
            e = test[which][part]
            assert 0.0 <= e["mse"] <= 1.0 and e["nll_per_frame"] > 0
            n_pixels = 210 * 160 if part == "frame" else (157 - 20) * 160
            assert e["nll_per_pixel"] == pytest.approx(e["nll_per_frame"] / n_pixels)
    det = test["detection_invader_rows"]
    for key in ("coco_AP@.5", "coco_AP[.1:.9]", "spair_AP", "count_abs_error", "count_01_error", "count_bias"):
        assert key in det
    assert det["n_images"] == 2 and det["n_gt"] > 20  # about 30 invaders per frame in the invader rows
    assert results["settings"]["invader_rows"]["rows"] == [20, 157]
    assert results["settings"]["pseudo_gt"] == {**results["settings"]["pseudo_gt"], "tau": 0.1, "gap": 1}
    assert results["stages"]["background"]["steps"] == 3 and results["stages"]["spair"]["steps"] == 4
    assert results["data"]["frames"] == {"train": 4, "val": 4, "test": 4}
    assert results["data"]["crops"]["train"] == 8
    assert len(results["figures"]["frames"]) == 2
    for name, colours in ((SI.FIGURE_FILE, [PRED_COLOUR]), (SI.PSEUDO_GT_FIGURE_FILE, [PRED_COLOUR, GT_COLOUR])):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            assert im.width >= 3 * 160 and im.height >= 2 * 210  # two rows of three panels of 210x160 frames
            pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
        for colour in colours:  # SPAIR's boxes (blue) and the pseudo ground truth (yellow) are drawn
            assert (np.abs(pixels - colour).max(1) <= 30).sum() > 100, (name, colour)
    assert not list(out.glob(".*.tmp"))


@needs_ale
def test_background_stage_trains_only_the_background_and_stage_two_starts_from_it(tiny_run):
    out, _, _, _ = tiny_run
    from spair.models.io import load_model
    from spair.models.spair import Spair

    stage1 = load_model(out / "background" / "last.pt").state_dict()
    torch.manual_seed(0)  # the trainer's initialization (seed 0)
    init = Spair(SI.model_config(SI.SCALES["tiny"])).state_dict()
    changed = [k for k in init if not torch.equal(init[k], stage1[k])]
    assert changed == ["bg_logit"]
    config = json.loads((out / "spair" / "config.json").read_text())
    assert config["init_from"].endswith("background/last.pt")
    assert config["optim"]["train_only"] == [] and config["model"]["background"] == "solid"
    assert config["model"]["kernel_size"] == 2
    assert config["model"]["hw_prior_mean"] == pytest.approx(np.log(0.1 / 0.9))
    stage1_config = json.loads((out / "background" / "config.json").read_text())
    assert stage1_config["optim"]["train_only"] == ["bg_logit"]


@needs_ale
def test_resume_skips_finished_stages(tiny_run, monkeypatch, capsys):
    out, cache, results, _ = tiny_run
    from spair import cli
    from spair.experiments.space_invaders_cli import add_verbs
    from spair.training import trainer

    def no_training(self):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(trainer.Trainer, "fit", no_training)
    monkeypatch.setattr(cli, "COMMANDS", [])
    add_verbs(cli.command)
    args = ["experiment", "space-invaders", "--scale", "tiny", "--out", str(out), "--cache", str(cache),
            "--threads", "1", "--device", "cpu"]
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    assert "stage 'background': already trained" in said and "stage 'spair': already trained" in said
    assert "stage 'evaluate': already done" in said

    # without results.json only the evaluation runs again, and gives the same numbers
    (out / SI.RESULTS_FILE).unlink()
    lines: list[str] = []
    again = SI.run_space_invaders(out, "tiny", cache_dir=cache, num_threads=1, device="cpu", log=lines.append)
    assert any("stage 'evaluate': " in line and "full test frames" in line for line in lines)
    assert again["test"] == results["test"]
    assert again["stages"]["spair"]["skipped"] is True

    # a finished stage trained with other settings is refused, not silently reused
    other = dataclasses.replace(SI.SCALES["tiny"], spair_steps=5)
    with pytest.raises(ConfigError, match="'spair' stage with other settings"):
        SI.run_space_invaders(out, other, cache_dir=cache, num_threads=1, device="cpu")


def test_scales_and_settings():
    assert set(SI.SCALES) == {"paper", "quick", "tiny"}
    paper = SI.SCALES["paper"]
    assert (paper.background_steps, paper.training_wheels_steps, paper.count_prior_decay_steps,
            paper.count_prior_final_odds, paper.hw_prior_std) == (10_000, 4000, 3000.0, 0.1, 0.5)
    background, spair = SI.train_configs(SI.SCALES["quick"], "results/si")
    assert background.optim.train_only == ("bg_logit",) and background.test.n == 0
    assert spair.init_from == "results/si/background/last.pt" and spair.optim.train_only == ()
    assert spair.schedule.count_prior_final_odds == 0.1 and spair.optim.max_steps == 6000
    assert spair.model == background.model and spair.model.background == "solid"
    # quick: a 16-px anchor (below the invaders' 18-px pitch) with the size prior at half of it
    assert spair.model.anchor == (16.0, 16.0) and spair.model.hw_prior_mean == 0.0
    assert SI.model_config(paper).anchor == (48.0, 48.0)
    with pytest.raises(ConfigError, match="scale"):
        SI.get_scale("huge")


def test_invader_rows_and_detection_metrics():
    boxes = np.array([[10, 10, 20, 19], [10, 20, 18, 30], [0, 150, 8, 163], [0, 152, 8, 164]], np.float32)
    assert SI.in_rows(boxes).tolist() == [False, True, True, False]  # centres 14.5, 25, 156.5, 158
    gt = [boxes, np.array([[40, 40, 48, 50]], np.float32)]
    perfect = SI.detection_metrics(gt, [np.ones(4), np.ones(1)], gt, (210, 160))
    assert perfect["coco_AP@.5"] == pytest.approx(1.0) and perfect["count_abs_error"] == 0
    assert perfect["n_gt"] == 3 and perfect["mean_gt_per_frame"] == 1.5
    # a prediction on the score rows is ignored; a missed invader counts
    preds = [np.array([[10, 10, 20, 19], [10, 20, 18, 30]], np.float32), np.zeros((0, 4), np.float32)]
    partial = SI.detection_metrics(preds, [np.ones(2), np.zeros(0)], gt, (210, 160))
    assert partial["n_pred"] == 1 and partial["count_abs_error"] == 1.0 and partial["count_bias"] == -1.0
    assert partial["coco_AP@.5"] < 1.0


def test_reconstruction_errors_and_figure_indices():
    frames = np.zeros((2, 210, 160, 3), np.uint8)
    frames[:, 30:40, 50:58] = 255
    e = SI.background_errors(frames, np.zeros(3))
    assert e["mse"] == pytest.approx(np.full(2, 80 / (210 * 160)))
    assert e["mse_rows"] == pytest.approx(np.full(2, 80 / (137 * 160)))
    assert e["nll"] == pytest.approx(np.full(2, 3 * 80 * -np.log(1e-9)), rel=1e-6)
    s = SI.summarize_errors(e, (210, 160), SI.INVADER_ROWS)
    assert s["frame"]["nll_per_pixel"] == pytest.approx(3 * 80 * -np.log(1e-9) / (210 * 160), rel=1e-6)
    assert SI.figure_indices(100, 4) == [0, 33, 66, 99]
    assert SI.figure_indices(2, 4) == [0, 1] and SI.figure_indices(0, 3) == []
