"""Errors the user can fix: entry scripts print ``error: <message>`` to stderr and exit 2."""

from __future__ import annotations

__all__ = ["EXIT_USER_ERROR", "UserError"]

#: Exit status of an entry script that stops on a :class:`UserError` (argparse uses 2 too).
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input (file, config, environment), stated in one line.

    The message must say what is wrong and, where possible, how to fix it; no traceback is shown.
    """
