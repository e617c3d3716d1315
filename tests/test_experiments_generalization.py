"""The generalization experiment (Figure 3) on a tiny configuration: run folders, results.json, the
figures, resuming without redoing finished work, refusal of changed settings, the CLI verb; the
scene generator at 20 digits; and the consistency of box coordinates between a crop and the full
image (ground truth, ConnComp, SPAIR's geometry and a SPAIR model at the crop's cell alignment)."""

import json
import shlex

import numpy as np
import pytest
import torch

from spair import cli
from spair.config import to_dict
from spair.data.scenes import SceneConfig, generate_scenes, random_crops
from spair.errors import ConfigError
from spair.experiments import generalization
from spair.experiments.generalization import (CONDITIONS, GeneralizationSettings, budget_estimate, check_feasible,
                                              condition_name, parse_condition, run_generalization,
                                              settings_for_scale, spair_config)
from spair.experiments.generalization_cli import GENERALIZATION_WORDS, add_verbs
from spair.models.conncomp import ConnCompDetector
from spair.models.spair import Spair, SpairConfig
from spair.models.spair_detector import run_model, to_tensor, window_boxes_px
from spair.ops.render import extract_glimpses, window_origin

PNG = b"\x89PNG\r\n\x1a\n"
TINY = GeneralizationSettings(n_train=4, n_val=2, n_test=4, n_cc_val=6, max_digits=3, spair_steps=2,
                              spair_eval_every=1, spair_overrides=("optim.batch_size=4",), num_threads=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


def run(out, **kw):
    logs = []
    kw.setdefault("settings", TINY)
    results = run_generalization(out, seeds=(0, 1), conditions=("1-2", "3-4"), log=logs.append,
                                 command="spair experiment generalization", **kw)
    return results, logs


# ---------------------------------------------------------------------------------------------
# The driver end to end
# ---------------------------------------------------------------------------------------------


def test_first_run_resume_and_results(tmp_path, monkeypatch):
    out = tmp_path / "gen"
    results, logs = run(out)

    for cond in ("1-2", "3-4"):
        for seed in (0, 1):
            run_dir = out / cond / f"seed{seed}"
            assert {"result.json", "best.pt", "last.pt", "config.json", "summary.json"} <= {
                p.name for p in run_dir.iterdir()}, run_dir
            cfg = json.loads((run_dir / "config.json").read_text())
            assert cfg["data"]["scene"]["image_size"] == [84, 84] and cfg["data"]["crop"]["size"] == [48, 48]
            assert cfg["data"]["scene"]["n_objects"] == list(parse_condition(cond)) and cfg["seed"] == seed
    for n in (1, 2, 3):
        assert (out / "conncomp" / f"n{n}" / "result.json").exists()
    assert (out / "conncomp" / "global" / "result.json").exists()
    for png in ("generalization.png", "examples.png"):
        assert (out / png).read_bytes()[:8] == PNG, png

    assert json.loads((out / "results.json").read_text()) == results
    assert results["complete"] and results["experiment"] == "generalization"
    assert results["seeds"] == [0, 1] and results["conditions"] == ["1-2", "3-4"] and results["n_digits"] == [1, 2, 3]
    assert results["settings"] == to_dict(TINY) and results["command"] == "spair experiment generalization"
    assert set(results["data"]["datasets"]["test"]) == {"1", "2", "3"}
    assert results["data"]["datasets"]["3-4"]["val"]["spec"]["scene"]["split"] == "val"
    assert results["data"]["datasets"]["3-4"]["train"]["spec"]["crop"] == {"size": [48, 48], "n_per_image": 4}
    assert set(results["curves"]) == {"1-2", "3-4", "conncomp", "conncomp_global"}

    # the curves are the mean and sd over seeds of the runs' per-n test metrics
    for cond in ("1-2", "3-4"):
        curve = results["curves"][cond]
        runs = [r for r in results["runs"] if r["line"] == cond]
        assert curve["seeds"] == [0, 1] and [r["seed"] for r in runs] == [0, 1]
        for n in (1, 2, 3):
            for key in ("spair_AP", "count_abs_error", "count_01_error"):
                vals = [r["test"][str(n)][key] for r in runs]
                assert curve["mean"][key][n - 1] == pytest.approx(sum(vals) / 2)
                assert curve["sd"][key][n - 1] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
            for r in runs:
                t = r["test"][str(n)]
                assert t["n_images"] == 4 and t["n_gt"] == 4 * n and 0.0 <= t["spair_AP"] <= 1.0
                assert t["count_abs_error"] >= abs(t["count_bias"])
                assert "test_window" in r and r["test_window"][str(n)]["n_gt"] == 4 * n
        assert curve["mean"]["window_boxes_spair_AP"][0] is not None

    # ConnComp: each metric is read with the tau tuned for it, per n
    cc = results["curves"]["conncomp"]
    for rec in results["conncomp"]["per_n"]:
        n = rec["n"]
        assert set(rec["tau"]) == {"ap", "count_abs", "count_01"}
        assert all(0.01 <= t <= 3.0 for t in rec["tau"].values())
        assert cc["mean"]["spair_AP"][n - 1] == rec["test"]["ap"]["spair_AP"]
        assert cc["mean"]["count_abs_error"][n - 1] == rec["test"]["count_abs"]["count_abs_error"]
        assert cc["mean"]["count_01_error"][n - 1] == rec["test"]["count_01"]["count_01_error"]
        assert cc["tau"]["ap"][n - 1] == rec["tau"]["ap"]
    glob = results["conncomp"]["global"]
    assert results["curves"]["conncomp_global"]["mean"]["spair_AP"] == [
        glob["test"][str(n)]["ap"]["spair_AP"] for n in (1, 2, 3)]
    assert sum("running" in line for line in logs) == 4

    # a second invocation trains, tests and tunes nothing
    def forbidden(*a, **k):
        raise AssertionError("finished work was done again")

    from spair.training import trainer
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    monkeypatch.setattr(generalization, "conncomp_for_n", forbidden)
    monkeypatch.setattr(generalization, "conncomp_tune", forbidden)
    monkeypatch.setattr(generalization, "evaluate_full_images", forbidden)
    again, logs2 = run(out)
    assert sum("already finished" in line for line in logs2) == 4
    assert again["curves"] == results["curves"] and again["runs"] == results["runs"]

    # a run that finished training but not its test is tested again, without training
    monkeypatch.undo()
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    (out / "3-4" / "seed1" / "result.json").unlink()
    third, logs3 = run(out)
    assert any("3-4/seed1: running" in line for line in logs3)
    for r3, r1 in zip(third["runs"], results["runs"]):  # deterministic inference: the same numbers
        assert r3["test"] == r1["test"] and r3["test_window"] == r1["test_window"]

    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="other settings"):
        run(out, overrides=["n_test=5"])


def test_settings_configs_and_budget():
    quick, paper = settings_for_scale("quick"), settings_for_scale("paper")
    assert (quick.image_size, quick.crop_size, quick.crops_per_image, quick.max_digits) == (84, 48, 4, 20)
    assert (paper.n_train, paper.n_val, paper.n_test, paper.n_cc_val) == (25000, 1000, 1000, 1000)
    assert paper.spair_preset == "paper" and paper.spair_steps == 200000 and paper.spair_patience == 50000
    with pytest.raises(ConfigError, match="unknown scale"):
        settings_for_scale("huge")
    with pytest.raises(ConfigError, match="crop_size"):
        GeneralizationSettings(image_size=48, crop_size=60)

    cfg = spair_config("11-15", quick, seed=3)
    assert cfg.data.scene.image_size == (84, 84) and cfg.data.scene.n_objects == (11, 15)
    assert cfg.data.scene.split == "train" and cfg.data.scene.max_overlap == 98.0
    assert cfg.data.crop.size == (48, 48) and cfg.data.crop.n_per_image == 4
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.train_seed, cfg.data.val_seed) == (10000, 125, 0, 1)
    assert (cfg.seed, cfg.test.n, cfg.optim.max_steps, cfg.eval.box_mode) == (3, 0, 4000, "ink")
    # the demo preset's CPU recipe is kept
    assert (cfg.optim.lr, cfg.model.hw_prior_std, cfg.schedule.count_prior_decay_steps) == (1e-3, 2.0, 300.0)
    assert cfg.model.n_lookback == 1
    tuned = spair_config("1-5", GeneralizationSettings(spair_overrides=("optim.lr=3e-4",)), 0, ["model.n_lookback=0"])
    assert tuned.optim.lr == 3e-4 and tuned.model.n_lookback == 0

    assert parse_condition("6-10") == (6, 10) and parse_condition(" 7 ") == (7, 7) and condition_name("7") == "7-7"
    for bad in ("5-1", "a-b", "-3", "0-0", ""):
        with pytest.raises(ConfigError, match="condition"):
            parse_condition(bad)
    check_feasible(quick, CONDITIONS)  # 20 digits fit in 84x84 by the area bound
    with pytest.raises(ConfigError, match="cannot fit"):
        check_feasible(GeneralizationSettings(max_digits=80), CONDITIONS)

    # the quick budget: under an hour on 2 cores for 3 conditions x 1 seed (docs/generalization.md);
    # step costs were measured at batch 32 and scale with the preset's batch
    est = budget_estimate(quick, [1, 1, 1], conncomp=True)
    assert est["training"] == pytest.approx(3 * 4000 * 0.38 * cfg.optim.batch_size / 32)
    assert est["conncomp"] == pytest.approx(20 * (200 + 200) * 0.047)
    assert 20 * 60 < est["wall_two_cores"] < 65 * 60
    assert budget_estimate(quick, [0, 1])["training"] < budget_estimate(quick, [1, 1])["training"]


def test_generator_places_twenty_digits_in_84x84():
    """20 digits under the 98-px² summed-overlap rule: exactly 20 boxes in every image, inside it,
    and the rule holds for every placed square."""
    scenes = generate_scenes(SceneConfig(image_size=(84, 84), n_objects=(20, 20), split="test"), 60, seed=2)
    assert np.all(scenes.counts == 20)
    for boxes, place in zip(scenes.boxes, scenes.placements):
        assert boxes.min() >= 0 and boxes[:, 2:].max() <= 84
        tl = place[:, 1:].astype(np.int64)
        for j in range(1, len(tl)):
            ov = np.clip(14 - np.abs(tl[:j] - tl[j]), 0, None).prod(axis=1).sum()
            assert ov <= 98


# ---------------------------------------------------------------------------------------------
# Crop / full-image consistency of box coordinates
# ---------------------------------------------------------------------------------------------


def _scene_with_inner_digits():
    """An 84x84 scene with 8 digits, and the offset of a 48x48 crop (a multiple of the 12-px cell)."""
    scenes = generate_scenes(SceneConfig(image_size=(84, 84), n_objects=(8, 8)), 6, seed=5)
    return scenes, (24, 12)


def test_ground_truth_and_conncomp_boxes_agree_between_crop_and_full_image():
    scenes, _ = _scene_with_inner_digits()
    crops = random_crops(scenes, (48, 48), n_per_image=3, seed=0)
    detector = ConnCompDetector(tau=0.01)
    n_checked = 0
    for i in range(len(scenes)):
        full_gt = scenes.boxes[i]
        full_det = detector.detect(scenes.images[i:i + 1], backgrounds=scenes.backgrounds[i:i + 1])[0].boxes
        for j in range(3):
            k = 3 * i + j
            crop = crops.images[k]
            # the crop's offset: where its pixels sit in the full image
            oy, ox = next((y, x) for y in range(37) for x in range(37)
                          if np.array_equal(scenes.images[i, y:y + 48, x:x + 48], crop))
            offset = np.array([ox, oy, ox, oy], np.float32)
            inside = ((full_gt[:, :2] >= offset[:2]) & (full_gt[:, 2:] <= offset[:2] + 48)).all(1)
            shifted = full_gt[inside] - offset
            # ground truth: a digit wholly inside the crop keeps its box, shifted by the offset
            for b in shifted:
                assert (np.abs(crops.boxes[k] - b).max(1) == 0).any()
            # ConnComp: a component that does not touch the crop's border is found in both, shifted
            crop_det = detector.detect(crop[None], backgrounds=crops.backgrounds[k:k + 1])[0].boxes
            away = (crop_det[:, :2] > 0).all(1) & (crop_det[:, 2:] < 48).all(1)
            for b in crop_det[away]:
                assert (np.abs(full_det - (b + offset)).max(1) == 0).any()
                n_checked += 1
    assert n_checked >= 10


def test_spair_geometry_is_exact_under_cell_aligned_crops():
    """The same z_where at crop cell (i, j) and full-image cell (i + a, j + b), with the crop at
    (12a, 12b), gives the same pixel box and window origin up to the offset (exact up to float)."""
    model = Spair(SpairConfig())
    gen = torch.Generator().manual_seed(0)
    a, b = 2, 1
    z = torch.rand(5, 16, 4, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 2.0, 1.0, 1.0]) - torch.tensor(
        [0.5, 0.5, 0.0, 0.0])
    cells_crop = torch.arange(16)
    cells_full = (cells_crop // 4 + a) * 7 + cells_crop % 4 + b
    crop = model.where_to_boxes(z, cells_crop, 4, (48, 48)) * torch.tensor([48.0, 48.0, 48.0, 48.0])
    full = model.where_to_boxes(z, cells_full, 7, (84, 84)) * torch.tensor([84.0, 84.0, 84.0, 84.0])
    offset = torch.tensor([12.0 * a, 12.0 * b, 0.0, 0.0], dtype=torch.float64)  # (y_top, x_left, h, w)
    assert torch.allclose(full, crop + offset, atol=1e-9)
    yc, xc = window_origin(crop / 48.0, (48, 48), (14, 14))
    yf, xf = window_origin(full / 84.0, (84, 84), (14, 14))
    assert torch.equal(yf, yc + 12 * a) and torch.equal(xf, xc + 12 * b)


def test_glimpses_of_a_crop_are_shifted_by_at_most_half_a_pixel():
    """The authors' glimpse sampler reads x = (W − 1)·(normalized position), so the same pixel box
    is read at slightly different places in a 48-px crop and in the 84-px image: at most 0.43 px
    apart (documented in docs/generalization.md). A coordinate image makes the positions visible."""
    ys, xs = torch.meshgrid(torch.arange(84.0, dtype=torch.float64), torch.arange(84.0, dtype=torch.float64),
                            indexing="ij")
    full_img = torch.stack([xs, ys, torch.zeros_like(xs)])[None]      # channel 0 = column, 1 = row
    oy, ox = 24, 36
    crop_img = full_img[:, :, oy:oy + 48, ox:ox + 48] - torch.tensor([ox, oy, 0.0], dtype=torch.float64)[:, None, None]
    px = torch.tensor([[[6.0, 3.0, 14.0, 14.0], [20.0, 25.0, 10.0, 12.0], [30.0, 31.0, 14.0, 14.0]]],
                      dtype=torch.float64)                             # crop pixel boxes (y, x, h, w), inside the crop
    crop_g = extract_glimpses(crop_img, px / 48.0, (14, 14))
    full_g = extract_glimpses(full_img, (px + torch.tensor([oy, ox, 0.0, 0.0], dtype=torch.float64)) / 84.0, (14, 14))
    shift = full_g[:, :, :2] - torch.tensor([ox, oy], dtype=torch.float64)[:, None, None] - crop_g[:, :, :2]
    assert 0.01 < shift.abs().max() < 0.45
    # a box centred at c (pixels) is read around c·(W − 1)/W in pixel-centre units: in the full image
    # around (c + ox)·83/84, in the crop around c·47/48
    c = px[0, :, 1] + px[0, :, 3] / 2
    predicted = (c + ox) * 83 / 84 - ox - c * 47 / 48
    measured = shift[0, :, 0].mean((-1, -2))
    assert torch.allclose(measured, predicted, atol=1e-9)


@pytest.mark.parametrize("lookback", [0, 1])
def test_spair_model_boxes_agree_between_crop_and_full_image(lookback):
    """A SPAIR model on a crop at a 12-px-aligned offset and on the full image: with L = 0, every
    cell whose receptive field (rows/cols 12i .. 12i + 21) lies inside the crop infers the same
    z_where, hence the same box up to the offset (windows inside the crop agree after clipping as
    well). With L = 1 the crop's first row and column see the edge element instead of their real
    neighbours, so only the geometry (previous test) is exact."""
    torch.manual_seed(0)
    model = Spair(SpairConfig(n_lookback=lookback)).eval()
    scenes, (oy, ox) = _scene_with_inner_digits()
    a, b = oy // 12, ox // 12
    full = run_model(model, to_tensor(scenes.images))
    crop = run_model(model, to_tensor(scenes.images[:, oy:oy + 48, ox:ox + 48]))
    zf = full.z_where.reshape(-1, 7, 7, 4)[:, a:a + 3, b:b + 3]
    zc = crop.z_where.reshape(-1, 4, 4, 4)[:, :3, :3]
    px_f = (full.boxes * 84.0).reshape(-1, 7, 7, 4)[:, a:a + 3, b:b + 3]
    px_c = (crop.boxes * 48.0).reshape(-1, 4, 4, 4)[:, :3, :3]
    offset = torch.tensor([oy, ox, 0.0, 0.0])
    if lookback == 0:
        assert torch.allclose(zf, zc, atol=1e-5)
        assert torch.allclose(px_f, px_c + offset, atol=1e-3)
        wf = window_boxes_px(full).reshape(-1, 7, 7, 4)[:, a:a + 3, b:b + 3]
        wc = window_boxes_px(crop).reshape(-1, 4, 4, 4)[:, :3, :3]
        unclipped = ((wc[..., :2] > 0) & (wc[..., 2:] < 48)).all(-1)
        assert unclipped.sum() > 10
        diff = (wf - wc - torch.tensor([ox, oy, ox, oy]))[unclipped]
        assert diff.abs().max() < 1e-3
    else:
        assert not torch.allclose(zf, zc, atol=1e-5)  # the lateral context differs at the crop's edges


# ---------------------------------------------------------------------------------------------
# The command-line verb
# ---------------------------------------------------------------------------------------------


def test_cli_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.words[:1] != ("experiment",)
                                          or c.words[1] not in ("generalization", "ablation")])
    add_verbs(cli.command)
    out = tmp_path / "cli"
    argv = ["experiment", "generalization", "--conditions", "3-4", "--out", str(out), "n_train=4", "n_val=2",
            "n_test=3", "n_cc_val=3", "max_digits=2", "spair_steps=1", "spair_eval_every=1", "num_threads=1",
            "spair_overrides=[\"optim.batch_size=4\"]"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == shlex.join(["spair", *argv])
    assert results["conditions"] == ["3-4"] and results["settings"]["n_test"] == 3
    assert "SPAIR, trained on 3-4 digits: test SPAIR-AP n=1" in capsys.readouterr().out
    assert cli.main(["experiment", "generalization", "--conditions", "5-1"]) == 2
    assert cli.main(["experiment", "generalization", "--seeds", "1,1"]) == 2
    assert cli.main(["experiment", "generalization", "bogus=1", "--out", str(out)]) == 2
    assert cli.main(["experiment", "generalization", "--print-settings", "--scale", "paper"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["settings"]["n_train"] == 25000 and printed["conditions"] == ["1-5", "6-10", "11-15"]
    assert printed["estimated_cpu_seconds"]["training"] > 0
    assert GENERALIZATION_WORDS == "experiment generalization"
