"""CUDA Multi-Process Service (MPS) for several worker processes sharing a GPU.

Without MPS a GPU time-slices between the CUDA contexts of separate processes, so their kernels
never overlap; with an MPS control daemon running, the processes become clients of one MPS server
whose single context runs their kernels side by side (one H200, 16 images: 3 workers 9.5
objects/min without MPS, 11.8 with it). :func:`mps_daemon` starts a private control daemon for the
block (its pipe and log folders in a fresh ``mkdtemp`` folder), hands back the environment the
workers need (``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_LOG_DIRECTORY``) and stops the daemon (and its
server) with ``quit`` when the block ends, however it ends. A process killed outright (``kill -9``)
cannot do that: its daemon outlives it; stop it by hand with
``echo quit | CUDA_MPS_PIPE_DIRECTORY=<the pipe folder logged at start> nvidia-cuda-mps-control``.

No torch here: the driver decides before any worker initialises CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

__all__ = ["CONTROL", "LOG_ENV", "MODES", "PIPE_ENV", "MpsSession", "mps_daemon", "mps_decision"]

log = logging.getLogger("microdreamer.mps")

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
MODES = ("auto", "on", "off")
START, USER, SKIP = "start", "user", "skip"  # mps_decision's actions
# A unix socket path holds ~107 bytes; a long TMPDIR (a cluster job's scratch) would not fit the daemon's.
MAX_ROOT_LEN = 60
QUIT_WAIT = 3.0  # seconds to wait for the daemon's pid file to go after ``quit``
# The daemon's pid file in its pipe folder: removed as the daemon exits after ``quit``, unlike the
# control socket files, which stay (H200, driver of CUDA 13: gone 0.09 s after ``quit`` returned).
PID_FILE = "nvidia-cuda-mps-control.pid"


@dataclass
class MpsSession:
    """What :func:`mps_daemon` did: ``used`` (workers run as MPS clients), ``started`` (by us) and why.

    ``env``: the variables the workers' environment needs (empty unless ``started``); ``pipe_dir``:
    the daemon's pipe folder (ours, or the user's when ``CUDA_MPS_PIPE_DIRECTORY`` was set).
    """

    used: bool
    started: bool
    reason: str
    pipe_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict:
        """The batch summary's record of it."""
        return {"used": self.used, "started": self.started, "pipe_dir": self.pipe_dir, "reason": self.reason}


def mps_decision(
    mode: str, workers: int, gpus: int, environ: Mapping[str, str], control: str | None
) -> tuple[str, str]:
    """Whether to start MPS -> ``(action, reason)``; action ``start``, ``user`` (theirs) or ``skip``.

    ``gpus``: GPUs the ``workers`` spread over (0: not on CUDA); ``control``: the control binary's
    path or None when it is not on PATH (a UserError for ``mode="on"``).
    """
    if mode not in MODES:
        raise UserError(f"--mps {mode}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return SKIP, "--mps off"
    if gpus <= 0:
        return SKIP, "the workers do not run on a CUDA GPU"
    if workers <= gpus:
        return SKIP, "every worker has a GPU of its own"
    if environ.get(PIPE_ENV):
        return USER, f"{PIPE_ENV} is set: the workers use that MPS daemon"
    if control is None:
        if mode == "on":
            raise UserError(f"--mps on: {CONTROL} is not on PATH (it comes with the NVIDIA driver)")
        return SKIP, f"{CONTROL} is not on PATH"
    return START, f"{workers} workers share {gpus} GPU(s)"


def _tmp_root() -> str:
    """Where the daemon's private folder goes: the temp folder, or /tmp when that path is too long."""
    root = tempfile.gettempdir()
    return "/tmp" if len(root) > MAX_ROOT_LEN and os.path.isdir("/tmp") else root


def _daemon_up(pipe: Path) -> bool:
    """Whether the control daemon has made its control socket/pipe in ``pipe``."""
    try:
        return any(p.name.startswith("control") for p in pipe.iterdir())
    except OSError:
        return False


def _first_line(path: Path) -> str:
    """The first non-empty line of a small text file ('' when absent)."""
    try:
        lines = [s.strip() for s in path.read_text(errors="replace").splitlines() if s.strip()]
    except OSError:
        return ""
    return lines[0] if lines else ""


def _start(control: str, root: Path, env: dict[str, str], timeout: float) -> str | None:
    """Run ``control -d`` and wait for its control socket; None when it is up, else why not."""
    pipe = Path(env[PIPE_ENV])
    err = root / "start.err"
    try:
        # Output to a file, not a pipe: the forked daemon may keep the descriptors open for good.
        with open(err, "w") as f:
            proc = subprocess.run(
                [control, "-d"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        return f"{CONTROL} -d did not return within {timeout:g} s"
    except OSError as e:
        return f"{CONTROL} -d: {e.strerror or e}"
    if proc.returncode != 0:
        why = _first_line(err) or _first_line(Path(env[LOG_ENV]) / "control.log")
        return f"{CONTROL} -d exited with code {proc.returncode}" + (f": {why}" if why else "")
    deadline = time.monotonic() + timeout
    while not _daemon_up(pipe):
        if time.monotonic() > deadline:
            return f"the control daemon made no control socket in {pipe} within {timeout:g} s"
        time.sleep(0.05)
    return None


def _stop(control: str, env: dict[str, str], timeout: float) -> None:
    """Send ``quit`` to the control daemon (it stops its server too) and wait briefly for it to go."""
    try:
        subprocess.run(
            [control],
            input=b"quit\n",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("MPS: could not stop the control daemon (%s); pipe folder %s", e, env[PIPE_ENV])
        return
    # ``quit`` returns once the daemon has let its clients finish; the daemon itself goes a moment
    # later. Waiting on the control socket would always take QUIT_WAIT: the daemon leaves it behind.
    pid_file = Path(env[PIPE_ENV]) / PID_FILE
    deadline = time.monotonic() + min(timeout, QUIT_WAIT)
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def mps_daemon(
    mode: str,
    workers: int,
    gpus: int,
    tmp_root: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Iterator[MpsSession]:
    """An MPS control daemon of our own for the block when ``workers`` processes share ``gpus`` GPUs.

    ``mode``: ``auto`` starts it when more workers than GPUs run on CUDA, ``nvidia-cuda-mps-control``
    is on PATH and ``CUDA_MPS_PIPE_DIRECTORY`` is not already set (then the user's daemon is used and
    left alone); a failure to start is one warning line and the block runs without MPS. ``on``: the
    same, but a missing binary or a failed start is a UserError. ``off``: never. The daemon sees
    ``environ``'s ``CUDA_VISIBLE_DEVICES``: its server numbers those GPUs 0, 1, ..., so a client's
    ``CUDA_VISIBLE_DEVICES`` must index that list (or name UUIDs). Every subprocess call has a
    ``timeout``; the private folder (in ``tmp_root``, default the temp folder) is removed at the end.
    """
    environ = os.environ if environ is None else environ
    control = shutil.which(CONTROL, path=environ.get("PATH"))
    action, reason = mps_decision(mode, workers, gpus, environ, control)
    if action == USER:
        yield MpsSession(True, False, reason, environ.get(PIPE_ENV))
        return
    if action == SKIP:
        yield MpsSession(False, False, reason)
        return
    assert control is not None
    root = Path(tempfile.mkdtemp(prefix="md_mps_", dir=tmp_root or _tmp_root()))  # mode 0700: private
    env = {**environ, PIPE_ENV: str(root / "pipe"), LOG_ENV: str(root / "log")}
    why: str | None = "the start was interrupted"
    try:
        for key in (PIPE_ENV, LOG_ENV):
            Path(env[key]).mkdir()
        try:
            why = _start(control, root, env, timeout)
            if why is None:
                yield MpsSession(True, True, reason, env[PIPE_ENV], {k: env[k] for k in (PIPE_ENV, LOG_ENV)})
        finally:
            # Also after a failed or interrupted start: the daemon may have forked without coming up.
            _stop(control, env, timeout if why is None else min(timeout, 2.0))
        if why is not None:
            if mode == "on":
                raise UserError(f"--mps on: cannot start the MPS control daemon: {why}")
            log.warning("MPS: cannot start the control daemon (%s); the workers run without it", why)
            yield MpsSession(False, False, f"start failed: {why}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
