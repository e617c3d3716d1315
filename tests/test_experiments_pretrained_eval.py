"""``spair experiment pretrained``: the evaluation of a model file on the held-out test sets."""

from __future__ import annotations

import json

import pytest
import torch

from spair.cli import main
from spair.data.datasets import get_dataset
from spair.experiments import pretrained_eval as PE
from spair.models.io import load_model, save_model
from spair.models.spair import Spair, SpairConfig
from spair.training.evaluate import evaluate

SMALL = SpairConfig(A=8, backbone_channels=16, n_backbone_features=16, n_passthrough_features=8,
                    lateral_hidden=(16,), encoder_hidden=(32,), decoder_hidden=(32,))


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(path, Spair(SMALL))
    return path


def test_results_match_a_direct_evaluation(tmp_path, model_file):
    cases = (PE.Case(48, 3), PE.Case(60, 4))
    res = PE.run_pretrained_eval(tmp_path / "out", model_file, n_scenes=12, cases=cases, cache_dir=tmp_path / "cache",
                                 log=lambda m: None)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert [(r["image_size"], r["n_digits"], r["n_scenes"]) for r in saved["rows"]] == [(48, 3, 12), (60, 4, 12)]
    model = load_model(model_file)
    for case, row in zip(cases, saved["rows"]):
        scenes = get_dataset(PE.test_spec(case, 12), tmp_path / "cache")
        assert scenes.images.shape[1:3] == (case.size, case.size)
        assert all(len(b) == case.n for b in scenes.boxes)
        direct = evaluate(model, scenes, grid_shifts=4)   # the experiment votes over 4 grid views
        for k in PE.REPORTED:
            assert row[k] == pytest.approx(direct[k], abs=1e-9), k
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert sum(line.startswith("| 48×48 | 3 |") or line.startswith("| 60×60 | 4 |") for line in table) == 2


def test_cli_verb_and_missing_checkpoint(tmp_path, capsys, model_file):
    code = main(["--quiet", "experiment", "pretrained", "--checkpoint", str(model_file), "--num", "10",
                 "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")])
    assert code == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert [(r["image_size"], r["n_digits"]) for r in rows] == [(c.size, c.n) for c in PE.DEFAULT_CASES]
    code = main(["experiment", "pretrained", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.pt" in err[0]
    assert not (tmp_path / "p" / "results.json").exists()


def test_defaults_are_the_detectors_and_the_table_names_the_split_moves():
    import inspect

    from spair.experiments.generalization import GeneralizationSettings
    from spair.models.refine import REFINE_STEPS
    from spair.models.split import SPLIT_MIN_GAIN

    params = inspect.signature(PE.run_pretrained_eval).parameters
    assert params["refine_steps"].default == REFINE_STEPS == GeneralizationSettings().refine_steps
    assert params["split_min_gain"].default == SPLIT_MIN_GAIN
    from spair.models.shifts import GRID_SHIFTS

    assert params["grid_shifts"].default == GRID_SHIFTS
    rows = [{"image_size": 48, "n_digits": 1, "n_scenes": 10, **{k: 0.5 for k in PE.REPORTED}}]
    base = {"checkpoint": "shipped", "test_seed": 2, "command": "c", "rows": rows, "refine_steps": 20}
    assert "split and removal moves: 30 nats per object" in PE.results_table({**base, "split_min_gain": 30.0})
    assert "split and removal moves: off" in PE.results_table({**base, "split_min_gain": None})
    assert "split and removal moves: off" in PE.results_table(base)   # results written before the moves existed
    assert "grid views: 4" in PE.results_table({**base, "grid_shifts": 4})
    assert "grid views: 1" in PE.results_table(base)                  # results written before the views existed
