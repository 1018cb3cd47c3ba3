"""A fake ``nvidia-cuda-mps-control`` for the MPS tests: a shell script put first on PATH.

Each call appends one line ``argv|stdin|CUDA_MPS_PIPE_DIRECTORY`` to ``$MD_FAKE_MPS_LOG``. ``-d``
makes what the real daemon makes in its pipe folder once it is up (H200, CUDA 13 driver): the control
socket files ``control``, ``control_lock``, ``control_privileged`` and its pid file; ``quit`` on stdin
removes only the pid file (the real daemon leaves the socket files behind), 0.4 s later (in the
background, after ``quit`` has returned) in mode ``slowquit``. ``$MD_FAKE_MPS_MODE``: ``fail``
(exit 1 with a message on stderr) or ``silent`` (exit 0 but no control socket: a daemon that never
comes up).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.mps import CONTROL

LOG = "MD_FAKE_MPS_LOG"
MODE = "MD_FAKE_MPS_MODE"
SCRIPT = """#!/bin/sh
stdin=""
if [ "$1" != "-d" ]; then stdin=$(cat); fi
printf '%s|%s|%s\\n' "$*" "$stdin" "$CUDA_MPS_PIPE_DIRECTORY" >> "$MD_FAKE_MPS_LOG"
case "$MD_FAKE_MPS_MODE" in
  fail) echo "fake daemon: cannot start" >&2; exit 1;;
  silent) exit 0;;
esac
p="$CUDA_MPS_PIPE_DIRECTORY"
if [ "$1" = "-d" ]; then touch "$p/control" "$p/control_lock" "$p/control_privileged" "$p/nvidia-cuda-mps-control.pid"; fi
if [ "$stdin" = "quit" ]; then
  if [ "$MD_FAKE_MPS_MODE" = "slowquit" ]; then (sleep 0.4; rm -f "$p/nvidia-cuda-mps-control.pid") >/dev/null 2>&1 &
  else rm -f "$p/nvidia-cuda-mps-control.pid"; fi
fi
"""


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str = "") -> Path:
    """Put the fake control binary first on PATH (``mode``: '', fail, silent, slowquit); -> its call log."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / CONTROL
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "mps_calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(LOG, str(log))
    monkeypatch.setenv(MODE, mode)
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("CUDA_MPS_LOG_DIRECTORY", raising=False)
    return log


def calls(log: Path) -> list[tuple[str, str, str]]:
    """The recorded calls: ``(argv, stdin, CUDA_MPS_PIPE_DIRECTORY)`` each."""
    if not log.exists():
        return []
    return [tuple(line.split("|")) for line in log.read_text().splitlines()]
