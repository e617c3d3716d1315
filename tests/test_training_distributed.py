"""Data-parallel training: torchrun with 2 gloo processes ends with the weights of one process on
the same global batch; per-image noise does not depend on the split; bf16 autocast keeps the
distribution maths, rendering and losses in fp32."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spair.config import apply_overrides
from spair.errors import ConfigError
from spair.models.spair import Spair, SpairConfig, SpairNoise
from spair.training import distributed
from spair.training.checkpoint import load_checkpoint
from spair.training.presets import get_preset
from spair.training.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"
RUN = ["--preset", "tiny", "--no-tensorboard", "num_threads=1", "optim.max_steps=6", "eval.every=100", "test.n=0",
       "log_every=2"]


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SPAIR_CACHE"] = str(tmp_path / "cache")
    return env


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_torchrun_two_processes_match_one_process(tmp_path):
    env = _env(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "spair", "--quiet", "train", "--out", str(one), *RUN], env=env, check=True,
                   timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "spair", "--quiet", "train", "--out", str(two), *RUN],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-4, rtol=0, msg=k)
    moved = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert moved < 1e-4
    # rank 0 alone wrote the folder and logged the global batch's losses
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    la, lb = _train_losses(one), _train_losses(two)
    assert len(la) == len(lb) == 3
    assert lb == pytest.approx(la, rel=1e-4)


def test_noise_of_an_image_does_not_depend_on_the_number_of_processes(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["num_threads=1"])
    x = torch.zeros(cfg.optim.batch_size, 3, 48, 48)
    draws = {}
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        t = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False, rank=rank, world_size=world)
        t.model = Spair(cfg.model)
        t.noise_gen = torch.Generator()
        t.data_gen = torch.Generator()
        t.step = 3
        t._seed_step()
        draws[(rank, world)] = t._noise(x[: cfg.optim.batch_size // world])
    full, half0, half1 = draws[(0, 1)], draws[(0, 2)], draws[(1, 2)]
    per = cfg.optim.batch_size // 2
    for name in ("where", "what", "depth", "pres", "bg"):
        whole = getattr(full, name)
        assert torch.equal(torch.cat([getattr(half0, name), getattr(half1, name)]), whole), name
        assert getattr(half1, name).shape[0] == per


def test_launched_env_reads_torchrun_variables():
    assert distributed.launched_env({}) is None
    assert distributed.launched_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = distributed.launched_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                                    "MASTER_PORT": "29500"})
    assert env == distributed.DistEnv(rank=3, local_rank=1, world_size=4) and not env.is_main
    with pytest.raises(ConfigError, match="RANK"):
        distributed.launched_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ConfigError, match="MASTER_PORT"):
        distributed.launched_env({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h"})
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        distributed.launched_env({"WORLD_SIZE": "two"})
    assert distributed.device_for(torch.device("cuda"), env) == torch.device("cuda", 1)
    assert distributed.device_for(torch.device("cpu"), env) == torch.device("cpu")
    assert distributed.backend_for(torch.device("cpu")) == "gloo"


def test_outside_torchrun_the_collectives_are_identities(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    with distributed.process_group(torch.device("cpu")) as env:
        assert env is None
        t = torch.tensor([1.0, 2.0])
        assert distributed.all_reduce_sum(t) is t and distributed.all_reduce_mean(t) is t
        assert distributed.broadcast_flag(True, torch.device("cpu")) is True
        distributed.barrier()


def test_asking_for_several_processes_without_torchrun_is_refused(tmp_path, monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    cfg = apply_overrides(get_preset("tiny"), ["num_threads=1"])
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False, rank=0, world_size=2).fit()
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_keeps_the_probabilistic_parts_in_fp32():
    torch.manual_seed(0)
    m = Spair(SpairConfig(background="solid"))
    x = torch.rand(4, 3, 48, 48)
    noise = SpairNoise.sample(4, 16, 50, generator=torch.Generator().manual_seed(0))
    ref = m(x, -2.0, noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, -2.0, noise=noise)
    for t in (out.recon, out.boxes, out.z_where, out.z_pres, out.pres_logit, out.pres_prob, *out.params.values(),
              out.losses.recon, out.losses.kl_where, out.losses.kl_what, out.losses.kl_depth, out.losses.kl_pres):
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    # low-precision matmuls move the result a little, not the loss terms' scale
    assert torch.allclose(out.losses.total, ref.losses.total, rtol=0.05)
    assert float((out.recon - ref.recon).detach().abs().max()) < 0.1
    out.losses.total.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_amp_training_step_on_the_cpu(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["num_threads=1", "amp=true", "optim.max_steps=2", "eval.every=100",
                                               "test.n=0"])
    summary = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False, log=lambda s: None).fit()
    assert summary["steps"] == 2
    w = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in w.values())
