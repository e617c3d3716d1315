"""``python -m spair``: the same command line as the ``spair`` console script."""

from .cli import entry

if __name__ == "__main__":
    entry()
