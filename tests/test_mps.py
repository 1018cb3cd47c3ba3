"""core.mps: when an MPS control daemon is started for the workers, and that it is always stopped.

Runs a fake ``nvidia-cuda-mps-control`` (tests/mps_fake.py) that records its calls.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from core.errors import UserError
from core.mps import CONTROL, LOG_ENV, PID_FILE, PIPE_ENV, QUIT_WAIT, mps_daemon, mps_decision
from tests import mps_fake


def test_decision():
    env: dict[str, str] = {}
    assert mps_decision("auto", 3, 1, env, "/bin/x") == ("start", "3 workers share 1 GPU(s)")
    assert mps_decision("on", 5, 2, env, "/bin/x")[0] == "start"  # more workers than GPUs
    assert mps_decision("auto", 2, 2, env, "/bin/x") == ("skip", "every worker has a GPU of its own")
    assert mps_decision("on", 3, 0, env, "/bin/x") == ("skip", "the workers do not run on a CUDA GPU")
    assert mps_decision("off", 3, 1, env, "/bin/x") == ("skip", "--mps off")
    assert mps_decision("auto", 3, 1, env, None) == ("skip", f"{CONTROL} is not on PATH")
    user = mps_decision("on", 3, 1, {PIPE_ENV: "/tmp/theirs"}, None)  # theirs, binary or not
    assert user == ("user", f"{PIPE_ENV} is set: the workers use that MPS daemon")
    with pytest.raises(UserError, match=f"^--mps on: {CONTROL} is not on PATH"):
        mps_decision("on", 3, 1, env, None)
    with pytest.raises(UserError, match="expected one of auto, on, off"):
        mps_decision("yes", 3, 1, env, "/bin/x")


def test_auto_starts_the_daemon_and_stops_it(tmp_path, monkeypatch):
    log = mps_fake.install(tmp_path, monkeypatch)
    roots = tmp_path / "tmp"
    roots.mkdir()
    with mps_daemon("auto", 3, 1, tmp_root=roots) as s:
        assert s.used and s.started and s.pipe_dir is not None
        pipe = Path(s.pipe_dir)
        assert pipe.parent.parent == roots and (pipe / "control").exists()
        assert s.env == {PIPE_ENV: str(pipe), LOG_ENV: str(pipe.parent / "log")}
        assert mps_fake.calls(log) == [("-d", "", str(pipe))]
        assert s.meta() == {"used": True, "started": True, "pipe_dir": str(pipe), "reason": s.reason}
    assert mps_fake.calls(log) == [("-d", "", str(pipe)), ("", "quit", str(pipe))]  # the same pipe folder
    assert list(roots.iterdir()) == []  # the private folder is gone
    assert PIPE_ENV not in os.environ  # only the workers' environment gets it


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_daemon_is_stopped_when_the_block_raises(tmp_path, monkeypatch, error):
    log = mps_fake.install(tmp_path, monkeypatch)
    roots = tmp_path / "tmp"
    roots.mkdir()
    with pytest.raises(error), mps_daemon("on", 2, 1, tmp_root=roots) as s:
        raise error()
    assert mps_fake.calls(log) == [("-d", "", s.pipe_dir), ("", "quit", s.pipe_dir)]
    assert list(roots.iterdir()) == []


def test_auto_skips_without_starting_anything(tmp_path, monkeypatch):
    log = mps_fake.install(tmp_path, monkeypatch)
    for mode, workers, gpus in (("auto", 2, 2), ("auto", 4, 0), ("off", 3, 1), ("on", 1, 1)):
        with mps_daemon(mode, workers, gpus, tmp_root=tmp_path) as s:
            assert not s.used and not s.started and s.env == {}
    monkeypatch.setenv(PIPE_ENV, "/tmp/their-mps")  # the user runs MPS already: theirs, left alone
    with mps_daemon("auto", 3, 1, tmp_root=tmp_path) as s:
        assert s.used and not s.started and s.pipe_dir == "/tmp/their-mps" and s.env == {}
    assert mps_fake.calls(log) == []
    monkeypatch.delenv(PIPE_ENV)
    with mps_daemon("auto", 3, 1, tmp_root=tmp_path, environ={"PATH": str(tmp_path / "empty")}) as s:
        assert not s.used and s.reason == f"{CONTROL} is not on PATH"
    assert mps_fake.calls(log) == []


def test_on_with_a_missing_binary_is_a_user_error(tmp_path):
    no_path = {"PATH": str(tmp_path)}
    with (
        pytest.raises(UserError, match=f"--mps on: {CONTROL} is not on PATH"),
        mps_daemon("on", 3, 1, tmp_root=tmp_path, environ=no_path),
    ):
        pytest.fail("the block must not run")


def test_a_daemon_that_fails_to_start(tmp_path, monkeypatch, caplog):
    log = mps_fake.install(tmp_path, monkeypatch, mode="fail")
    roots = tmp_path / "tmp"
    roots.mkdir()
    with pytest.raises(UserError) as e, mps_daemon("on", 3, 1, tmp_root=roots):
        pytest.fail("the block must not run")
    assert str(e.value) == (
        f"--mps on: cannot start the MPS control daemon: {CONTROL} -d exited with code 1: "
        "fake daemon: cannot start"
    )
    assert list(roots.iterdir()) == [] and [c[:2] for c in mps_fake.calls(log)] == [("-d", ""), ("", "quit")]
    # auto: one warning line, then the block runs without MPS.
    with (
        caplog.at_level(logging.WARNING, logger="microdreamer.mps"),
        mps_daemon("auto", 3, 1, tmp_root=roots) as s,
    ):
        assert not s.used and s.env == {} and s.reason.startswith("start failed: ")
    assert [r.getMessage() for r in caplog.records] == [
        f"MPS: cannot start the control daemon ({CONTROL} -d exited with code 1: fake daemon: cannot start); "
        "the workers run without it"
    ]
    assert list(roots.iterdir()) == []


def test_a_daemon_that_never_comes_up_times_out(tmp_path, monkeypatch):
    mps_fake.install(tmp_path, monkeypatch, mode="silent")
    with (
        pytest.raises(UserError, match="made no control socket in .* within 0.3 s"),
        mps_daemon("on", 3, 1, tmp_root=tmp_path, timeout=0.3),
    ):
        pytest.fail("the block must not run")


def test_ctrl_c_while_starting_still_stops_the_daemon(tmp_path, monkeypatch):
    import core.mps

    log = mps_fake.install(tmp_path, monkeypatch)
    start = core.mps._start

    def start_then_ctrl_c(*args, **kwargs):
        start(*args, **kwargs)  # the daemon is up; Ctrl-C lands before the block runs
        raise KeyboardInterrupt

    monkeypatch.setattr(core.mps, "_start", start_then_ctrl_c)
    roots = tmp_path / "tmp"
    roots.mkdir()
    with pytest.raises(KeyboardInterrupt), mps_daemon("auto", 3, 1, tmp_root=roots):
        pytest.fail("the block must not run")
    assert [c[:2] for c in mps_fake.calls(log)] == [("-d", ""), ("", "quit")]
    assert list(roots.iterdir()) == []


def test_stop_waits_for_the_daemon_not_for_the_socket_files_it_leaves(tmp_path, monkeypatch):
    """The real daemon leaves its control socket files after ``quit``: waiting on them cost every
    batch 3 s (H200). The stop returns once the pid file is gone, and waits for that when it is slow."""
    mps_fake.install(tmp_path, monkeypatch)
    with mps_daemon("on", 3, 1, tmp_root=tmp_path) as s:
        pipe = Path(s.pipe_dir)
        assert (pipe / PID_FILE).exists()
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0  # not QUIT_WAIT: the socket files were still there
    (tmp_path / "slow").mkdir()
    mps_fake.install(tmp_path / "slow", monkeypatch, mode="slowquit")
    with mps_daemon("on", 3, 1, tmp_root=tmp_path) as s:
        pipe = Path(s.pipe_dir)
        t0 = time.monotonic()
    waited = time.monotonic() - t0
    assert 0.35 <= waited < QUIT_WAIT  # the pid file went 0.4 s after quit returned
    assert not pipe.parent.exists()
