"""The SET experiment on a tiny configuration: run folders, results.json with the table, table.md,
a resumed run that skips finished work, refusal of changed settings, the configs, and the CLI verb."""

import json

import pytest

from spair import cli
from spair.config import to_dict
from spair.errors import ConfigError
from spair.experiments import set_game
from spair.experiments.set_game import (METHODS, PAPER_TABLE1, SetSettings, budget_estimate, markdown_table, run_set,
                                        set_stage2_config, settings_for_scale, spair_stage1_config)
from spair.experiments.set_game_cli import COMMAND_WORDS, add_verbs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


TINY = SetSettings(n_train=16, n_val=8, n_test=8, stage1_n_val=4, spair_steps=2, spair_eval_every=1,
                   spair_overrides=("optim.batch_size=4",), stage2_steps=4, stage2_eval_every=2, stage2_batch_size=4,
                   num_threads=1)


def test_first_run_resume_and_table(tmp_path, monkeypatch):
    out = tmp_path / "set"
    logs = []
    results = run_set(out, seeds=(0, 1), classifiers=("recurrent", "obj"), settings=TINY, log=logs.append,
                      command="spair experiment set")
    for seed in (0, 1):
        base = out / f"seed{seed}"
        assert (base / "stage1_spair" / "result.json").exists()
        assert (base / "stage1_spair" / "boxes_and_reconstructions.png").exists()
        for m in METHODS:
            for c in ("recurrent", "obj"):
                assert {"result.json", "best.pt", "summary.json"} <= {p.name for p in (base / f"{m}-{c}").iterdir()}
    assert json.loads((out / "results.json").read_text()) == results
    assert results["complete"] and results["classifiers"] == ["recurrent", "obj"] and results["seeds"] == [0, 1]
    assert results["settings"] == to_dict(TINY) and results["paper_table1"] == PAPER_TABLE1
    assert [row["classifier"] for row in results["table"]] == ["recurrent", "obj"]
    for row in results["table"]:
        for m in METHODS:
            entry = row["methods"][m]
            accs = [r["test_accuracy"] for r in entry["runs"]]
            assert [r["seed"] for r in entry["runs"]] == [0, 1] and all(0 <= a <= 1 for a in accs)
            assert entry["stats"]["test_accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
            assert entry["stats"]["test_accuracy"]["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
        assert row["methods"]["truebb"]["runs"][0]["mean_objects"] == 7.0   # the 7 cards' true boxes
    assert len(results["stage1"]["runs"]) == 2 and results["stage1"]["stats"]["test_spair_AP"]["n"] == 2
    table = (out / "table.md").read_text()
    assert table.startswith("| Classifier | SPAIR Fixed | SPAIR Unfixed | ConvNet | TrueBB |")
    assert "| LSTM 256 |" in table and "| object network |" in table and "57.9 (sd 0.019)" in table
    assert table.strip() == results["markdown"].strip()
    # stage 1 uses the authors' SET settings
    s1 = json.loads((out / "seed0" / "stage1_spair" / "config.json").read_text())
    assert s1["model"]["background"] == "learn" and s1["schedule"]["training_wheels_steps"] == 0
    assert s1["model"]["alpha_logit_bias"] == 1.0 and s1["data"]["n_train"] == 16

    def forbidden(*a, **k):
        raise AssertionError("a finished run was run again")

    from spair.training import downstream, trainer
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    monkeypatch.setattr(downstream.DownstreamTrainer, "fit", forbidden)
    logs2 = []
    again = run_set(out, seeds=(0, 1), classifiers=("recurrent", "obj"), settings=TINY, log=logs2.append)
    assert sum("already finished" in line for line in logs2) == 2 * len(METHODS) * 2
    assert again["table"] == results["table"]
    with pytest.raises(ConfigError, match="other settings"):
        run_set(out, seeds=(0,), methods=("truebb",), settings=TINY, overrides=["stage2_lr=0.5"])


def test_settings_configs_budget_and_markdown():
    quick, paper = settings_for_scale("quick"), settings_for_scale("paper")
    assert paper.n_train == 128000 and paper.stage2_patience == 20000 and quick.lstm_units == 256
    with pytest.raises(ConfigError):
        settings_for_scale("huge")
    est = budget_estimate(quick, (0, 1, 2))
    assert 40 * 60 < est["total"] / set_game.TWO_CORE_SPEEDUP < 60 * 60  # docs/downstream.md
    cfg = spair_stage1_config(quick, seed=2)
    assert (cfg.model.color_logit_scale, cfg.model.alpha_logit_scale, cfg.model.alpha_logit_bias) == (1.0, 1.0, 1.0)
    assert cfg.model.background == "learn" and cfg.schedule.training_wheels_steps == 0 and cfg.seed == 2
    assert cfg.data.crop is None and cfg.data.scene.image_size == (48, 48) and cfg.optim.max_steps == 3000
    s2 = set_stage2_config("spair_fixed", "arn3", quick, 1, "x.pt")
    assert (s2.classifier.kind, s2.classifier.n_classes, s2.seed, s2.front_end.checkpoint) == ("arn3", 2, 1, "x.pt")
    assert set_stage2_config("truebb", "recurrent", quick, 0).classifier.lstm_units == 256
    with pytest.raises(ConfigError):
        set_stage2_config("conncomp", "recurrent", quick, 0)
    with pytest.raises(ConfigError, match="classifiers"):
        run_set("unused", classifiers=("gru",), settings=TINY)
    fake = {"methods": ["convnet"], "table": [{"classifier": "recurrent", "methods": {
        "convnet": {"stats": {"test_accuracy": {"mean": 0.5123, "sd": 0.01, "n": 3}}}}}],
        "settings": {"n_train": 10, "n_test": 5}, "scale": "quick"}
    assert "| LSTM 256 | 51.2 ± 1.0 (3) |" in markdown_table(fake)


def test_cli_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.words != tuple(COMMAND_WORDS.split())])
    add_verbs(cli.command)
    out = tmp_path / "cli"
    args = ["experiment", "set", "--seeds", "0", "--methods", "truebb", "--classifiers", "mlp", "--out", str(out),
            "n_train=16", "n_val=8", "n_test=8", "stage2_steps=2", "stage2_eval_every=1", "num_threads=1"]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "spair " + " ".join(args) and results["classifiers"] == ["mlp"]
    assert "| MLP over 7 slots |" in capsys.readouterr().out
    assert cli.main(["experiment", "set", "--classifiers", "gru"]) == 2
    assert cli.main(["experiment", "set", "--print-settings", "--scale", "paper"]) == 0
    assert '"n_train": 128000' in capsys.readouterr().out
