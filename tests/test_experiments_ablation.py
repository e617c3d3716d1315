"""The lateral-connection ablation (Figure 7) on a tiny configuration: one run per lookback, the
shared protocol, results.json and the figure, resuming, the spec 8.4 per-lookback settings, and
the CLI verb."""

import json

import pytest

from spair import cli
from spair.config import apply_overrides, to_dict
from spair.errors import ConfigError
from spair.experiments import generalization
from spair.experiments.ablation import (SPEC_LOOKBACK_SETTINGS, AblationSettings, ablation_config, lookback_overrides,
                                        plot_ablation, run_ablation, settings_for_scale)
from spair.experiments.generalization import spair_config
from spair.experiments.generalization_cli import ABLATION_WORDS, add_verbs

PNG = b"\x89PNG\r\n\x1a\n"
TINY = AblationSettings(n_train=4, n_val=2, n_test=3, n_cc_val=3, max_digits=3, spair_steps=2, spair_eval_every=1,
                        spair_overrides=("optim.batch_size=4",), num_threads=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


def test_runs_per_lookback_results_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    logs = []
    results = run_ablation(out, seeds=(0,), lookbacks=(0, 1, 2), conditions=("3-4",), settings=TINY,
                           log=logs.append, command="spair experiment ablation")
    for L in (0, 1, 2):
        run_dir = out / "3-4" / f"L{L}" / "seed0"
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["model"]["n_lookback"] == L and cfg["model"]["kernel_size"] == 1  # 'shared': only L differs
        assert cfg["data"]["crop"]["size"] == [48, 48] and cfg["data"]["scene"]["n_objects"] == [3, 4]
        assert (run_dir / "result.json").exists()
    assert not (out / "conncomp").exists()  # no ConnComp unless asked
    assert (out / "ablation.png").read_bytes()[:8] == PNG and (out / "examples.png").read_bytes()[:8] == PNG

    assert json.loads((out / "results.json").read_text()) == results
    assert results["experiment"] == "ablation" and results["complete"]
    assert results["lookbacks"] == [0, 1, 2] and results["conditions"] == ["3-4"]
    assert results["lookback_settings"] == "shared" and results["settings"] == to_dict(TINY)
    assert results["lookback_overrides"]["2"] == ["model.n_lookback=2"]
    assert set(results["curves"]) == {"3-4/L0", "3-4/L1", "3-4/L2"}
    for L in (0, 1, 2):
        curve = results["curves"][f"3-4/L{L}"]
        run = next(r for r in results["runs"] if r["line"] == f"3-4/L{L}")
        assert curve["lookback"] == L and curve["row"] == "3-4" and curve["n_runs"] == 1
        assert curve["mean"]["count_abs_error"] == [run["test"][str(n)]["count_abs_error"] for n in (1, 2, 3)]
        assert curve["sd"]["spair_AP"] == [0.0, 0.0, 0.0]
        assert all(run["test"][str(n)]["n_images"] == 3 for n in (1, 2, 3))
    # different architectures infer differently on the same test images
    assert results["curves"]["3-4/L0"]["mean"] != results["curves"]["3-4/L1"]["mean"]

    def forbidden(*a, **k):
        raise AssertionError("finished work was done again")

    from spair.training import trainer
    monkeypatch.setattr(trainer.Trainer, "fit", forbidden)
    monkeypatch.setattr(generalization, "evaluate_full_images", forbidden)
    logs.clear()
    again = run_ablation(out, seeds=(0,), lookbacks=(0, 1, 2), conditions=("3-4",), settings=TINY, log=logs.append)
    assert sum("already finished" in line for line in logs) == 3 and again["curves"] == results["curves"]
    # a subset of the lookbacks reuses the finished runs; spec settings are another configuration
    subset = run_ablation(out, seeds=(0,), lookbacks=(1,), conditions=("3-4",), settings=TINY)
    assert subset["curves"]["3-4/L1"] == results["curves"]["3-4/L1"]
    with pytest.raises(ConfigError, match="other settings"):
        run_ablation(out, seeds=(0,), lookbacks=(1,), conditions=("3-4",), settings=TINY,
                     overrides=["lookback_settings=spec"])


def test_lookback_settings_shared_and_spec():
    quick = settings_for_scale("quick")
    assert isinstance(quick, AblationSettings) and quick.lookback_settings == "shared"
    assert quick.spair_steps == generalization.settings_for_scale("quick").spair_steps
    # shared: the L = 1 run is the generalization experiment's run of the same condition
    assert to_dict(ablation_config("11-15", 1, quick, 0)) == to_dict(spair_config("11-15", quick, 0))
    assert ablation_config("11-15", 0, quick, 0).model.n_lookback == 0

    spec = AblationSettings(lookback_settings="spec")
    for L, decay in ((0, 1200.0), (1, 900.0), (2, 600.0)):  # the demo preset's D = 300: the table x 0.3
        cfg = ablation_config("1-5", L, spec, 0)
        assert cfg.model.n_lookback == L and cfg.model.kernel_size == 2
        assert cfg.schedule.count_prior_decay_steps == decay
        assert cfg.schedule.count_prior_final_odds == SPEC_LOOKBACK_SETTINGS[L]["count_prior_final_odds"]
    paper = AblationSettings(spair_preset="paper", lookback_settings="spec")
    for L in (0, 1, 2):  # the paper preset's D = 1000: the table's own numbers
        cfg = ablation_config("11-15", L, paper, 0)
        assert cfg.schedule.count_prior_decay_steps == SPEC_LOOKBACK_SETTINGS[L]["count_prior_decay_steps"]
    base = spair_config("1-5", spec, 0)
    assert lookback_overrides(0, spec, base)[0] == "model.n_lookback=0"
    with pytest.raises(ConfigError, match="lookback_settings"):
        apply_overrides(quick, ["lookback_settings=tuned"])
    with pytest.raises(ConfigError, match="lookbacks"):
        run_ablation("unused", lookbacks=(0, 0))
    with pytest.raises(ConfigError, match="lookbacks"):
        run_ablation("unused", lookbacks=(5,))
    with pytest.raises(ConfigError, match="conditions"):
        run_ablation("unused", conditions=("1-5", "1-5"))


def test_figure_has_one_row_per_condition(tmp_path):
    """plot_ablation on hand-made results: two conditions, two lookbacks, two seeds."""
    n = [1, 2, 3, 4]

    def curve(L, cond, level):
        return {"label": f"L = {L}", "kind": "spair", "condition": cond, "lookback": L, "row": cond,
                "seeds": [0, 1], "n_runs": 2,
                "mean": {"spair_AP": [level - 0.1 * i for i in range(4)],
                         "count_abs_error": [0.1 * i for i in range(4)],
                         "count_01_error": [0.05 * i for i in range(4)]},
                "sd": {"spair_AP": [0.02] * 4, "count_abs_error": [0.01] * 4, "count_01_error": [0.0] * 4}}

    results = {"conditions": ["3-4", "1-2"], "lookbacks": [0, 1], "n_digits": n, "seeds": [0, 1],
               "lookback_settings": "shared", "settings": {"crop_size": 48, "image_size": 84},
               "curves": {f"{c}/L{L}": curve(L, c, 0.9 - 0.2 * L) for c in ("3-4", "1-2") for L in (0, 1)}}
    path = tmp_path / "fig.png"
    plot_ablation(results, path)
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    assert path.read_bytes()[:8] == PNG and height > 0.5 * width  # two rows of three panels


def test_cli_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.words[:1] != ("experiment",)
                                          or c.words[1] not in ("generalization", "ablation")])
    add_verbs(cli.command)
    out = tmp_path / "cli"
    argv = ["experiment", "ablation", "--lookbacks", "0,1", "--conditions", "1-2", "--out", str(out), "n_train=4",
            "n_val=2", "n_test=2", "max_digits=2", "spair_steps=1", "spair_eval_every=1", "num_threads=1",
            "spair_overrides=[\"optim.batch_size=4\"]"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"1-2/L0", "1-2/L1"} and results["lookbacks"] == [0, 1]
    assert "L = 0 (no lateral connections): test SPAIR-AP n=1" in capsys.readouterr().out
    assert cli.main(["experiment", "ablation", "--lookbacks", "0,7"]) == 2
    assert cli.main(["experiment", "ablation", "--lookbacks", "1,1"]) == 2
    assert cli.main(["experiment", "ablation", "--print-settings", "lookback_settings=spec"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["settings"]["lookback_settings"] == "spec" and printed["conditions"] == ["11-15", "1-5"]
    assert ABLATION_WORDS == "experiment ablation"
