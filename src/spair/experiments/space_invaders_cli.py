"""``spair experiment space-invaders``: the Space Invaders experiment (paper section 5.4, Figure 6).

A command-line hook: :func:`add_verbs` receives the ``command`` decorator of :mod:`spair.cli` and
registers the verb. Only argparse-level modules are imported here; the experiment (torch, ale-py)
is imported when the verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import command_line, int_at_least, sayer

SCALE_NAMES = ("quick", "paper", "tiny")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=SCALE_NAMES, default="quick",
                   help="quick: the CPU budget (about 30-40 minutes on 2 cores); paper: the authors' settings "
                        "(for a GPU); tiny: a one-minute smoke test that learns nothing")
    p.add_argument("--out", type=Path, default=Path("results/space_invaders"), metavar="DIR",
                   help="folder for the run folders background/ and spair/, results.json, figure6.png, pseudo_gt.png")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of the episodes, the crops, the initialization and the training")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="cache of the Atari frames (default: $SPAIR_CACHE, else $XDG_CACHE_HOME/spair, else ~/.cache/spair)")
    p.add_argument("--threads", type=int_at_least(0), default=0, metavar="N",
                   help="torch CPU threads (0 = all cores)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:k]'")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs in the run folders")


def _experiment_space_invaders(args: argparse.Namespace) -> int:
    from .space_invaders import run_space_invaders

    quiet = getattr(args, "quiet", False)
    say = sayer(args)

    run_space_invaders(args.out, args.scale, seed=args.seed, cache_dir=args.cache, num_threads=args.threads,
                       device=args.device, log=say, progress=not quiet, tensorboard=args.tensorboard,
                       command=command_line(args))
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair experiment space-invaders`` with the ``command`` decorator of :mod:`spair.cli`."""
    command("experiment space-invaders", "SPAIR on Space Invaders: train on 48x48 crops, detect on full frames",
            _arguments,
            description="Collect Space Invaders frames under a random policy (ale-py), train the background\n"
                        "colour alone, then SPAIR, on random 48x48 crops of the training episodes, and run it\n"
                        "on the full 210x160 frames of the test episode: reconstruction errors, AP and count\n"
                        "errors against ConnComp boxes on the invader rows, and a figure like the paper's\n"
                        "Figure 6. Finished stages are skipped when the command is run again.",
            examples=("spair experiment space-invaders",
                      "spair experiment space-invaders --scale tiny --out /tmp/si",
                      "spair experiment space-invaders --scale paper --device cuda --out results/space_invaders_paper"),
            )(_experiment_space_invaders)
