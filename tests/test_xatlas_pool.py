"""The warm xatlas pool: servers are reused, prestarted, replaced when killed, and end with their pipe."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

import mesh_renderer.uv as uvmod
import mesh_renderer.xatlas_job as xjob
from mesh_renderer import Mesh
from mesh_renderer import xatlas_pool as pool

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the pool needs select.poll() on pipes")


def sphere(subdivisions: int = 3) -> Mesh:
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    return Mesh(
        v=torch.tensor(np.asarray(s.vertices), dtype=torch.float32), f=torch.tensor(np.asarray(s.faces))
    )


def write_job(tmp_path, name="in.npz"):
    m = sphere()
    src = tmp_path / name
    np.savez(
        src,
        v=m.v.numpy(),
        f=m.f.numpy().astype(np.uint32),
        tex_size=256,
        padding=2,
        max_iterations=1,
        max_chart_area=0.0,
    )
    return src


@pytest.fixture(autouse=True)
def fresh_pool():
    pool.shutdown()
    yield
    pool.shutdown()


def test_a_pool_job_gives_the_one_shot_atlas_and_its_server_is_reused(tmp_path):
    src = write_job(tmp_path)
    xjob.main(str(src), str(tmp_path / "ref.npz"))
    pids = []
    for i in range(3):
        job = pool.launch(src, tmp_path / f"out{i}.npz")
        _, err = job.communicate(timeout=30)
        assert job.returncode == 0 and err == b""
        pids.append(job.pid)
        with np.load(tmp_path / f"out{i}.npz") as got, np.load(tmp_path / "ref.npz") as ref:
            for k in ("vmap", "idx", "uvs", "charts"):
                assert np.array_equal(got[k], ref[k])
    assert len(set(pids)) == 1  # one process served all three
    assert pool.idle_count() == 1


def test_unwraps_run_on_the_prestarted_servers(tmp_path):
    """prestart(3) then two 3-part unwraps: every part on one of those three processes."""
    pool.prestart(3)
    started = {p.pid for p in pool._idle}
    assert len(started) == 3 and pool.idle_count() == 3
    m = sphere(4)  # 5120 faces: 3 parts of over MIN_PART_FACES
    for _ in range(2):
        job = uvmod.start_unwrap(m, tex_size=256, time_budget=None, workers=3)
        used = {j["proc"].pid for j in job.jobs}
        job.result()
        assert used == started
    assert pool.idle_count() == 3


def test_a_killed_job_takes_its_server_out_and_the_next_job_gets_a_new_one(tmp_path):
    src = write_job(tmp_path)
    job = pool.launch(src, tmp_path / "a.npz")
    job.kill()
    assert job.returncode == -9 and job.poll() == -9 and job.proc.poll() is not None
    assert pool.idle_count() == 0
    again = pool.launch(src, tmp_path / "b.npz")
    again.communicate(timeout=30)
    assert again.returncode == 0 and again.pid != job.pid and (tmp_path / "b.npz").is_file()


def test_a_failing_job_is_reported_and_its_server_stays(tmp_path):
    job = pool.launch(tmp_path / "missing.npz", tmp_path / "out.npz")
    _, err = job.communicate(timeout=30)
    assert job.returncode == 1 and b"missing.npz" in err
    assert pool.idle_count() == 1
    ok = pool.launch(write_job(tmp_path), tmp_path / "out.npz")
    ok.communicate(timeout=30)
    assert ok.returncode == 0 and ok.pid == job.pid
    # through unwrap's own error path: the message reaches the user
    with pytest.raises(RuntimeError, match="xatlas failed: .*missing.npz"):
        uvmod._collect(pool.launch(tmp_path / "missing.npz", tmp_path / "o.npz"), tmp_path / "o.npz", None)


def test_a_server_that_dies_mid_job_is_an_error_not_a_hang(tmp_path):
    src = write_job(tmp_path)
    job = pool.launch(src, tmp_path / "out.npz")
    os.kill(job.pid, signal.SIGKILL)
    t0 = time.perf_counter()
    _, err = job.communicate(timeout=30)
    assert time.perf_counter() - t0 < 10
    assert job.returncode not in (0, None) and b"without an answer" in err
    assert pool.idle_count() == 0


def test_a_running_job_times_out_like_popen(tmp_path):
    import subprocess

    src = write_job(tmp_path)
    job = pool.launch(src, tmp_path / "out.npz")
    os.kill(job.pid, signal.SIGSTOP)  # frozen: never answers
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            job.communicate(timeout=0.2)
        assert job.poll() is None
    finally:
        job.kill()  # SIGKILL ends a stopped process too
    assert job.returncode == -9


def test_servers_end_with_their_pipe(tmp_path):
    """shutdown() closes stdin and every idle server exits by itself (no kill needed)."""
    pool.prestart(2)
    procs = list(pool._idle)
    pool.shutdown(timeout=10)
    assert [p.returncode for p in procs] == [0, 0]
    assert pool.idle_count() == 0


def test_a_forked_child_does_not_use_its_parents_servers(monkeypatch):
    pool.prestart(1)
    parent = list(pool._idle)
    monkeypatch.setattr(pool, "_owner_pid", -1)  # as seen from a forked child
    assert pool.idle_count() == 0
    assert parent[0].poll() is None  # left running for the parent
    parent[0].kill()
    parent[0].wait()


def noisy_server(tmp_path, monkeypatch, noise: str, pause: float = 0.0) -> None:
    """Servers whose every job first writes ``noise`` to fd 1 from C, as xatlas' warnings do.

    xatlas prints its warnings and release-build ``XA_ASSERT`` failures with ``printf`` on stdout,
    the server's answer pipe.
    """
    script = tmp_path / "noisy_job.py"
    script.write_text(
        "import ctypes, importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('xjob', {str(xjob.__file__)!r})\n"
        "xj = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(xj)\n"
        "libc = ctypes.CDLL(None)\n"
        "real = xj.main\n"
        "def main(src, dst):\n"
        f"    libc.printf({noise.encode()!r})\n"
        "    libc.fflush(None)\n"
        f"    time.sleep({pause})\n"
        "    real(src, dst)\n"
        "xj.main = main\n"
        "xj.serve()\n"
    )
    monkeypatch.setattr(pool, "_JOB_SCRIPT", script)


def test_text_xatlas_prints_on_stdout_is_not_taken_for_an_answer(tmp_path, monkeypatch):
    """A warning on the server's stdout neither fails its job nor answers the next one early."""
    noisy_server(tmp_path, monkeypatch, "\rASSERT: noise xatlas.cpp 42\n")
    src = write_job(tmp_path)
    xjob.main(str(src), str(tmp_path / "ref.npz"))
    for i in range(3):
        job = pool.launch(src, tmp_path / f"out{i}.npz")
        _, err = job.communicate(timeout=30)
        assert (job.returncode, err) == (0, b"")
        with np.load(tmp_path / f"out{i}.npz") as got, np.load(tmp_path / "ref.npz") as ref:
            assert np.array_equal(got["uvs"], ref["uvs"])
    assert pool.idle_count() == 1


def test_a_half_line_on_stdout_does_not_block_past_the_time_budget(tmp_path, monkeypatch):
    """Text without a newline (a C buffer flushed mid-line) while xatlas works: the timeout holds."""
    import subprocess

    noisy_server(tmp_path, monkeypatch, "ASSERT: half a line", pause=6.0)
    job = pool.launch(write_job(tmp_path), tmp_path / "out.npz")
    time.sleep(1.0)  # the server has imported and printed; its job now takes 6 s
    t0 = time.perf_counter()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            job.communicate(timeout=0.5)
        assert time.perf_counter() - t0 < 3.0
    finally:
        job.kill()


def test_a_pipe_above_fd_1023_works(tmp_path):
    """select() cannot watch descriptors past FD_SETSIZE; a busy process (a server) can have them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the descriptor limit is below 1200")
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, 1200) if soft != resource.RLIM_INFINITY else soft, hard)
    )
    base = os.open(os.devnull, os.O_RDONLY)
    fillers = [os.dup(base) for _ in range(1100)]
    try:
        job = pool.launch(write_job(tmp_path), tmp_path / "out.npz")
        assert job.proc.stdout.fileno() > 1023
        _, err = job.communicate(timeout=30)
        assert (job.returncode, err) == (0, b"")
    finally:
        pool.shutdown()
        for fd in [*fillers, base]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_two_threads_unwrapping_at_once_get_the_one_thread_result():
    """As the web app may: two unwraps at once on the pool match one alone, part for part."""
    from concurrent.futures import ThreadPoolExecutor

    m = sphere(4)
    ref = uvmod.unwrap_uv(m, tex_size=256, time_budget=None, workers=2)
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(lambda _: uvmod.unwrap_uv(m, tex_size=256, time_budget=None, workers=2), range(2)))
    for g in got:
        assert torch.equal(g.f, ref.f) and torch.equal(g.vt, ref.vt)
    assert pool.idle_count() >= 2


def test_no_server_outlives_a_normal_exit(tmp_path):
    """A script that prestarts, unwraps and exits leaves no xatlas process behind."""
    import subprocess

    code = (
        "import torch, trimesh, numpy as np\n"
        "from mesh_renderer import Mesh, xatlas_pool, uv\n"
        "s = trimesh.creation.icosphere(subdivisions=4)\n"
        "m = Mesh(v=torch.tensor(np.asarray(s.vertices), dtype=torch.float32), f=torch.tensor(np.asarray(s.faces)))\n"
        "uv.prestart_workers(3)\n"
        "uv.unwrap_uv(m, tex_size=256, time_budget=None, workers=2)\n"
        "print(*[p.pid for p in xatlas_pool._idle])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 3
    time.sleep(0.5)
    for pid in pids:  # gone, and reaped by their parent (no zombie left to init either)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_server_whose_pipe_breaks_at_the_write_is_replaced(tmp_path):
    """An idle server that looks alive but whose pipe breaks when the job is sent: killed, a fresh one runs it."""
    pool.prestart(1)
    broken = pool._idle[0]

    class BrokenPipe:
        def write(self, _):
            raise BrokenPipeError

        def close(self):
            pass

    real_stdin, broken.stdin = broken.stdin, BrokenPipe()
    try:
        job = pool.launch(write_job(tmp_path), tmp_path / "out.npz")
        job.communicate(timeout=30)
        assert job.returncode == 0 and job.pid != broken.pid and (tmp_path / "out.npz").is_file()
        assert broken.poll() is not None  # killed and reaped, not left running
    finally:
        real_stdin.close()
