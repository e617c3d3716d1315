"""The trainer: a short run learns, resumes exactly after SIGKILL, refuses a changed config,
skips non-finite steps, and never writes a non-finite checkpoint."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spair.config import apply_overrides
from spair.errors import CheckpointError, ConfigError
from spair.training.checkpoint import load_checkpoint, save_checkpoint
from spair.training.presets import get_preset
from spair.training.trainer import Trainer, TrainingAborted, add_gradient_noise, truncated_normal

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


def tiny(*overrides):
    return apply_overrides(get_preset("tiny"), ["num_threads=1", *overrides])


def weights(path):
    return load_checkpoint(path)["model"]


def test_smoke_training_learns(tmp_path):
    """A short CPU run (the 'smoke' preset) lowers the loss and detects digits."""
    cfg = apply_overrides(get_preset("smoke"), ["num_threads=2"])
    summary = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False, log=lambda s: None).fit()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]
    assert summary["test"]["spair_AP"] > 0.5, summary["test"]
    assert summary["test"]["coco_AP@.5"] > 0.8, summary["test"]


def test_presets_keep_the_paper_grid_where_the_experiments_start():
    """'cpu' is the CPU recipe on the paper's 12-px cells (the experiments' starting point); 'demo' is
    the same recipe with 8-px cells, a weaker count prior, a larger validation set and the flat noise
    sampler, nothing else changed; 'pretrained' trains the demo model on crops."""
    from spair.config import to_dict
    from spair.experiments.addition import AdditionSettings
    from spair.experiments.comparison import ComparisonSettings
    from spair.experiments.generalization import GeneralizationSettings
    from spair.experiments.set_game import SetSettings

    cpu, demo, pre = get_preset("cpu"), get_preset("demo"), get_preset("pretrained")
    assert cpu.model.cell_size == get_preset("paper").model.cell_size == 12
    assert (demo.model.cell_size, pre.model.cell_size) == (8, 8)
    assert (cpu.optim.grad_noise_sampler, demo.optim.grad_noise_sampler) == ("per-tensor", "flat")
    assert cpu.schedule.count_prior_final_odds == get_preset("paper").schedule.count_prior_final_odds == 0.0125
    assert demo.schedule.count_prior_final_odds == pre.schedule.count_prior_final_odds == 0.05
    a, b = to_dict(cpu), to_dict(demo)
    assert (cpu.data.n_val, demo.data.n_val, pre.data.n_val) == (125, 500, 500)
    assert (cpu.data.val_n_objects, demo.data.val_n_objects, pre.data.val_n_objects) == (None, (5, 5), None)
    assert (cpu.optim.max_steps, demo.optim.max_steps, pre.optim.max_steps) == (4000, 5000, 24000)
    for part, key in (("model", "cell_size"), ("optim", "grad_noise_sampler"), ("schedule", "count_prior_final_odds"),
                      ("data", "n_val"), ("data", "val_n_objects"), ("optim", "max_steps")):
        a[part].pop(key), b[part].pop(key)
    assert a == b
    assert pre.data.crop is not None and pre.data.scene.image_size == (84, 84)
    for settings in (AdditionSettings(), ComparisonSettings(), GeneralizationSettings(), SetSettings()):
        assert settings.spair_preset == "cpu", type(settings).__name__


def test_truncated_normal_draws():
    """One draw for all values, redraws only out of ±2σ: the truncated normal's moments, reproducible."""
    z = truncated_normal(400_000, 0.5, torch.Generator().manual_seed(3))
    assert z.abs().max() <= 1.0 and z.abs().max() > 0.99
    assert abs(float(z.mean())) < 0.003
    assert float(z.std()) == pytest.approx(0.5 * 0.87962566, rel=0.01)  # sd of N(0,1) truncated at ±2
    assert torch.equal(z, truncated_normal(400_000, 0.5, torch.Generator().manual_seed(3)))


def test_gradient_noise_samplers():
    shapes = [(300, 200), (7,), (50, 3, 4, 4)]
    per_tensor = [torch.zeros(s) for s in shapes]
    add_gradient_noise(per_tensor, 1e-3, torch.Generator().manual_seed(0), "per-tensor")
    gen = torch.Generator().manual_seed(0)  # the default is exactly torch's trunc_normal_ per gradient
    for g in per_tensor:
        expected = torch.nn.init.trunc_normal_(torch.empty_like(g), 0.0, 1e-3, -2e-3, 2e-3, generator=gen)
        assert torch.equal(g, expected)
    flat = [torch.ones(s) for s in shapes]
    add_gradient_noise(flat, 1e-3, torch.Generator().manual_seed(0), "flat")
    noise = torch.cat([(g - 1).flatten() for g in flat])
    assert noise.abs().max() <= 2e-3 + 1e-7 and float(noise.std()) == pytest.approx(0.88e-3, rel=0.05)
    assert not torch.equal(noise, torch.cat([g.flatten() for g in per_tensor]))


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny(), out, progress=False, tensorboard=True, log=lambda s: None).fit()
    for name in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "summary.json"):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())
    ckpt = torch.load(out / "last.pt", weights_only=True)  # loads without pickled code
    assert ckpt["step"] == 20
    assert set(ckpt["schedules"]) >= {"count_prior_log_odds", "training_wheels", "grad_noise_std", "lr"}
    assert ckpt["schedules"]["count_prior_log_odds"]["value"] == pytest.approx(
        math.log(0.0125 + (1e6 - 0.0125) * 0.1 ** (20 / 10) + 1e-6))


def test_same_seed_same_training_curve(tmp_path):
    a = Trainer(tiny(), tmp_path / "a", progress=False, tensorboard=False, log=lambda s: None)
    a.fit()
    b = Trainer(tiny(), tmp_path / "b", progress=False, tensorboard=False, log=lambda s: None)
    b.fit()
    la = [json.loads(l).get("loss") for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l).get("loss") for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb
    wa, wb = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _train_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "spair", "--quiet", "train", "--preset", "tiny", "--out", str(out),
            "--no-tensorboard", "num_threads=1", *overrides]


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), SPAIR_NO_REEXEC="1")
    extra = ["optim.max_steps=40", "eval.every=4"]
    subprocess.run(_train_cmd(tmp_path / "ref", *extra), check=True, env=env, timeout=300)
    ref = weights(tmp_path / "ref" / "last.pt")
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):  # kill at random moments (some during checkpoint writes), then resume
        proc = subprocess.Popen(_train_cmd(out, *extra), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (out / "last.pt").exists():
            load_checkpoint(out / "last.pt")  # a kill never leaves a partial checkpoint
    subprocess.run(_train_cmd(out, *extra), check=True, env=env, timeout=300)
    assert kills >= 1
    assert not list(out.glob(".*.tmp"))  # temporary files of killed writes are cleaned up on resume
    got = weights(out / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_refuses_a_changed_config(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny("optim.max_steps=10"), out, progress=False, tensorboard=False, log=lambda s: None).fit()
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer(tiny("optim.max_steps=10", "optim.lr=0.5"), out, progress=False, tensorboard=False,
                log=lambda s: None).fit()
    # how a run executes (threads, device, time limit) is not part of what it computes: resuming is allowed
    before = weights(out / "last.pt")
    summary = Trainer(tiny("optim.max_steps=10", "num_threads=2", "max_minutes=60"), out, progress=False,
                      tensorboard=False, log=lambda s: None).fit()
    assert summary["steps"] == 10
    after = weights(out / "last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # nor is the test-time refinement, even for a run saved before the setting existed
    import json

    saved = json.loads((out / "config.json").read_text())
    del saved["eval"]["refine_steps"]
    (out / "config.json").write_text(json.dumps(saved))
    summary = Trainer(tiny("optim.max_steps=10", "eval.refine_steps=0"), out, progress=False, tensorboard=False,
                      log=lambda s: None).fit()
    assert summary["steps"] == 10


def test_non_finite_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    cfg = tiny("optim.max_bad_steps=3")
    t = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False, log=lambda s: None)
    original = t.train_step

    def poisoned():
        # a NaN in the first layer's weights makes the loss non-finite
        with torch.no_grad():
            t.model.backbone.strided[0].weight[0, 0, 0, 0] = float("nan")
        return original()

    monkeypatch.setattr(t, "train_step", poisoned)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        with pytest.raises(TrainingAborted, match="3 consecutive"):
            t.fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_non_finite_checkpoint_is_never_written(tmp_path):
    from spair.models.spair import Spair, SpairConfig

    state = Spair(SpairConfig(A=4)).state_dict()
    state["edge_element"][0] = float("inf")
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path / "x.pt", {"model": state})
    assert not (tmp_path / "x.pt").exists()


def test_validation_scenes_can_hold_another_number_of_objects(tmp_path, monkeypatch):
    from spair.config import apply_overrides
    from spair.training.trainer import load_split

    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path))
    cfg = apply_overrides(get_preset("tiny"), ["data.crop=null", "data.scene.image_size=[48,48]",
                                               "data.scene.n_objects=[1,9]", "data.val_n_objects=[5,5]"])
    val, train = load_split(cfg, "val"), load_split(cfg, "train")
    assert set(val.counts.tolist()) == {5}
    assert len(set(train.counts.tolist())) > 1
    same = load_split(apply_overrides(cfg, ["data.val_n_objects=null"]), "val")
    assert len(set(same.counts.tolist())) > 1
