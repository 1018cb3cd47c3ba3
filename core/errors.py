"""Errors the user can fix, and the one wrapper that turns them into an exit status.

Every entry point runs its body through :func:`exit_code`: a :class:`UserError` prints
``error: <message>`` on stderr and exits 2, Ctrl-C prints one line and exits 130; no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "UserError", "exit_code"]

#: Exit status of an entry script that stops on a :class:`UserError` (argparse uses 2 too).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input (file, config, environment), stated in one line.

    The message must say what is wrong and, where possible, how to fix it; no traceback is shown.
    """


def exit_code(body: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run an entry point's ``body`` and return its exit status (``None`` counts as 0).

    UserError -> ``error: <message>`` on stderr, 2; KeyboardInterrupt -> ``interrupted`` line, 130.
    """
    try:
        return body() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
