"""``spair data atari``: collect Atari frames under a random policy into a dataset folder.

A command-line hook: :func:`add_verbs` receives the ``command`` decorator of :mod:`spair.cli` and
registers the verb. Only argparse-level modules are imported here; the collector
(:mod:`spair.data.atari`, which needs ale-py) is imported when the verb runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..cli_args import int_at_least


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, got '{text}'")
    return value


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--game", default="space_invaders", metavar="NAME",
                   help="the game: an ALE ROM id (space_invaders, pong, ...); SpaceInvaders and "
                        "SpaceInvadersNoFrameskip-v4 also work")
    p.add_argument("--episodes", type=int_at_least(1), default=12, metavar="N",
                   help="episodes to play; the last --test-episodes are test, the --val-episodes before "
                        "them validation, the rest training")
    p.add_argument("--max-frames-per-episode", type=int_at_least(1), default=100, metavar="K",
                   help="frames kept per episode, drawn uniformly among all its frames")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of the emulator and of the random policy (the same seed gives the same frames)")
    p.add_argument("--frameskip", type=int_at_least(1), default=1, metavar="F",
                   help="emulator frames per agent step, the action repeated (1 = every frame, like NoFrameskip-v4)")
    p.add_argument("--sticky-actions", type=_probability, default=0.0, metavar="P",
                   help="probability that the emulator repeats the previous action (0 = deterministic, like -v4)")
    p.add_argument("--val-episodes", type=int_at_least(1), default=1, metavar="N",
                   help="episodes of the validation split")
    p.add_argument("--test-episodes", type=int_at_least(1), default=1, metavar="N",
                   help="episodes of the test split (the last ones)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder to create, with one dataset folder per split: DIR/train, DIR/val, DIR/test")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds Atari frames")


def _check_destination(out: Path, overwrite: bool) -> None:
    from ..errors import SpairError

    if out.exists() and not out.is_dir():
        raise SpairError(f"--out exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SpairError(f"output folder is not empty: {out} (use --overwrite to replace Atari frames)")
        if not (out / "train" / "manifest.json").is_file():
            raise SpairError(f"--overwrite only replaces a folder of Atari frames; {out} has no train/manifest.json")


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """``write(staging)`` into a new folder beside ``out``, then swap it in: nothing is left behind
    on failure and an old ``out`` is removed only once the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(staging)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _data_atari(args: argparse.Namespace) -> int:
    from .atari import AtariSpec, collect_frames, resolve_game, save_atari_dataset

    quiet = getattr(args, "quiet", False)

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    out: Path = args.out
    _check_destination(out, args.overwrite)
    spec = AtariSpec(game=args.game, n_episodes=args.episodes, max_frames_per_episode=args.max_frames_per_episode,
                     seed=args.seed, frameskip=args.frameskip, repeat_action_probability=args.sticky_actions,
                     n_val_episodes=args.val_episodes, n_test_episodes=args.test_episodes)
    resolve_game(spec.game)  # an unknown game fails before anything is played
    data = collect_frames(spec, log=say)
    command = shlex.join(["spair", *getattr(args, "argv", [])])
    _write_folder(out, lambda folder: save_atari_dataset(folder, data, extra={"command": command}))
    counts = ", ".join(f"{len(data.splits[s])} {s}" for s in ("train", "val", "test"))
    say(f"wrote {counts} frames of {spec.game} ({data.train.images.shape[1]}x{data.train.images.shape[2]}, "
        f"ale-py {data.ale_py_version}) to {out}/{{train,val,test}}")
    return 0


def add_verbs(command: Callable) -> None:
    """Register ``spair data atari`` with the ``command`` decorator of :mod:`spair.cli`."""
    command("data atari", "collect Atari frames under a random policy (ale-py)", _arguments,
            description="Play episodes of an Atari game with uniformly random actions in the Arcade\n"
                        "Learning Environment (ale-py, whose wheel includes the ROMs) and keep at most K\n"
                        "full RGB frames (210x160) per episode, drawn uniformly. Episodes are split in\n"
                        "order: training, then --val-episodes, then the last --test-episodes. Each split\n"
                        "is a dataset folder (scenes.npz + manifest.json) whose boxes are a pseudo\n"
                        "ground truth: groups of pixels that differ from the most frequent colour.\n"
                        "The same settings, seed and ale-py version give byte-identical frames.",
            examples=("spair data atari --game space_invaders --out data/space_invaders",
                      "spair data atari --game pong --episodes 5 --max-frames-per-episode 50 --seed 3 --out data/pong"),
            )(_data_atari)
