"""``spair benchmark``: the command-line verb of :mod:`spair.experiments.benchmark`.

:func:`add_verbs` registers the verb with the ``command`` decorator of :mod:`spair.cli`, which
calls it while building its registry. The benchmark module imports torch only inside its functions,
so its names (modes, weights) are shared from there without loading torch for ``--help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import int_at_least, sayer
from .benchmark import MODES, WEIGHTS

COMMAND_WORDS = "benchmark"
DEFAULT_OUT = Path("results/benchmark")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """argparse type: ``48,84,210x160`` → [(48, 48), (84, 84), (210, 160)] (H×W; one number = square)."""
    sizes = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            h, w = (int(v) for v in part.split("x")) if "x" in part else (int(part), int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes like 48,84,210x160, got '{text}'") from None
        if not (8 <= h <= 4096 and 8 <= w <= 4096):
            raise argparse.ArgumentTypeError(f"image size {h}x{w} is outside 8..4096")
        sizes.append((h, w))
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected sizes like 48,84,210x160, got '{text}'")
    return sizes


def parse_modes(text: str) -> list[str]:
    """argparse type: comma-separated modes out of wavefront, raster, no-lateral."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(v not in MODES for v in names):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(MODES)}, got '{text}'")
    return names


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of a few seconds per case: 48x48, batch 4, one timed step")
    p.add_argument("--sizes", type=parse_sizes, default=None, metavar="S1,S2,...",
                   help="image sizes, HxW or one number for squares (default: 48,64,84,128,256,210x160)")
    p.add_argument("--modes", type=parse_modes, default=None, metavar="M1,M2,...",
                   help="lateral-connection modes: wavefront, raster, no-lateral (default: all three)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, metavar="B", help="images per step (default: 32)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads per case (0 = every core)")
    p.add_argument("--steps", type=int_at_least(1), default=None, metavar="K", help="timed training steps per case (default: 3)")
    p.add_argument("--warmup", type=int_at_least(0), default=None, metavar="K",
                   help="untimed training steps before the timed ones (default: 3)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time to report: wall clock, or process CPU time (steadier on a busy machine with --threads 1)")
    p.add_argument("--weights", choices=WEIGHTS, default="init",
                   help="start from a fresh model, or from the shipped model's weights (boxes of digit size, "
                        "as for most of a training run)")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the forward passes, as 'spair train amp=true'")
    p.add_argument("--allocators", action="store_true",
                   help="instead: compare malloc settings (glibc tunables, tcmalloc, jemalloc) on the 48x48 "
                        "training step at batch 32 and 64")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="folder for benchmark.json, benchmark.md and benchmark.png (or allocators.json/.md)")


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .benchmark import BenchmarkConfig, allocator_table, markdown_table, quick_config, run_allocators, run_benchmark

    say = sayer(args)

    cfg = quick_config() if args.quick else BenchmarkConfig()
    changes = {"threads": args.threads, "clock": args.clock, "weights": args.weights, "amp": args.amp}
    for key, value in (("sizes", args.sizes), ("modes", args.modes), ("batch_size", args.batch_size),
                       ("steps", args.steps), ("warmup", args.warmup)):
        if value is not None:
            changes[key] = tuple(value) if isinstance(value, list) else value
    cfg = replace(cfg, **changes)
    if args.allocators:
        batches = (cfg.batch_size,) if args.quick else (32, 64) if args.batch_size is None else (cfg.batch_size,)
        results = run_allocators(cfg, batch_sizes=batches, out_dir=args.out, log=say,
                                 rounds=1 if args.quick else 2)
        print(allocator_table(results), end="")
        return 0
    results = run_benchmark(cfg, args.out, log=say)
    print(markdown_table(results), end="")
    say(f"wrote {args.out / 'benchmark.json'}, benchmark.md and benchmark.png")
    failed = [c for c in results["cases"] if "error" in c]
    return 1 if failed else 0


def add_verbs(command: Callable) -> None:
    """Register ``spair benchmark`` with ``command`` (the decorator of :mod:`spair.cli`)."""
    command(COMMAND_WORDS, "measure training and inference speed, the step's split, memory and FLOP rate",
            _arguments,
            description="Train and run SPAIR on generated scenes of several sizes, with the wavefront schedule,\n"
                        "the raster (one cell at a time) schedule and without lateral connections, each case\n"
                        "in its own process. Reports images/s for training and inference, the training step\n"
                        "split by component, peak memory and the FLOP rate against a large matmul, and checks\n"
                        "the performance targets. Writes DIR/benchmark.json, benchmark.md and benchmark.png.\n"
                        "Run it on an otherwise idle machine; on a busy one use --threads 1 --clock cpu.\n"
                        "docs/performance.md explains the numbers.",
            examples=("spair benchmark",
                      "spair benchmark --quick",
                      "spair benchmark --sizes 48,256 --modes wavefront,raster --batch-size 16",
                      "spair benchmark --threads 1 --clock cpu",
                      "spair benchmark --sizes 48 --modes wavefront --weights pretrained --amp",
                      "spair benchmark --allocators"))(_run)
