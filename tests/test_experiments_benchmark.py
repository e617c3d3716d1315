"""``spair benchmark``: a quick run writes its JSON, Markdown and plot with every case and target;
FLOPs are counted from the layer shapes; the allocator study and the command-line verb work."""

import argparse
import json
from dataclasses import asdict

import pytest
import torch

from spair.errors import ConfigError
from spair.experiments import benchmark as bm
from spair.experiments.benchmark_cli import add_verbs, parse_modes, parse_sizes

SMALL_MODEL = ("backbone_channels=16", "n_backbone_features=12", "n_passthrough_features=8", "lateral_hidden=[16]",
               "encoder_hidden=[32]", "decoder_hidden=[32]", "A=6")


def small_quick(**kw):
    return bm.quick_config(threads=1, batch_size=2, model_overrides=SMALL_MODEL, **kw)


def test_quick_benchmark_writes_results(tmp_path):
    cfg = small_quick(sizes=((40, 56),))
    lines = []
    results = bm.run_benchmark(cfg, tmp_path, log=lines.append)
    assert {p.name for p in tmp_path.iterdir()} >= {"benchmark.json", "benchmark.md", "benchmark.png"}
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert data["format"] == bm.FORMAT and data["matmul_flops"] > 0
    cases = {(tuple(c["size"]), c["mode"]): c for c in data["cases"]}
    assert set(cases) == {((40, 56), m) for m in bm.MODES}
    for (size, mode), c in cases.items():
        assert "error" not in c, c
        assert c["train_step_s"]["wall"] > 0 and c["inference_batch_s"]["cpu"] >= 0
        assert c["peak_rss_mb"] >= c["rss_before_mb"] > 0
        split = c["split_s"]["wall"]
        assert set(split) == {*bm.COMPONENTS, "step"}
        assert split["backward"] > 0 and split["backbone"] > 0 and split["rendering"] > 0
    # the schedules: 4x5 cells -> raster 20 steps, wavefront 2*(4-1)+5 = 11, no lateral connections 1
    assert [cases[((40, 56), m)]["sequential_steps"] for m in ("raster", "wavefront", "no-lateral")] == [20, 11, 1]
    assert len(data["targets"]) == 5
    by_name = {t["target"]: t for t in data["targets"]}
    assert by_name["training step time 256x256 / 64x64 (wavefront; 16 = linear in area)"]["value"] is None
    assert by_name["training throughput at 48x48 (wavefront)"]["value"] is None
    md = (tmp_path / "benchmark.md").read_text()
    assert md == bm.markdown_table(results)
    assert "| 40×56 | raster |" in md and "| target | goal | measured | met |" in md
    assert any("40x56 wavefront: train" in line for line in lines)
    assert bm.throughput(cases[((40, 56), "wavefront")], "train") == pytest.approx(
        2 / cases[((40, 56), "wavefront")]["train_step_s"]["wall"])


def test_flops_are_counted_from_layer_shapes():
    import torch

    from spair.models.spair import Spair, SpairConfig

    m = Spair(SpairConfig())
    f = bm.model_flops(m, (48, 48))
    # strided 4x4 convs 3->128 (24x24 out), 128->128 (12x12), 128->128 (4x4), then three 1x1 convs at 4x4
    backbone = 2 * (24 * 24 * 128 * 3 * 16 + 12 * 12 * 128 * 128 * 16 + 4 * 4 * 128 * 128 * 16
                    + 4 * 4 * (128 * 128 * 2 + 128 * 100))
    assert f["backbone"] == backbone
    assert f["first conv"] == 2 * 24 * 24 * 128 * 3 * 16
    lateral = 2 * 16 * ((324 * 100 + 100 * 100 + 100 * 108) + (478 * 100 + 100 * 100 + 100 * 102)
                        + (479 * 100 + 100 * 100 + 100 * 1))
    assert f["lateral heads"] == lateral
    assert f["object encoder"] == 2 * 16 * (588 * 512 + 512 * 256 + 256 * 100)
    assert f["object decoder"] == 2 * 16 * (50 * 256 + 256 * 512 + 512 * 784)
    assert bm.training_flops(f) == 3 * f["total"] - f["first conv"]
    # rendering cost grows with the number of cells, not with cells x pixels
    f128 = bm.model_flops(m, (128, 128))
    assert f128["rendering"] / (11 * 11) < 1.3 * f["rendering"] / 16
    assert torch.get_num_threads() >= 1


def test_allocator_study_runs_each_setting(tmp_path):
    cfg = small_quick()
    variants = {"glibc default": {"GLIBC_TUNABLES": None, "LD_PRELOAD": None},
                "mmap_threshold=32M": {"GLIBC_TUNABLES": bm.GLIBC_VARIANTS["mmap_threshold=32M"], "LD_PRELOAD": None}}
    res = bm.run_allocators(cfg, batch_sizes=(2,), out_dir=tmp_path, log=lambda s: None, variants=variants, rounds=1)
    assert [r["setting"] for r in res["rows"]] == list(variants)
    assert all("error" not in r and r["step_s"] > 0 for r in res["rows"])
    assert res["rows"][0]["speedup_vs_default"] == pytest.approx(1.0)
    assert (tmp_path / "allocators.md").read_text().count("\n| ") == 3
    assert "glibc default" in bm.allocator_variants()


def test_config_checks():
    with pytest.raises(ConfigError, match="modes"):
        bm.BenchmarkConfig(modes=("sideways",))
    with pytest.raises(ConfigError, match="clock"):
        bm.BenchmarkConfig(clock="sundial")
    with pytest.raises(ConfigError, match="sizes"):
        bm.BenchmarkConfig(sizes=((0, 48),))
    with pytest.raises(ConfigError, match="weights"):
        bm.BenchmarkConfig(weights="borrowed")


def test_pretrained_weights_and_amp_case():
    """From the shipped model's weights (every tensor copied; the no-lateral model shares all but the
    lateral heads' first layers) and under bf16 autocast, a case still measures a finite step."""
    from spair.models.io import load_model
    from spair.models.spair import Spair, SpairConfig

    shipped = load_model()
    same = Spair(shipped.cfg)
    n, total = bm.copy_matching_weights(shipped, same)
    assert n == total == len(shipped.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), same.state_dict().values()))
    no_lateral = Spair(SpairConfig(n_lookback=0))
    n0, total0 = bm.copy_matching_weights(shipped, no_lateral)
    assert 0 < n0 < total0
    cfg = bm.quick_config(threads=1, batch_size=2, weights="pretrained", amp=True)
    case = bm.run_case((48, 48), "wavefront", cfg)
    assert case["amp"] and case["weights"] == "pretrained"
    assert case["pretrained_tensors_loaded"] == [total, total]
    assert 0 < case["train_step_s"]["wall"] < float("inf")
    assert "bf16 autocast; the shipped model's weights" in bm.markdown_table(
        {"config": asdict(cfg), "machine": bm.machine_info(),
         "matmul_flops": 1e9, "cases": [case]})


def test_command_line_verb():
    registered = []

    def command(words, help, add_arguments, **kw):
        def register(run):
            registered.append((words, add_arguments, run))
            return run
        return register

    add_verbs(command)
    (words, add_arguments, run), = registered
    assert words == "benchmark"
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--quick", "--sizes", "48,210x160", "--modes", "raster", "--clock", "cpu"])
    assert args.weights == "init" and not args.amp
    assert p.parse_args(["--weights", "pretrained", "--amp"]).amp
    assert args.warmup is None and p.parse_args(["--warmup", "0"]).warmup == 0
    with pytest.raises(SystemExit):
        p.parse_args(["--warmup", "-1"])
    assert args.quick and args.sizes == [(48, 48), (210, 160)] and args.modes == ["raster"] and args.clock == "cpu"
    assert parse_sizes("64, 32x16") == [(64, 64), (32, 16)]
    for bad in ("", "4", "48x", "big"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_modes("wavefront,diagonal")
