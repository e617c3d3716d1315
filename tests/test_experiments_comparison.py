"""The comparison experiment on a tiny configuration: run folders, results.json, the figure, a
resumed run that skips finished work, refusal of changed settings, and the CLI verb."""

import json

import pytest

from spair import cli
from spair.config import to_dict
from spair.errors import ConfigError
from spair.experiments import comparison
from spair.experiments.comparison import (ComparisonSettings, air_config, budget_estimate, run_comparison,
                                          settings_for_scale, spair_config)
from spair.experiments.comparison_cli import COMMAND_WORDS, add_verbs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


TINY = ComparisonSettings(n_train=32, n_val=8, n_test=8, spair_steps=2, spair_eval_every=1,
                          spair_overrides=("optim.batch_size=4",), air_steps=2, dair_steps=3, air_batch_size=4,
                          air_eval_every=2, num_threads=1)


def run(out, **kw):
    logs = []
    kw.setdefault("settings", TINY)
    results = run_comparison(out, seeds=(0, 1), n_values=(1, 2), log=logs.append, command="spair experiment comparison",
                             **kw)
    return results, logs


def test_first_run_and_resumed_run(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    results, logs = run(out)

    # every run has its folder and done-marker
    for n in (1, 2):
        assert (out / f"n{n}" / "conncomp" / "result.json").exists()
        for seed in (0, 1):
            for m in ("spair", "air", "dair"):
                run_dir = out / f"n{n}" / f"seed{seed}" / m
                assert {"result.json", "best.pt", "last.pt", "config.json", "summary.json"} <= {
                    p.name for p in run_dir.iterdir()}, run_dir
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    assert results["complete"] and results["seeds"] == [0, 1] and results["n_digits"] == [1, 2]
    assert results["methods"] == ["spair", "air", "dair", "conncomp"]
    assert results["settings"] == to_dict(TINY) and results["command"] == "spair experiment comparison"
    assert results["data"]["test"] == {"digit_split": "test", "seed": 2, "n": 8}
    assert set(results["data"]["datasets"]["n2"]) == {"train", "val", "test"}
    assert results["data"]["datasets"]["n2"]["val"]["spec"]["scene"]["n_objects"] == [2, 2]
    for png in (out / "comparison_ap.png", out / "n1" / "examples.png", out / "n2" / "examples.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    for row in results["per_n"]:
        n = row["n_digits"]
        for m in ("spair", "air", "dair"):
            entry = row["methods"][m]
            aps = [r["test"]["spair_AP"] for r in entry["runs"]]
            assert [r["seed"] for r in entry["runs"]] == [0, 1] and all(0 <= ap <= 1 for ap in aps)
            stats = entry["stats"]["spair_AP"]
            assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(aps) / 2)
            assert stats["sd"] == pytest.approx(abs(aps[0] - aps[1]) / 2 ** 0.5)
            for r in entry["runs"]:  # main boxes: segments; the ink and window boxes beside them
                assert r["test_box_mode"] == "segment" and "test_segment" not in r and r["test"]["n_images"] == 8
                assert r["test_ink"]["n_images"] == r["test_window"]["n_images"] == 8
        steps = {m: row["methods"][m]["runs"][0]["steps"] for m in ("spair", "air", "dair")}
        assert steps == {"spair": 2, "air": 2, "dair": 3}
        for r in row["methods"]["air"]["runs"] + row["methods"]["dair"]["runs"]:
            assert r["test"]["count_abs_error"] == 0.0 and r["test"]["n_pred"] == 8 * n  # told the count
        cc = row["methods"]["conncomp"]
        assert len(cc["runs"]) == 1 and cc["runs"][0]["seed"] is None and 0.01 <= cc["runs"][0]["tau"] <= 3.0
        assert cc["stats"]["spair_AP"]["sd"] == 0.0
    spair_run = results["per_n"][0]["methods"]["spair"]["runs"][0]
    assert spair_run["same_as"].startswith("spair train --config ")
    assert sum("running" in line for line in logs) == 2 * (1 + 2 * 3)

    # a second invocation trains and evaluates nothing
    def forbidden(*a, **k):
        raise AssertionError("a finished run was run again")

    from spair.training import air_trainer, trainer
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    monkeypatch.setattr(air_trainer.AirTrainer, "fit", forbidden)
    monkeypatch.setattr(comparison, "_run_conncomp", forbidden)
    (out / "n1" / "examples.png").unlink()  # a missing figure is drawn again from the finished runs
    again, logs2 = run(out)
    assert sum("already finished" in line for line in logs2) == 2 * (1 + 2 * 3)
    assert again["per_n"] == results["per_n"] and (out / "n1" / "examples.png").exists()

    # an interrupted evaluation (trained, no result.json) is evaluated without training again
    (out / "n2" / "seed1" / "air" / "result.json").unlink()
    third, logs3 = run(out)
    assert any("n2/air/seed1: running" in line for line in logs3)
    assert third["per_n"][1]["methods"]["air"]["runs"][1]["test"] == results["per_n"][1]["methods"]["air"]["runs"][1]["test"]

    # a run tested by an older driver (main boxes 'ink', no segment boxes) is tested again, not retrained
    path = out / "n1" / "seed0" / "spair" / "result.json"
    old = json.loads(path.read_text())
    old_style = {k: v for k, v in old.items() if k not in ("test_box_mode", "test_ink")}
    path.write_text(json.dumps({**old_style, "test": old["test_ink"]}))
    fourth, logs4 = run(out)
    assert sum("testing it with box mode 'segment'" in line for line in logs4) == 1
    assert json.loads(path.read_text())["test_box_mode"] == "segment"
    again_run, first_run = (r["per_n"][0]["methods"]["spair"]["runs"][0] for r in (fourth, results))
    assert {k: again_run[k] for k in ("test", "test_ink", "test_window", "steps", "best_step")} == {
        k: first_run[k] for k in ("test", "test_ink", "test_window", "steps", "best_step")}


def test_changed_settings_are_refused_and_subsets_work(tmp_path):
    out = tmp_path / "cmp"
    results = run_comparison(out, seeds=(0,), n_values=(3,), methods=("conncomp",), settings=TINY)
    assert list(results["per_n"][0]["methods"]) == ["conncomp"]
    with pytest.raises(ConfigError, match="other settings"):
        run_comparison(out, seeds=(0,), n_values=(3,), methods=("conncomp",), settings=TINY, overrides=["n_test=9"])
    with pytest.raises(ConfigError, match="unknown"):
        run_comparison(out, methods=("vae",), settings=TINY)
    with pytest.raises(ConfigError, match="seeds"):
        run_comparison(out, seeds=(0, 0), settings=TINY)


def test_settings_and_configs():
    quick, paper = settings_for_scale("quick"), settings_for_scale("paper")
    assert (paper.n_train, paper.n_val, paper.n_test, paper.air_lr) == (64000, 1000, 1000, 1e-4)
    assert paper.spair_steps == paper.air_steps == 300000 and paper.spair_patience == paper.air_patience == 50000
    # the quick budget: about 116 CPU-minutes on one core for 5 n × 1 seed, about 70 wall-minutes of
    # training on 2 cores (docs/comparison.md)
    est = budget_estimate(quick, (1, 3, 5, 7, 9), (0,))
    assert est == {"spair": 4350.0, "air": 1292.0, "dair": 1326.0, "total": 6968.0}
    assert est["total"] / comparison.TWO_CORE_SPEEDUP < 75 * 60
    with pytest.raises(ConfigError):
        settings_for_scale("huge")

    cfg = spair_config(7, quick, seed=3)
    assert cfg.data.scene.n_objects == (7, 7) and cfg.data.scene.image_size == (48, 48) and cfg.data.crop is None
    assert (cfg.data.n_train, cfg.data.train_seed, cfg.data.val_seed, cfg.seed) == (10000, 0, 1, 3)
    assert cfg.optim.max_steps == quick.spair_steps and cfg.test.n == 0 and cfg.data.scene.split == "train"
    tuned = spair_config(7, ComparisonSettings(spair_overrides=("optim.lr=3e-4",)), seed=0)
    assert tuned.optim.lr == 3e-4
    a = air_config("dair", 7, quick, seed=1)
    assert (a.model.variant, a.model.scale_prior_std, a.optim.lr, a.optim.batch_size) == ("dair", 0.75, 1e-3, 64)
    assert a.data.scene.n_objects == (7, 7) and a.seed == 1


def test_cli_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.words != tuple(COMMAND_WORDS.split())])
    add_verbs(cli.command)
    out = tmp_path / "cli"
    code = cli.main(["experiment", "comparison", "--n", "1,3", "--methods", "conncomp", "--out", str(out),
                     "n_val=10", "n_test=10"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == f"spair experiment comparison --n 1,3 --methods conncomp --out {out} n_val=10 n_test=10"
    assert results["settings"]["n_test"] == 10 and [r["n_digits"] for r in results["per_n"]] == [1, 3]
    assert "n=3: test SPAIR-AP conncomp" in capsys.readouterr().out
    assert cli.main(["experiment", "comparison", "--seeds", "1,1"]) == 2
    assert cli.main(["experiment", "comparison", "bogus=1", "--out", str(out)]) == 2
    assert cli.main(["experiment", "comparison", "--print-settings", "--scale", "paper"]) == 0
    assert '"n_train": 64000' in capsys.readouterr().out
