#!/usr/bin/env python
"""Run the SPAIR benchmark from a source checkout: the options of ``spair benchmark`` (``--help``).

The benchmark lives in ``spair.experiments.benchmark`` (its command line in ``benchmark_cli``); this
script makes the package importable without installing it and, like the ``spair`` command, runs
under the glibc malloc tunables of ``spair.cli.MALLOC_TUNABLES`` (docs/performance.md), so both give
the same numbers. Writes results/benchmark/benchmark.json, benchmark.md and benchmark.png.

Usage::

    python benchmarks/run_benchmark.py                    # every size and mode
    python benchmarks/run_benchmark.py --quick
    python benchmarks/run_benchmark.py --threads 1 --clock cpu --sizes 48,64,256
    python benchmarks/run_benchmark.py --allocators
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
try:
    import spair  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(SRC))


def main(argv: list[str] | None = None) -> int:
    from spair.cli import MALLOC_TUNABLES
    from spair.errors import SpairError
    from spair.experiments import benchmark_cli

    if (os.environ.get("GLIBC_TUNABLES") is None and sys.platform.startswith("linux")
            and platform.libc_ver()[0] == "glibc" and argv is None):
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__.split("\n\n")[0])
    benchmark_cli._arguments(parser)
    args = parser.parse_args(argv)
    try:
        return benchmark_cli._run(args)
    except SpairError as e:
        print(f"run_benchmark.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
