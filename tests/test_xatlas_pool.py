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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the pool needs select() on pipes")


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
