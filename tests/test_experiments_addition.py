"""The addition experiment on a tiny configuration: run folders, results.json and the figure, a
resumed run that skips finished work, refusal of changed settings, the configs, and the CLI verb."""

import json

import numpy as np
import pytest

from spair import cli
from spair.config import to_dict
from spair.errors import ConfigError
from spair.experiments import addition
from spair.experiments.addition import (METHODS, AdditionSettings, addition_spec, air_stage1_config, budget_estimate,
                                        default_sizes, run_addition, settings_for_scale, spair_stage1_config,
                                        stage2_config, sum_targets)
from spair.experiments.addition_cli import COMMAND_WORDS, add_verbs, parse_sizes


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


TINY = AdditionSettings(n_val=8, n_test=8, stage1_n_val=4, spair_steps=2, spair_eval_every=1,
                        spair_overrides=("optim.batch_size=4",), air_steps=2, air_batch_size=4, air_eval_every=2,
                        stage2_steps=4, stage2_eval_every=2, stage2_batch_size=4, num_threads=1)


def run(out, **kw):
    logs = []
    kw.setdefault("settings", TINY)
    kw.setdefault("sizes", (8, 16))
    results = run_addition(out, seeds=(0,), log=logs.append, command="spair experiment addition", **kw)
    return results, logs


def test_first_run_and_resumed_run(tmp_path, monkeypatch):
    out = tmp_path / "add"
    results, logs = run(out)
    for size in (8, 16):
        base = out / f"size{size}" / "seed0"
        for m in METHODS:
            assert {"result.json", "best.pt", "last.pt", "config.json", "summary.json"} <= {
                p.name for p in (base / m).iterdir()}, m
        for stage in ("stage1_spair", "stage1_air"):
            assert (base / stage / "result.json").exists() and (base / stage / "best.pt").exists()
        assert (base / "stage1_spair" / "boxes_and_reconstructions.png").exists()
    assert json.loads((out / "results.json").read_text()) == results
    assert results["complete"] and results["sizes"] == [8, 16] and results["methods"] == list(METHODS)
    assert results["settings"] == to_dict(TINY) and results["data"]["test"]["n"] == 8
    assert 0 < results["data"]["test"]["majority_class_accuracy"] <= 1
    assert (out / "addition_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in results["per_size"]:
        for m in METHODS:
            entry = row["methods"][m]
            (r,) = entry["runs"]
            assert r["seed"] == 0 and 0 <= r["test_accuracy"] <= 1 and r["steps"] == 4
            assert entry["stats"]["test_accuracy"] == {"mean": r["test_accuracy"], "sd": 0.0, "n": 1}
        assert row["methods"]["truebb"]["runs"][0]["mean_objects"] == 5.0     # the true boxes
        assert row["methods"]["convnet"]["runs"][0]["mean_objects"] == 16.0   # every cell
        assert row["methods"]["air_fixed"]["runs"][0]["mean_objects"] == 5.0  # 5 steps
        for fam in ("spair", "air"):
            (s1,) = row["stage1"][fam]["runs"]
            assert s1["steps"] == 2 and 0 <= s1["test_detection"]["spair_AP"] <= 1
    # stage 1 trains on the first `size` training scenes; the stage-2 runs read its best checkpoint
    s1 = json.loads((out / "size16" / "seed0" / "stage1_spair" / "config.json").read_text())
    assert s1["data"]["n_train"] == 16 and s1["data"]["scene"]["n_objects"] == [5, 5]
    cfg = json.loads((out / "size16" / "seed0" / "spair_unfixed" / "config.json").read_text())
    assert cfg["front_end"]["checkpoint"] == str((out / "size16" / "seed0" / "stage1_spair" / "best.pt").resolve())
    done = json.loads((out / "size16" / "seed0" / "spair_unfixed" / "result.json").read_text())
    assert done["config"]["stage2_config"]["front_end"]["checkpoint"] == "size16/seed0/stage1_spair/best.pt"
    assert sum("running" in line for line in logs) == 2 * len(METHODS)

    # a second invocation trains nothing
    def forbidden(*a, **k):
        raise AssertionError("a finished run was run again")

    from spair.training import air_trainer, downstream, trainer
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    monkeypatch.setattr(air_trainer.AirTrainer, "fit", forbidden)
    monkeypatch.setattr(downstream.DownstreamTrainer, "fit", forbidden)
    again, logs2 = run(out)
    assert sum("already finished" in line for line in logs2) == 2 * len(METHODS)
    assert again["per_size"] == results["per_size"]
    monkeypatch.undo()

    # a stage-2 run whose result was lost is evaluated again from its checkpoints, without training
    (out / "size8" / "seed0" / "truebb" / "result.json").unlink()
    monkeypatch.setattr(downstream.DownstreamTrainer, "train_step", forbidden)
    third, logs3 = run(out)
    assert any("size8/truebb/seed0: running" in line for line in logs3)
    keys = ("test_accuracy", "best_val_accuracy", "train_accuracy", "best_step", "steps", "mean_objects")
    (before,), (after,) = (r["per_size"][0]["methods"]["truebb"]["runs"] for r in (results, third))
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}


def test_changed_settings_are_refused_and_subsets_work(tmp_path):
    out = tmp_path / "add"
    results, _ = run(out, sizes=(8,), methods=("truebb",))
    assert list(results["per_size"][0]["methods"]) == ["truebb"] and results["per_size"][0]["stage1"] == {}
    assert not (out / "size8" / "seed0" / "stage1_spair").exists()
    with pytest.raises(ConfigError, match="other settings"):
        run(out, sizes=(8,), methods=("truebb",), overrides=["stage2_lr=0.01"])
    with pytest.raises(ConfigError, match="unknown"):
        run(out, methods=("vae",))
    with pytest.raises(ConfigError, match="sizes"):
        run(out, sizes=(8, 8))


def test_settings_configs_and_budget():
    quick, paper = settings_for_scale("quick"), settings_for_scale("paper")
    assert default_sizes("paper") == (1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)
    assert default_sizes("quick") == (1000, 4000, 16000)
    assert paper.stage2_patience == 10000 and paper.spair_patience == 50000 and paper.spair_steps == 200000
    with pytest.raises(ConfigError):
        settings_for_scale("huge")
    # the quick budget: about 60-90 minutes on the 2-core machine (docs/downstream.md)
    est = budget_estimate(quick, default_sizes("quick"), (0,))
    assert 50 * 60 < est["total"] / addition.TWO_CORE_SPEEDUP < 85 * 60
    assert set(est) == {"stage1_spair", "stage1_air", *METHODS, "total"}

    cfg = spair_stage1_config(4000, quick, seed=3)
    assert cfg.data.scene.n_objects == (5, 5) and cfg.data.crop is None and cfg.data.n_train == 4000
    assert (cfg.seed, cfg.optim.max_steps, cfg.test.n, cfg.model.hw_prior_std) == (3, 3000, 0, 2.0)  # demo preset
    assert spair_stage1_config(1000, AdditionSettings(spair_overrides=("optim.lr=3e-4",)), 0).optim.lr == 3e-4
    a = air_stage1_config(1000, quick, seed=1)
    assert (a.model.scale_prior_mean, a.model.scale_prior_std, a.model.shift_prior_std) == (-2.944, 0.75, 0.5)
    assert a.data.n_train == 1000 and not a.model.halting and a.optim.lr == 1e-3
    s2 = stage2_config("conncomp", quick, 0)
    assert s2.front_end.glimpse_shape == (21, 21) and s2.front_end.conncomp_tau == 0.02
    assert s2.classifier.kind == "recurrent" and s2.classifier.lstm_units == 128 and s2.classifier.n_classes == 46
    s2 = stage2_config("spair_unfixed", quick, 0, "x/best.pt")
    assert (s2.front_end.kind, s2.front_end.mode, s2.front_end.checkpoint) == ("spair", "unfixed", "x/best.pt")
    assert stage2_config("truebb", quick, 0).front_end.glimpse_shape == (14, 14)
    with pytest.raises(ConfigError):
        stage2_config("vae", quick, 0)


def test_targets_are_digit_sums():
    from spair.data.datasets import build_dataset

    scenes = build_dataset(addition_spec("val", 20))
    targets = sum_targets(scenes)
    assert all(len(lab) == 5 and t == lab.sum() for lab, t in zip(scenes.labels, targets))
    assert targets.dtype == np.int64 and 0 <= targets.min() and targets.max() <= 45


def test_cli_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.words != tuple(COMMAND_WORDS.split())])
    add_verbs(cli.command)
    assert parse_sizes("1k,2000") == [1000, 2000]
    out = tmp_path / "cli"
    args = ["experiment", "addition", "--sizes", "8", "--methods", "truebb,conncomp", "--out", str(out), "n_val=8",
            "n_test=8", "stage2_steps=2", "stage2_eval_every=1", "stage2_batch_size=4", "num_threads=1"]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "spair " + " ".join(args)
    assert results["settings"]["stage2_steps"] == 2 and results["methods"] == ["truebb", "conncomp"]
    assert "8 training images: test accuracy truebb" in capsys.readouterr().out
    assert cli.main(["experiment", "addition", "--sizes", "1k,1k"]) == 2
    assert cli.main(["experiment", "addition", "bogus=1", "--out", str(out)]) == 2
    assert cli.main(["experiment", "addition", "--print-settings", "--scale", "paper"]) == 0
    assert '"stage2_patience": 10000' in capsys.readouterr().out
