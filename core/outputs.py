"""Whole output sets: a stage's files appear in ``outdir`` together, or the set counts as absent.

A stage writes every file into a hidden staging folder inside ``outdir`` (same file system, so the
final moves are renames). :meth:`OutputSet.commit` then, in this order:

1. removes the reports of the sets this one replaces (its own older set, and for stage 1 also the
   final set built on the old coarse mesh): from here on those sets count as absent;
2. removes the files those old reports listed (no old preview or video is left beside new files);
3. renames each staged file into ``outdir``;
4. writes the report JSON last.

A set is *complete* when its report exists, parses, and every file it lists exists
(:func:`set_complete`). After an interruption at any point, ``outdir`` therefore holds the old
complete set, the new complete set, or no complete set (a resuming batch redoes the item); never a
report that describes files of another run. Staging folders and atomic-write temporaries left by a
killed process are removed by :func:`remove_stale` on the next run in that folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

__all__ = ["OutputSet", "remove_stale", "set_complete"]

STAGING_PREFIX = ".staging-"
# Atomic-write temporaries (core.fileio.atomic_path) and staging folders carry the writer's pid.
_PID_RE = re.compile(r"\.pid(\d+)\.")


def _report_outputs(path: Path) -> list[Path] | None:
    """The files a report lists under ``outputs`` (None when it is missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
        outputs = data["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(outputs, dict):
        return None
    return [Path(p) for p in outputs.values() if isinstance(p, str)]


def set_complete(report: str | os.PathLike) -> bool:
    """True when ``report`` exists, parses, and every file it lists under ``outputs`` exists."""
    files = _report_outputs(Path(report))
    return files is not None and all(p.is_file() for p in files)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(outdir: str | os.PathLike) -> list[Path]:
    """Remove staging folders and atomic-write temporaries of processes that no longer run.

    Returns what was removed. Leftovers of a live process (another run writing into the same
    folder) are kept.
    """
    outdir = Path(outdir)
    removed: list[Path] = []
    if not outdir.is_dir():
        return removed
    for p in outdir.iterdir():
        if not p.name.startswith("."):
            continue
        pids = _PID_RE.findall(p.name + ".")
        if not pids or _pid_alive(int(pids[-1])):
            continue
        if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif ".tmp" in p.name and (p.is_file() or p.is_symlink()):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class OutputSet:
    """The files of one stage for one item, staged and then moved into ``outdir`` as a whole.

    ``stem``: the file-name stem (``save_path``); ``report_suffix``: the suffix of this set's report
    (``_report.json``); ``replaces``: report suffixes of other sets this one makes stale (stage 1
    replaces the final set). Use as a context manager: an exception discards the staged files.
    """

    def __init__(
        self, outdir: str | os.PathLike, stem: str, report_suffix: str, replaces: Iterable[str] = ()
    ) -> None:
        self.outdir = Path(outdir)
        self.stem = stem
        self.report_suffix = report_suffix
        self.replaces = tuple(replaces)
        self.outdir.mkdir(parents=True, exist_ok=True)
        remove_stale(self.outdir)
        tag = f"{STAGING_PREFIX}{stem}.pid{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.staging = self.outdir / tag
        self.staging.mkdir()
        self.committed = False

    def path(self, suffix: str) -> Path:
        """Where to write ``<stem><suffix>`` now (inside the staging folder)."""
        return self.staging / f"{self.stem}{suffix}"

    def final_path(self, suffix: str) -> Path:
        """Where ``<stem><suffix>`` will be once committed (what reports list)."""
        return self.outdir / f"{self.stem}{suffix}"

    def commit(self, write_report: Callable[[Path], None]) -> Path:
        """Move the staged files in and write the report last with ``write_report(final_path)``."""
        old_reports = [self.final_path(s) for s in (self.report_suffix, *self.replaces)]
        old_files: list[Path] = []
        for rep in old_reports:
            old_files += _report_outputs(rep) or []
            rep.unlink(missing_ok=True)
        staged = sorted(p for p in self.staging.iterdir() if p.is_file())
        new_names = {p.name for p in staged}
        for old in old_files:
            # Only files of this stem in this folder: a report is data, never a licence to delete elsewhere.
            ours = old.parent.resolve() == self.outdir.resolve() and old.name.startswith(self.stem)
            if ours and old.name not in new_names:
                old.unlink(missing_ok=True)
        for p in staged:
            os.replace(p, self.outdir / p.name)
        report = self.final_path(self.report_suffix)
        write_report(report)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.committed = True
        return report

    def discard(self) -> None:
        """Drop everything staged; ``outdir`` is left as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()
