"""The one exception type the command line turns into a single clear error line.

Library code raises :class:`SpairError` (or a subclass) for anything a user can cause: a file that
is not an image, a config value out of range, a checkpoint of another architecture. ``spair.cli``
catches it, prints ``spair: error: <message>`` and exits with :attr:`SpairError.exit_code`; with
``--debug`` the traceback is shown as well. Anything else is a bug and is allowed to propagate.
"""

from __future__ import annotations


class SpairError(Exception):
    """A user-facing error. The message should name the file or field at fault."""

    exit_code = 2


class ConfigError(SpairError):
    """An unknown key, a wrong type or an out-of-range value in a configuration."""


class DataError(SpairError):
    """Unreadable, corrupt or inconsistent input data (images, datasets, downloads)."""


class CheckpointError(SpairError):
    """A missing, truncated, corrupt, unsafe or incompatible checkpoint."""
