"""``spair experiment comparison``: the command-line verb of :mod:`spair.experiments.comparison`.

:func:`add_verbs` registers the verb with the ``command`` decorator of :mod:`spair.cli`, which
calls it while building its registry. Only argparse-level modules are imported here; the
experiment (and torch with it) is imported by the handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import add_cache_argument, check_out, command_line, int_list, sayer

COMMAND_WORDS = "experiment comparison"
DEFAULT_OUT = Path("results/comparison")
METHOD_NAMES = ("spair", "air", "dair", "conncomp")


def parse_methods(text: str) -> list[str]:
    """argparse type: comma-separated method names out of spair, air, dair, conncomp."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in METHOD_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(METHOD_NAMES)}, got '{text}'")
    return names


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings to change, e.g. spair_steps=3000 n_train=20000 air_lr=3e-4")
    p.add_argument("--scale", choices=("quick", "paper"), default="quick",
                   help="budgets: 'quick' (about 90 min on 2 CPU cores for 1 seed) or 'paper' (the paper's)")
    p.add_argument("--seeds", type=int_list("seeds", 0), default="0", metavar="S1,S2,...",
                   help="seeds of the learned models (one run per seed and n)")
    p.add_argument("--n", dest="n_values", type=int_list("numbers of digits", 1), default="1,3,5,7,9",
                   metavar="N1,N2,...", help="numbers of digits per image")
    p.add_argument("--methods", type=parse_methods, default=",".join(METHOD_NAMES), metavar="M1,M2,...",
                   help="methods to run: spair, air, dair, conncomp")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="folder for the runs, results.json and comparison_ap.png; running again resumes")
    add_cache_argument(p)
    p.add_argument("--print-settings", action="store_true", help="print the resolved settings and exit")


def _run(args: argparse.Namespace) -> int:
    import json

    from ..config import apply_overrides, to_dict
    from .comparison import budget_estimate, run_comparison, settings_for_scale

    quiet = getattr(args, "quiet", False)
    say = sayer(args)

    settings = apply_overrides(settings_for_scale(args.scale), list(args.overrides))
    if args.print_settings:
        print(json.dumps({"scale": args.scale, "settings": to_dict(settings),
                          "estimated_training_cpu_seconds": budget_estimate(settings, args.n_values, args.seeds,
                                                                             args.methods)}, indent=2))
        return 0
    check_out(args.out)
    command = command_line(args)
    results = run_comparison(args.out, args.scale, args.seeds, args.n_values, methods=args.methods, settings=settings,
                             cache_dir=args.cache, command=command, log=say, progress=not quiet)
    for row in results["per_n"]:
        parts = []
        for method, entry in row["methods"].items():
            s = entry["stats"]["spair_AP"]
            parts.append(f"{method} {s['mean']:.3f}" + (f"±{s['sd']:.3f}" if s["n"] > 1 else ""))
        say(f"n={row['n_digits']}: test SPAIR-AP " + ", ".join(parts))
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair experiment comparison`` with ``command`` (the decorator of :mod:`spair.cli`)."""
    command(COMMAND_WORDS, "SPAIR vs AIR, DAIR and ConnComp on 48x48 scenes with n digits (paper Figure 2)",
            _arguments,
            description="For each number of digits n: train SPAIR, AIR and DAIR (one run per seed) on 48x48\n"
                        "scenes with exactly n digits (train digits, seed 0), select checkpoints on validation\n"
                        "scenes (val digits, seed 1), tune ConnComp's tau there, and evaluate everything on test\n"
                        "scenes of unseen digits (seed 2). AIR and DAIR are told the number of digits. Writes\n"
                        "DIR/results.json (settings, per-seed numbers, mean and sd) and DIR/comparison_ap.png.\n"
                        "Finished runs are skipped and interrupted ones resume, so the same command continues\n"
                        "an experiment. docs/comparison.md describes the budgets.",
            examples=("spair experiment comparison",
                      "spair experiment comparison --seeds 0,1,2 --n 1,5,9 --out results/comparison",
                      "spair experiment comparison --scale paper --seeds 0,1,2,3,4,5",
                      "spair experiment comparison spair_steps=4000 --methods spair,conncomp",
                      "spair experiment comparison --print-settings"))(_run)
