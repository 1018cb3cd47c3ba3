"""The command-line wrapper of the stage scripts: parse the config, set up logging, run, exit code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from core.errors import exit_code
from pipeline.config import load_config

__all__ = ["cli", "setup_logging"]


def setup_logging(quiet: bool) -> None:
    """One logger for the project; quiet shows warnings only."""
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(message)s", force=True)


def cli(run: Callable[[DictConfig], object], argv: Sequence[str] | None = None) -> int:
    """Parse ``[--config FILE] [key=value ...]``, run ``run(cfg)``; returns the exit status.

    A UserError becomes ``error: <message>`` and 2, Ctrl-C 130 (see :func:`core.errors.exit_code`).
    """

    def body() -> int:
        cfg = load_config(argv)
        setup_logging(bool(cfg.get("quiet", False)))
        run(cfg)
        return 0

    return exit_code(body)
