"""``spair experiment set``: the command-line verb of :mod:`spair.experiments.set_game`.

:func:`add_verbs` registers the verb with the ``command`` decorator of :mod:`spair.cli`. Only
argparse-level modules are imported here; the experiment (and torch with it) is imported by the
handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import add_cache_argument, check_out, command_line, int_list, sayer

COMMAND_WORDS = "experiment set"
DEFAULT_OUT = Path("results/set")
METHOD_NAMES = ("spair_fixed", "spair_unfixed", "convnet", "truebb")
CLASSIFIER_NAMES = ("recurrent", "mlp", "obj", "arn1", "arn3")


def _names(known: tuple[str, ...]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names out of ``known``."""
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in names if v not in known]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(known)}, got '{text}'")
        return names

    parse.__name__ = "names"
    return parse


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings to change, e.g. n_train=64000 stage2_steps=8000 spair_steps=4000")
    p.add_argument("--scale", choices=("quick", "paper"), default="quick",
                   help="budgets: 'quick' (about 60 min on 2 CPU cores for 3 seeds) or 'paper'")
    p.add_argument("--seeds", type=int_list("seeds", 0), default="0,1,2", metavar="S1,S2,...",
                   help="seeds (one stage-1 SPAIR and one stage-2 run per seed, method and classifier)")
    p.add_argument("--methods", type=_names(METHOD_NAMES), default=",".join(METHOD_NAMES), metavar="M1,M2,...",
                   help="methods: " + ", ".join(METHOD_NAMES))
    p.add_argument("--classifiers", type=_names(CLASSIFIER_NAMES), default="recurrent", metavar="C1,C2,...",
                   help="classifiers: recurrent (LSTM 256, the paper's), mlp, obj, arn1, arn3")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="folder for the runs, results.json and table.md; running again resumes")
    add_cache_argument(p)
    p.add_argument("--print-settings", action="store_true", help="print the resolved settings and exit")


def _run(args: argparse.Namespace) -> int:
    import json

    from ..config import apply_overrides, to_dict
    from .set_game import budget_estimate, run_set, settings_for_scale

    quiet = getattr(args, "quiet", False)
    say = sayer(args)

    settings = apply_overrides(settings_for_scale(args.scale), list(args.overrides))
    if args.print_settings:
        print(json.dumps({"scale": args.scale, "settings": to_dict(settings),
                          "estimated_training_cpu_seconds": budget_estimate(settings, args.seeds, args.methods,
                                                                             args.classifiers)}, indent=2))
        return 0
    check_out(args.out)
    command = command_line(args)
    results = run_set(args.out, args.scale, args.seeds, methods=args.methods, classifiers=args.classifiers,
                      settings=settings, cache_dir=args.cache, command=command, log=say, progress=not quiet)
    say(results["markdown"])
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair experiment set`` with ``command`` (the decorator of :mod:`spair.cli`)."""
    command(COMMAND_WORDS, "play SET from SPAIR's objects vs ConvNet and TrueBB (paper Table 1)", _arguments,
            description="Generate SET images (7 overlapping cards, balanced labels), train SPAIR without labels on\n"
                        "the training images (stage 1, one run per seed), then train a classifier (LSTM 256 by\n"
                        "default) to tell whether the cards hold a SET, on SPAIR's objects (Fixed and Unfixed) and\n"
                        "on the ConvNet and TrueBB baselines (stage 2). Writes DIR/results.json and DIR/table.md\n"
                        "(test accuracy, mean ± sd over seeds, next to the paper's Table 1). Finished runs are\n"
                        "skipped and interrupted ones resume. docs/downstream.md describes the budgets.",
            examples=("spair experiment set",
                      "spair experiment set --classifiers recurrent,obj,arn1 --seeds 0,1,2",
                      "spair experiment set --methods truebb,convnet n_train=64000",
                      "spair experiment set --scale paper --seeds 0,1,2,3,4,5,6",
                      "spair experiment set --print-settings"))(_run)
