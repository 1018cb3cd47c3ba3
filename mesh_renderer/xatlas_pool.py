"""Warm xatlas processes kept between unwraps, so a coarse mesh does not wait for process starts.

A fresh ``python xatlas_job.py`` spends 0.25-0.35 s (GPU host, measured) importing numpy and
xatlas before it unwraps anything, as long as the unwrap of a 19k-face coarse mesh in 4 parts.
The pool keeps ``xatlas_job.py --serve`` processes alive: :func:`prestart` launches them while
stage 1's SIR loop runs, and :func:`launch` hands a job to an idle one (or a new one). A job's
handle behaves like the ``subprocess.Popen`` of a one-shot process for :mod:`mesh_renderer.uv`
(``poll``, ``communicate``, ``kill``, ``returncode``), so a job past its time budget is still
stopped by killing its process, which then leaves the pool.

Idle servers exit when their parent's end of the pipe closes (at exit, or when the parent dies);
:func:`shutdown` ends them at once. A forked child never uses its parent's servers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["PoolJob", "idle_count", "launch", "prestart", "shutdown"]

_JOB_SCRIPT = Path(__file__).with_name("xatlas_job.py")
_lock = threading.Lock()
_idle: list[subprocess.Popen] = []
_owner_pid = os.getpid()


def _spawn() -> subprocess.Popen:
    """A new ``xatlas_job.py --serve`` process with pipes on stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, str(_JOB_SCRIPT), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )


def _own_idle() -> list[subprocess.Popen]:
    """The idle list of this process (emptied, not closed, in a forked child: those are the parent's)."""
    global _owner_pid
    if os.getpid() != _owner_pid:
        _idle.clear()
        _owner_pid = os.getpid()
    return _idle


def prestart(n: int) -> None:
    """Make sure ``n`` idle servers exist (started now, importing while the caller goes on)."""
    with _lock:
        idle = _own_idle()
        idle[:] = [p for p in idle if p.poll() is None]
        for _ in range(max(0, n - len(idle))):
            idle.append(_spawn())


def idle_count() -> int:
    """How many live servers wait for a job."""
    with _lock:
        return sum(p.poll() is None for p in _own_idle())


def launch(src: Path, dst: Path) -> "PoolJob":
    """Unwrap ``src`` into ``dst`` on an idle server (a new one when none is idle)."""
    if any(c in str(p) for p in (src, dst) for c in "\t\n"):
        raise ValueError(f"xatlas pool: a path with a tab or newline cannot be sent: {src}, {dst}")
    proc = None
    with _lock:
        idle = _own_idle()
        while idle and proc is None:
            cand = idle.pop()
            proc = cand if cand.poll() is None else None
    line = f"{src}\t{dst}\n"
    if proc is not None:
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
            return PoolJob(proc)
        except OSError:  # it died between the check and the write (BrokenPipeError): a fresh one
            proc.kill()
            proc.wait()
    proc = _spawn()
    proc.stdin.write(line)
    proc.stdin.flush()
    return PoolJob(proc)


class PoolJob:
    """One job on a server, with the ``Popen`` surface :mod:`mesh_renderer.uv` uses.

    ``returncode``: None while running, 0 done, 1 failed (message from ``communicate``), negative
    when killed, or the server's own exit status when it died mid-job.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.returncode: int | None = None
        self._err = b""

    def poll(self) -> int | None:
        """The job's status without waiting (its answer is read when there is one)."""
        if self.returncode is None:
            self._wait(0.0)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[None, bytes]:
        """Wait up to ``timeout`` s for the answer: ``(None, stderr-like message)``; TimeoutExpired past it."""
        if self.returncode is None and not self._wait(timeout):
            raise subprocess.TimeoutExpired([str(_JOB_SCRIPT), "--serve"], timeout)
        return None, self._err

    def kill(self) -> None:
        """Stop the job by killing its server (which then never returns to the pool)."""
        if self.returncode is None:
            self.proc.kill()
            self.proc.wait()
            self._close_pipes()
            self.returncode = -9

    def _wait(self, timeout: float | None) -> bool:
        """Read the answer within ``timeout`` (None = forever); True when the job has ended."""
        # poll(), not select(): select() cannot watch a descriptor above 1023 (a busy process, a
        # raised ulimit) and raises ValueError there.
        watch = select.poll()
        watch.register(self.proc.stdout, select.POLLIN)
        if not watch.poll(None if timeout is None else timeout * 1000):
            return False
        answer = self.proc.stdout.readline()
        if answer == "":  # the server died mid-job
            status = self.proc.wait()
            self._close_pipes()
            self.returncode = status if status != 0 else 1
            self._err = f"the xatlas process ended without an answer (exit status {status})".encode()
            return True
        answer = answer.rstrip("\n")
        self.returncode = 0 if answer == "ok" else 1
        self._err = b"" if answer == "ok" else answer.removeprefix("err ").encode()
        with _lock:
            _own_idle().append(self.proc)  # alive and free again
        return True

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def shutdown(timeout: float = 2.0) -> None:
    """End every idle server: close its stdin (it exits), kill it past ``timeout`` s."""
    with _lock:
        procs = list(_own_idle())
        _idle.clear()
    for p in procs:
        with contextlib.suppress(OSError):
            p.stdin.close()
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()


atexit.register(shutdown)
