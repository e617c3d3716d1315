"""``spair experiment generalization`` and ``spair experiment ablation``: the command-line verbs of
:mod:`spair.experiments.generalization` and :mod:`spair.experiments.ablation`.

:func:`add_verbs` registers both verbs with the ``command`` decorator of :mod:`spair.cli`, which
calls it while building its registry. Only argparse-level modules are imported here; the
experiments (and torch with them) are imported by the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..cli_args import add_cache_argument, check_out, command_line, int_list, sayer

GENERALIZATION_WORDS = "experiment generalization"
ABLATION_WORDS = "experiment ablation"
DEFAULT_GENERALIZATION_OUT = Path("results/generalization")
DEFAULT_ABLATION_OUT = Path("results/ablation")
SUMMARY_NS = (1, 5, 10, 15, 20)
"""Numbers of digits whose test AP the verbs print at the end."""


def parse_conditions(text: str) -> list[str]:
    """argparse type: comma-separated digit ranges (``"1-5,11-15"`` → ``["1-5", "11-15"]``)."""
    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text) if sep else int(lo_text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected digit ranges like 1-5,6-10, got '{text}'") from None
        if lo < 0 or hi < max(lo, 1):
            raise argparse.ArgumentTypeError(f"'{part}': expected a range lo-hi with 0 <= lo <= hi and hi >= 1")
        names.append(f"{lo}-{hi}")
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct digit ranges like 1-5,6-10, got '{text}'")
    return names


def _common_arguments(p: argparse.ArgumentParser, default_out: Path, default_conditions: str) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings to change, e.g. spair_steps=6000 n_test=500 spair_overrides=[\"optim.lr=3e-4\"]")
    p.add_argument("--scale", choices=("quick", "paper"), default="quick",
                   help="budgets: 'quick' (about 1 hour on 2 CPU cores, docs/generalization.md) or 'paper' "
                        "(the paper's)")
    p.add_argument("--seeds", type=int_list("seeds", 0), default="0", metavar="S1,S2,...",
                   help="seeds of the SPAIR runs (one run per seed and curve)")
    p.add_argument("--conditions", type=parse_conditions, default=default_conditions, metavar="LO-HI,...",
                   help="training conditions: ranges of digits per base image")
    p.add_argument("--out", type=Path, default=default_out, metavar="DIR",
                   help="folder for the runs, results.json and the figures; running again resumes")
    add_cache_argument(p)
    p.add_argument("--print-settings", action="store_true", help="print the resolved settings and exit")


def _generalization_arguments(p: argparse.ArgumentParser) -> None:
    _common_arguments(p, DEFAULT_GENERALIZATION_OUT, "1-5,6-10,11-15")


def _ablation_arguments(p: argparse.ArgumentParser) -> None:
    _common_arguments(p, DEFAULT_ABLATION_OUT, "11-15,1-5")
    p.add_argument("--lookbacks", type=int_list("lookbacks", 0, 4), default="0,1", metavar="L1,L2,...",
                   help="lookbacks L of the lateral connections (0 = none; the spec also ran 2)")
    p.add_argument("--conncomp", action="store_true", help="add ConnComp's curves (tau tuned per n and metric)")


def _print_settings(args: argparse.Namespace, settings: Any, lookbacks: list[int], conncomp: bool) -> None:
    import json

    from ..config import to_dict
    from .generalization import budget_estimate

    runs = [L for L in lookbacks for _ in args.conditions]
    print(json.dumps({"scale": args.scale, "conditions": args.conditions, "seeds": args.seeds,
                      "settings": to_dict(settings),
                      "estimated_cpu_seconds": budget_estimate(settings, runs, len(args.seeds), conncomp)}, indent=2))


def _summarize(results: dict[str, Any], say: Callable[[str], None]) -> None:
    """One line per curve: its test SPAIR-AP at a few numbers of digits."""
    ns = [n for n in SUMMARY_NS if n in results["n_digits"]]
    for name, curve in results["curves"].items():
        ap = curve["mean"]["spair_AP"]
        parts = [f"n={n} {ap[n - 1]:.3f}" for n in ns if ap[n - 1] is not None]
        say(f"{curve['label']}: test SPAIR-AP " + ", ".join(parts))


def _run_generalization(args: argparse.Namespace) -> int:
    from ..config import apply_overrides
    from .generalization import run_generalization, settings_for_scale, spair_config

    say = sayer(args)
    settings = apply_overrides(settings_for_scale(args.scale), list(args.overrides))
    if args.print_settings:
        lookback = spair_config(args.conditions[0], settings, 0).model.n_lookback
        _print_settings(args, settings, [lookback], conncomp=True)
        return 0
    check_out(args.out)
    results = run_generalization(args.out, args.scale, args.seeds, args.conditions, settings=settings,
                                 cache_dir=args.cache, command=command_line(args),
                                 log=say, progress=not getattr(args, "quiet", False))
    _summarize(results, say)
    return 0


def _run_ablation(args: argparse.Namespace) -> int:
    from ..config import apply_overrides
    from .ablation import run_ablation, settings_for_scale

    say = sayer(args)
    settings = apply_overrides(settings_for_scale(args.scale), list(args.overrides))
    if args.print_settings:
        _print_settings(args, settings, args.lookbacks, conncomp=args.conncomp)
        return 0
    check_out(args.out)
    results = run_ablation(args.out, args.scale, args.seeds, args.lookbacks, args.conditions, settings=settings,
                           conncomp=args.conncomp, cache_dir=args.cache,
                           command=command_line(args), log=say,
                           progress=not getattr(args, "quiet", False))
    _summarize(results, say)
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair experiment generalization`` and ``spair experiment ablation`` with
    ``command`` (the decorator of :mod:`spair.cli`)."""
    command(GENERALIZATION_WORDS, "SPAIR trained on crops, tested on larger, denser images (paper Figure 3)",
            _generalization_arguments,
            description="For each training condition (digits per 84x84 base image: 1-5, 6-10, 11-15), train SPAIR\n"
                        "on random 48x48 crops only (one run per seed; checkpoints selected on validation crops),\n"
                        "then test it on full 84x84 images with exactly n = 1..20 digits of unseen test digits:\n"
                        "AP, count absolute error and count 0-1 error per n. ConnComp's tau is tuned per n and per\n"
                        "metric on full validation images. Writes DIR/results.json, DIR/generalization.png (three\n"
                        "panels like Figure 3) and DIR/examples.png. Finished runs are skipped and interrupted ones\n"
                        "resume, so the same command continues an experiment. docs/generalization.md has the budgets.",
            examples=("spair experiment generalization",
                      "spair experiment generalization --seeds 0,1,2 --conditions 1-5,11-15",
                      "spair experiment generalization --scale paper --seeds 0,1,2,3,4,5,6,7",
                      "spair experiment generalization spair_steps=6000 n_test=500",
                      "spair experiment generalization --print-settings"))(_run_generalization)
    command(ABLATION_WORDS, "SPAIR with and without lateral connections (paper Figure 7)", _ablation_arguments,
            description="Train SPAIR with lateral connections reaching L cells back (L = 0: none) in the training\n"
                        "conditions 11-15 and 1-5 of the generalization experiment, and test every run on full\n"
                        "84x84 images with exactly n = 1..20 digits (the same protocol). lookback_settings=spec\n"
                        "gives each L the authors' kernel size and count-prior settings (spec 8.4). Writes\n"
                        "DIR/results.json, DIR/ablation.png (one row of three panels per condition, one line per L)\n"
                        "and DIR/examples.png; running again resumes.",
            examples=("spair experiment ablation",
                      "spair experiment ablation --lookbacks 0,1,2 --conditions 11-15",
                      "spair experiment ablation --seeds 0,1,2 lookback_settings=spec",
                      "spair experiment ablation --scale paper --seeds 0,1,2,3",
                      "spair experiment ablation --print-settings"))(_run_ablation)
