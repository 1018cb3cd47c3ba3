"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

Readers (a resuming batch, a viewer) never see half a file: either the old file or the new one.
On an exception the temporary file is removed and the target is left untouched. The final file
gets the usual permissions of a newly created file (``0o666 & ~umask``, e.g. 0644), not the 0600
the temporary file is created with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary name keeps the suffix so writers that pick a format from it (imageio) still work.
    On an exception the temporary file is removed and ``path`` is left untouched. Parent folders
    are created as needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        # The name is known before the file exists, so an exception at any point (Ctrl-C's
        # KeyboardInterrupt lands between any two steps) finds it here and removes it; it carries
        # this process's pid, so a file of that name is this process's own.
        while True:
            tmp = path.parent / f".{path.stem}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"
            with contextlib.suppress(FileExistsError):
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 unless told); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as fh:
        fh.write(text)
    return path
