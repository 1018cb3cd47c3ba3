"""Test helper (not a test module): run ``app.py`` with the tiny oracle config in a subprocess on a
free loopback port, wait until it answers, and always stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
SPOT = SHARED / "meshes" / "spot.obj"
IMAGE = SHARED / "images" / "alarm_rgba.png"
TINY = ROOT / "tests" / "data" / "oracle_tiny.yaml"
#: Start-up (imports + model load) and one tiny job take seconds; these bound every wait.
START_TIMEOUT = 90.0


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> dict:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def app_server(folder: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``app.py`` on the tiny oracle config; yields (base URL, its work dir). Its log is ``folder/server.log``."""
    port = free_port()
    workdir = folder / "work"
    cmd = [
        sys.executable,
        str(ROOT / "app.py"),
        "--config",
        str(TINY),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workdir",
        str(workdir),
        *args,
        f"oracle.mesh={SPOT.resolve()}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if get_json(f"{base}/api/health", timeout=2.0).get("status") == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"app.py did not answer in {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.25)
        yield base, workdir
    finally:
        # The server runs in its own process group: stop it and anything it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
