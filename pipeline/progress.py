"""Progress of a stage's SIR iterations: a rich bar on a terminal, one log line each otherwise."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger("microdreamer")


@contextmanager
def progress(total: int, description: str, quiet: bool) -> Iterator[Callable[[int, int, torch.Tensor], None]]:
    """A rich progress bar over SIR iterations; yields the loop's ``on_iteration`` callback."""
    if quiet or (not sys.stderr.isatty() and os.environ.get("MD_PROGRESS") != "1"):
        # Non-interactive: one log line per iteration keeps logs readable.
        def on_iter(i: int, n: int, loss: torch.Tensor) -> None:
            if not quiet:
                log.info("%s %d/%d loss %.4g", description, i + 1, n, float(loss))

        yield on_iter
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, loss="-")

        def on_iter(i: int, n: int, loss: torch.Tensor) -> None:
            bar.update(task, completed=i + 1, loss=f"{float(loss):.4g}")

        yield on_iter
