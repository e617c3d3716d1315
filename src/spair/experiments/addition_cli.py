"""``spair experiment addition``: the command-line verb of :mod:`spair.experiments.addition`.

:func:`add_verbs` registers the verb with the ``command`` decorator of :mod:`spair.cli`. Only
argparse-level modules are imported here; the experiment (and torch with it) is imported by the
handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import add_cache_argument, check_out, command_line, int_list, sayer

COMMAND_WORDS = "experiment addition"
DEFAULT_OUT = Path("results/addition")
METHOD_NAMES = ("truebb", "conncomp", "convnet", "spair_fixed", "spair_unfixed", "air_fixed", "air_unfixed")


def parse_methods(text: str) -> list[str]:
    """argparse type: comma-separated method names out of :data:`METHOD_NAMES`."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in METHOD_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(METHOD_NAMES)}, got '{text}'")
    return names


def parse_sizes(text: str) -> list[int]:
    """argparse type: comma-separated training-set sizes; ``4k`` means 4000."""
    values = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            values.append(int(part[:-1]) * 1000 if part.endswith("k") else int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 1k,4000, got '{text}'") from None
    if not values or len(set(values)) != len(values) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected distinct positive sizes, got '{text}'")
    return values


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings to change, e.g. stage2_steps=8000 spair_steps=4000 classifier=mlp")
    p.add_argument("--scale", choices=("quick", "paper"), default="quick",
                   help="budgets: 'quick' (sizes 1k,4k,16k, about 75 min on 2 CPU cores for 1 seed) or 'paper'")
    p.add_argument("--seeds", type=int_list("seeds", 0), default="0", metavar="S1,S2,...",
                   help="seeds (one stage-1 and one stage-2 run per seed, size and method)")
    p.add_argument("--sizes", type=parse_sizes, default=None, metavar="K1,K2,...",
                   help="training-set sizes (default: the scale's; 1k,2k,...,128k for paper)")
    p.add_argument("--methods", type=parse_methods, default=",".join(METHOD_NAMES), metavar="M1,M2,...",
                   help="methods: " + ", ".join(METHOD_NAMES))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="folder for the runs, results.json and addition_accuracy.png; running again resumes")
    add_cache_argument(p)
    p.add_argument("--print-settings", action="store_true", help="print the resolved settings and exit")


def _run(args: argparse.Namespace) -> int:
    import json

    from ..config import apply_overrides, to_dict
    from .addition import budget_estimate, default_sizes, run_addition, settings_for_scale

    quiet = getattr(args, "quiet", False)
    say = sayer(args)

    settings = apply_overrides(settings_for_scale(args.scale), list(args.overrides))
    sizes = args.sizes or list(default_sizes(args.scale))
    if args.print_settings:
        print(json.dumps({"scale": args.scale, "sizes": sizes, "settings": to_dict(settings),
                          "estimated_training_cpu_seconds": budget_estimate(settings, sizes, args.seeds, args.methods)},
                         indent=2))
        return 0
    check_out(args.out)
    command = command_line(args)
    results = run_addition(args.out, args.scale, args.seeds, sizes, methods=args.methods, settings=settings,
                           cache_dir=args.cache, command=command, log=say, progress=not quiet)
    for row in results["per_size"]:
        parts = []
        for method, entry in row["methods"].items():
            s = entry["stats"]["test_accuracy"]
            parts.append(f"{method} {s['mean']:.3f}" + (f"±{s['sd']:.3f}" if s["n"] > 1 else ""))
        say(f"{row['size']} training images: test accuracy " + ", ".join(parts))
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair experiment addition`` with ``command`` (the decorator of :mod:`spair.cli`)."""
    command(COMMAND_WORDS, "sum the 5 digits of an image from SPAIR's objects vs baselines (paper Figure 4)",
            _arguments,
            description="For each training-set size and seed: train SPAIR and AIR without labels on the training\n"
                        "images (stage 1), then train a classifier (an LSTM over the objects) to output the sum of\n"
                        "the 5 digits, on SPAIR's and AIR's objects (Fixed: frozen; Unfixed: object encoder\n"
                        "fine-tuned) and on the TrueBB, ConnComp and ConvNet baselines (stage 2). Writes\n"
                        "DIR/results.json (test accuracy per method, size and seed; mean and sd) and\n"
                        "DIR/addition_accuracy.png. Finished runs are skipped and interrupted ones resume.\n"
                        "docs/downstream.md describes the budgets.",
            examples=("spair experiment addition",
                      "spair experiment addition --sizes 1k,4k --methods truebb,spair_fixed,spair_unfixed",
                      "spair experiment addition --scale paper --seeds 0,1,2,3,4,5",
                      "spair experiment addition stage2_steps=8000 spair_steps=4000",
                      "spair experiment addition --print-settings"))(_run)
