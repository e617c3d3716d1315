"""The stage-2 trainer: it learns a simple task, resumes exactly, stops early and stays stopped,
refuses changed configs and changed stage-1 checkpoints, and writes loadable checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from spair.config import apply_overrides
from spair.data.scenes import SceneConfig, generate_scenes
from spair.errors import CheckpointError, ConfigError, DataError
from spair.io import load_torch_file
from spair.models.classifiers import ClassifierConfig, FrontEndConfig
from spair.models.io import save_model
from spair.models.spair import Spair, SpairConfig
from spair.training import downstream
from spair.training.downstream import (DownstreamConfig, DownstreamEvalConfig, DownstreamOptimConfig,
                                       DownstreamTrainer, TaskData, evaluate_accuracy, load_downstream, prepare)

torch.set_num_threads(1)

SCENE = SceneConfig(image_size=(24, 24), n_objects=(1, 2), max_overlap=50.0)


def count_task(n: int, seed: int) -> TaskData:
    """Images with 1 or 2 digits; the class is the number of digits minus one."""
    s = generate_scenes(SCENE, n, seed)
    return TaskData.from_scenes(s, s.counts - 1)


TRAIN, VAL, TEST = count_task(200, 0), count_task(50, 1), count_task(50, 2)


def config(**over) -> DownstreamConfig:
    cfg = DownstreamConfig(
        front_end=FrontEndConfig(kind="truebb", A=8, encoder_hidden=(32,)),
        classifier=ClassifierConfig(n_classes=2, input_hidden=(16,), input_dim=8, lstm_units=16, output_hidden=(16,)),
        optim=DownstreamOptimConfig(lr=3e-3, batch_size=16, max_steps=60),
        eval=DownstreamEvalConfig(every=20, patience=0, batch_size=64), device="cpu")
    return apply_overrides(cfg, [f"{k}={v}" for k, v in over.items()])


def fit(cfg, out, **kw):
    return DownstreamTrainer(cfg, out, train=TRAIN, val=VAL, test=TEST, log=lambda m: None, **kw).fit()


def test_learns_the_count_task_and_writes_the_run_folder(tmp_path):
    summary = fit(config(**{"optim.max_steps": 150, "eval.every": 50}), tmp_path / "run")
    assert summary["steps"] == 150 and not summary["stopped_early"]
    assert summary["test"]["accuracy"] > 0.9 and summary["best_val_accuracy"] > 0.9
    assert summary["test"]["n"] == 50 and summary["test"]["mean_objects"] == pytest.approx(TEST.targets.mean() + 1)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "best.pt", "last.pt", "metrics.jsonl", "summary.json"} <= files
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [50, 100, 150]
    ckpt = load_torch_file(tmp_path / "run" / "best.pt")  # weights only
    assert ckpt["format"] == downstream.FORMAT and ckpt["step"] == summary["best_step"]
    model = load_downstream(tmp_path / "run" / "best.pt")
    again = evaluate_accuracy(model, TEST, prepare(model, TEST))
    assert again["accuracy"] == summary["test"]["accuracy"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = config()
    fit(cfg, tmp_path / "whole")
    original = DownstreamTrainer.train_step

    def interrupted(self):
        if self.step == 47:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(DownstreamTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut")
    assert load_torch_file(tmp_path / "cut" / "last.pt")["step"] == 40
    monkeypatch.setattr(DownstreamTrainer, "train_step", original)
    summary = fit(cfg, tmp_path / "cut")
    a = load_torch_file(tmp_path / "whole" / "last.pt")
    b = load_torch_file(tmp_path / "cut" / "last.pt")
    assert a["step"] == b["step"] == 60 and a["best"] == b["best"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    evals = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [20, 40, 60]  # no duplicated lines
    assert summary["test"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["test"]


def test_early_stopping_is_remembered(tmp_path, monkeypatch):
    cfg = config(**{"optim.lr": 1e-9, "optim.max_steps": 200, "eval.every": 10, "eval.patience": 30})
    summary = fit(cfg, tmp_path / "run")
    assert summary["stopped_early"] and summary["steps"] - summary["best_step"] == 30 and summary["steps"] < 200

    def forbidden(self):
        raise AssertionError("a stopped run was trained further")

    monkeypatch.setattr(DownstreamTrainer, "train_step", forbidden)
    again = fit(cfg, tmp_path / "run")
    assert again["steps"] == summary["steps"] and again["test"] == summary["test"]


def test_refusals(tmp_path):
    fit(config(**{"optim.max_steps": 20}), tmp_path / "run")
    with pytest.raises(ConfigError, match="differs"):
        fit(config(**{"optim.max_steps": 20, "optim.lr": 1e-2}), tmp_path / "run")
    bad = TaskData(TRAIN.images, TRAIN.targets + 5)
    with pytest.raises(DataError, match="outside"):
        DownstreamTrainer(config(), tmp_path / "x", train=bad, val=VAL)
    with pytest.raises(DataError):
        TaskData(TRAIN.images, TRAIN.targets[:3])
    with pytest.raises(CheckpointError):
        load_downstream(tmp_path / "run" / "config.json")


def test_spair_front_end_checkpoints_exclude_stage_one_and_check_it(tmp_path):
    torch.manual_seed(0)
    stage1 = tmp_path / "stage1.safetensors"
    save_model(stage1, Spair(SpairConfig(A=6, backbone_channels=8, n_backbone_features=8, n_passthrough_features=4,
                                         lateral_hidden=(8,), encoder_hidden=(16,), decoder_hidden=(16,),
                                         object_shape=(6, 6))))
    cfg = config(**{"optim.max_steps": 20, "front_end.kind": "spair", "front_end.mode": "unfixed",
                    "front_end.checkpoint": str(stage1)})
    prepared = {}
    trainer = DownstreamTrainer(cfg, tmp_path / "run", train=TRAIN, val=VAL, test=TEST, log=lambda m: None,
                                prepared=prepared)
    summary = trainer.fit()
    assert summary["stage1"]["path"] == str(stage1) and len(summary["stage1"]["sha256"]) == 64
    assert set(trainer.prepared) == {"train", "val", "test"}
    state = load_torch_file(tmp_path / "run" / "best.pt")["model"]
    assert not any(k.startswith("front_end.stage1.") for k in state)
    assert any(k.startswith("front_end.encoder.") for k in state)
    # given prepared tensors are used as they are (no second pass of the stage-1 model)
    calls = []
    other = DownstreamTrainer(config(**{"optim.max_steps": 20, "front_end.kind": "spair", "front_end.checkpoint":
                                        str(stage1)}), tmp_path / "fixed", train=TRAIN, val=VAL, test=TEST,
                              log=calls.append, prepared=trainer.prepared)
    other.fit()
    assert not any("prepared" in c for c in calls)
    save_model(stage1, Spair(SpairConfig(A=6, backbone_channels=8, n_backbone_features=8, n_passthrough_features=4,
                                         lateral_hidden=(8,), encoder_hidden=(16,), decoder_hidden=(16,),
                                         object_shape=(6, 6))))  # another initialization: another file
    with pytest.raises(CheckpointError, match="changed"):
        load_downstream(tmp_path / "run" / "best.pt")
