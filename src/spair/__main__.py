"""``python -m spair``: the same command line as the ``spair`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
