"""User errors: bad input that the command line reports in one line and exits with code 2."""
from __future__ import annotations

__all__ = ["UserError", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (config, CLI flag, data, checkpoint, disk).

    The message is one line that says what is wrong and what to do; the entry points print it
    without a traceback and exit with EXIT_USER_ERROR.
    """
