"""unwrap_uv with parallel xatlas parts: split, rectangles, no overlap, per-part budget fallback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import mesh_renderer.uv as uvmod
from mesh_renderer import Mesh

TEX = 512
PAD = 2


def bumpy_sphere() -> Mesh:
    """A 5120-face icosphere with bumps (charts of several sizes), deterministic."""
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=4)
    v = np.asarray(s.vertices)
    v = v * (1 + 0.08 * np.sin(5 * v[:, :1]) * np.cos(4 * v[:, 1:2]) * np.sin(3 * v[:, 2:] + 1))
    return Mesh(v=torch.tensor(v, dtype=torch.float32), f=torch.tensor(np.asarray(s.faces)))


def uv_face_ids(u: Mesh, tex: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rasterise UV triangles at texel centres -> (claims per texel ``[tex*tex]``, owner face ``[tex*tex]``
    (-1 none; the last claimant), texels per face ``[F]``). Strictly inside, so a centre on an edge
    shared by two faces of one chart is claimed by neither rather than both."""
    t = u.vt[u.ft].double() * tex - 0.5  # texel-centre coordinates: centre (i, j) at integer (i, j)
    lo = t.min(dim=1).values.floor().clamp(0, tex - 1).long()
    hi = t.max(dim=1).values.ceil().clamp(0, tex - 1).long()
    span = int((hi - lo).max()) + 1
    oy, ox = torch.meshgrid(torch.arange(span), torch.arange(span), indexing="ij")
    px = (lo[:, None, 0] + ox.reshape(1, -1)).double()  # [F,S*S]
    py = (lo[:, None, 1] + oy.reshape(1, -1)).double()
    a, b, c = t[:, 0], t[:, 1], t[:, 2]

    def edge(p, q):  # signed area of (p, q, pixel) for each face and candidate pixel
        return (q[:, None, 0] - p[:, None, 0]) * (py - p[:, None, 1]) - (q[:, None, 1] - p[:, None, 1]) * (
            px - p[:, None, 0]
        )

    e0, e1, e2 = edge(a, b), edge(b, c), edge(c, a)
    eps = 1e-9
    inside = ((e0 > eps) & (e1 > eps) & (e2 > eps)) | ((e0 < -eps) & (e1 < -eps) & (e2 < -eps))
    inside &= (px <= hi[:, None, 0]) & (py <= hi[:, None, 1])
    fid, k = inside.nonzero(as_tuple=True)
    lin = py[fid, k].long() * tex + px[fid, k].long()
    claims = torch.zeros(tex * tex, dtype=torch.int64).index_add_(0, lin, torch.ones_like(lin))
    owner = torch.full((tex * tex,), -1, dtype=torch.int64)
    owner[lin] = fid
    return claims, owner, inside.sum(dim=1)


def uv_areas(u: Mesh) -> torch.Tensor:
    """Signed-area magnitudes of the UV triangles ``[F]``."""
    t = u.vt[u.ft].double()
    return (
        (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
        - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])
    ).abs() / 2


def check_atlas(u: Mesh, m: Mesh) -> None:
    """Same triangles in input order, UVs in [0,1], every face non-degenerate, no texel claimed twice."""
    assert torch.equal(u.f, u.ft) and len(u.f) == len(m.f) and u.vt.shape == (len(u.v), 2)
    assert torch.equal(u.v[u.f], m.v[m.f])  # split copies of the input's corners, faces in input order
    assert float(u.vt.min()) >= 0.0 and float(u.vt.max()) <= 1.0
    claims, _, per_face = uv_face_ids(u, TEX)
    assert int(claims.max()) == 1  # no two UV triangles share a texel centre
    area3d = torch.linalg.cross(m.v[m.f[:, 1]] - m.v[m.f[:, 0]], m.v[m.f[:, 2]] - m.v[m.f[:, 0]]).norm(dim=-1)
    real = area3d > 0
    assert bool(((per_face > 0) | (uv_areas(u) > 0))[real].all())
    assert float((per_face > 0).float().mean()) > 0.9  # nearly every face owns texels at this density


@pytest.mark.parametrize("workers", [1, 3])
def test_atlas_has_no_overlap_and_covers_every_face(workers):
    m = bumpy_sphere()
    u = uvmod.unwrap_uv(m, tex_size=TEX, padding=PAD, time_budget=None, workers=workers)
    check_atlas(u, m)
    # Texel density is even across parts: UV area / surface area within 30% of the mean per part.
    if workers > 1:
        parts = uvmod.split_parts(m.v.numpy().astype(np.float64), m.f.numpy(), workers)
        area3d = (
            torch.linalg.cross(m.v[m.f[:, 1]] - m.v[m.f[:, 0]], m.v[m.f[:, 2]] - m.v[m.f[:, 0]]).norm(dim=-1)
            / 2
        )
        dens = torch.stack([uv_areas(u)[p].sum() / area3d[p].sum() for p, _ in parts])
        assert float(dens.max() / dens.min()) < 1.3


def test_parts_sit_in_separate_rectangles_with_a_gap():
    """Each part's UVs stay inside its own rectangle; rectangles tile the square in proportion to area."""
    m = bumpy_sphere()
    v, f = m.v.numpy().astype(np.float64), m.f.numpy()
    parts = uvmod.split_parts(v, f, 3)
    counts = [len(p) for p, _ in parts]
    assert sorted(np.concatenate([p for p, _ in parts]).tolist()) == list(range(len(f)))
    assert max(counts) - min(counts) <= 2
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) / 2
    rect_area = np.array([(x1 - x0) * (y1 - y0) for _, (x0, y0, x1, y1) in parts])
    assert np.isclose(rect_area.sum(), 1.0)
    assert np.allclose(rect_area, [area[p].sum() / area.sum() for p, _ in parts])
    # First cut: along the longest axis, all of part 0's centroids on one side of the others'.
    c = v[f].mean(axis=1)
    axis = int(np.argmax(c.max(0) - c.min(0)))
    assert c[parts[0][0], axis].max() <= min(c[p, axis].min() for p, _ in parts[1:])

    u = uvmod.unwrap_uv(m, tex_size=TEX, padding=PAD, time_budget=None, workers=3)
    g = PAD / TEX
    for faces, (x0, y0, x1, y1) in parts:
        t = u.vt[u.ft[torch.from_numpy(faces)]].reshape(-1, 2)
        assert float(t[:, 0].min()) >= x0 + g - 1e-6 and float(t[:, 0].max()) <= x1 - g + 1e-6
        assert float(t[:, 1].min()) >= y0 + g - 1e-6 and float(t[:, 1].max()) <= y1 - g + 1e-6
    # Rasterised: no texel of one part within PAD texels of another part's texel (no bilinear bleed).
    _, owner, _ = uv_face_ids(u, TEX)
    part_of = torch.full((len(f) + 1,), -1, dtype=torch.int64)
    for i, (faces, _) in enumerate(parts):
        part_of[torch.from_numpy(faces)] = i
    pid = part_of[owner].reshape(TEX, TEX)  # owner -1 -> part_of[-1] = -1
    for i in range(len(parts)):
        near = torch.nn.functional.max_pool2d((pid == i).float()[None, None], 2 * PAD + 1, 1, PAD)[0, 0] > 0
        assert not bool((near & (pid >= 0) & (pid != i)).any())


def test_unwrap_is_deterministic():
    m = bumpy_sphere()
    a = uvmod.unwrap_uv(m, tex_size=TEX, time_budget=None, workers=3)
    b = uvmod.unwrap_uv(m, tex_size=TEX, time_budget=None, workers=3)
    assert torch.equal(a.v, b.v) and torch.equal(a.f, b.f) and torch.equal(a.vt, b.vt)


def test_one_worker_gives_todays_whole_mesh_atlas():
    """workers=1 is one xatlas run on the whole mesh with the job's options, nothing rescaled."""
    import xatlas

    m = bumpy_sphere()
    u = uvmod.unwrap_uv(m, tex_size=TEX, time_budget=None, workers=1)
    v, f = m.v.numpy(), m.f.numpy()
    area = float(np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum() / 2)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v.astype(np.float32), f.astype(np.uint32))
    chart = xatlas.ChartOptions()
    chart.max_iterations = 1
    chart.max_chart_area = area * 0.005
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = TEX, 2, True
    atlas.generate(chart, pack)
    vmap, idx, uvs = atlas[0]
    assert torch.equal(u.f, torch.from_numpy(idx.astype(np.int64)))
    assert torch.equal(u.v, m.v[torch.from_numpy(vmap.astype(np.int64))])
    assert torch.allclose(u.vt, torch.from_numpy(uvs), atol=1e-6)


def test_a_part_past_its_budget_gets_the_grid_inside_its_rectangle(monkeypatch):
    """Part 1's process never finishes: it is killed at the budget and only its rectangle holds a grid."""
    real = uvmod._launch

    def launch(src, dst):
        if src.name == "part1.npz":
            return subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE
            )
        return real(src, dst)

    monkeypatch.setattr(uvmod, "_launch", launch)
    m = bumpy_sphere()
    import time

    t0 = time.perf_counter()
    u = uvmod.unwrap_uv(m, tex_size=TEX, padding=PAD, time_budget=8.0, workers=3)
    assert time.perf_counter() - t0 < 12.0
    check_atlas(u, m)
    parts = uvmod.split_parts(m.v.numpy().astype(np.float64), m.f.numpy(), 3)
    faces, (x0, y0, x1, y1) = parts[1]
    g = PAD / TEX
    w, h = x1 - x0 - 2 * g, y1 - y0 - 2 * g
    grid = uvmod._grid_uvs(len(faces), round(min(w, h) * TEX), PAD).double()
    expect = torch.stack([x0 + g + grid[:, 0] * w, y0 + g + grid[:, 1] * h], -1).reshape(-1, 3, 2)
    got = u.vt[u.ft[torch.from_numpy(faces)]].double()
    assert torch.allclose(got, expect, atol=1e-6)  # part 1: the grid, scaled into its rectangle
    for i in (0, 2):  # the others keep xatlas' charts: shared UV vertices, unlike the grid's 3 per face
        fi = torch.from_numpy(parts[i][0])
        assert len(torch.unique(u.ft[fi])) < 2 * len(fi)


def test_uv_workers_config_key():
    """export.uv_workers ships as 0 (auto) and a negative or huge value fails at load, naming the key."""
    from core import config as C
    from core.errors import UserError
    from pipeline.config import DEFAULT_CONFIG, config_rules

    def load(*argv: str):
        return C.load_config(list(argv), defaults_path=DEFAULT_CONFIG, rules=config_rules())

    assert load().export.uv_workers == 0
    assert load("export.uv_workers=3").export.uv_workers == 3
    for bad in ("-1", "65"):
        with pytest.raises(UserError, match="export.uv_workers"):
            load(f"export.uv_workers={bad}")
    assert 1 <= uvmod.default_workers() <= 4


@pytest.mark.parametrize("workers,expected", [(0, None), (3, 3)])
def test_stage1_passes_export_uv_workers_to_the_unwrap(tmp_path, monkeypatch, workers, expected):
    """``export.uv_workers`` reaches the unwrap (0 = auto, i.e. None there)."""
    import pipeline.stage1
    from pipeline import load_config, run_stage1
    from testing.oracle_tiny import oracle_tiny_args

    seen, prestarted = [], []
    real, real_prestart = pipeline.stage1.start_unwrap, pipeline.stage1.prestart_workers

    def spy(*args, **kwargs):
        seen.append(kwargs.get("workers", "missing"))
        return real(*args, **kwargs)

    def spy_prestart(w):
        assert not seen  # before the unwrap (during the SIR loop), with the same count
        prestarted.append(w)
        real_prestart(w)

    monkeypatch.setattr(pipeline.stage1, "start_unwrap", spy)
    monkeypatch.setattr(pipeline.stage1, "prestart_workers", spy_prestart)
    cfg = load_config(oracle_tiny_args(f"outdir={tmp_path}", f"export.uv_workers={workers}"))
    run_stage1(cfg)
    assert seen == [expected] and prestarted == [expected]


def test_started_unwrap_runs_in_child_processes_and_close_kills_them():
    """start_unwrap returns while xatlas works in child processes (no thread of ours); close()
    stops them and removes the temporary files; result() equals unwrap_uv."""
    import threading

    m = bumpy_sphere()
    before = threading.active_count()
    job = uvmod.start_unwrap(m, tex_size=TEX, time_budget=None, workers=3)
    assert threading.active_count() == before  # no Python thread runs the unwrap
    assert len(job.jobs) == 3 and all(j["proc"].poll() is None or j["proc"].returncode == 0 for j in job.jobs)
    u = job.result()
    ref = uvmod.unwrap_uv(m, tex_size=TEX, time_budget=None, workers=3)
    assert torch.equal(u.vt, ref.vt) and torch.equal(u.f, ref.f)
    from pathlib import Path

    assert not Path(job.tmp.name).exists()

    stopped = uvmod.start_unwrap(m, tex_size=TEX, time_budget=None, workers=3)
    stopped.close()
    assert all(j["proc"].poll() is not None for j in stopped.jobs)
    assert not Path(stopped.tmp.name).exists()


def _fake_xatlas(code: str):
    """A ``_launch`` stand-in running ``python -c code`` (stderr piped as the real one)."""

    def launch(src, dst):
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    return launch


def test_unwrap_job_result_and_close_in_any_order():
    """result() twice gives the same mesh; close() twice is fine; result() after close() says so
    (it used to fail with 'read of closed file' from subprocess)."""
    from pathlib import Path

    m = bumpy_sphere()
    for workers in (1, 3):
        job = uvmod.start_unwrap(m, tex_size=TEX, time_budget=None, workers=workers)
        u = job.result()
        assert job.result() is u
        job.close()
        job.close()
        assert job.result() is u
        stopped = uvmod.start_unwrap(m, tex_size=TEX, time_budget=None, workers=workers)
        stopped.close()
        stopped.close()
        with pytest.raises(RuntimeError, match=r"after close\(\)"):
            stopped.result()
        assert not Path(stopped.tmp.name).exists()


@pytest.mark.parametrize("workers", [1, 3])
def test_a_failing_xatlas_child_raises_and_stops_the_others(monkeypatch, workers):
    from pathlib import Path

    launches = []

    def launch(src, dst):
        code = "import sys; sys.exit('xatlas exploded')" if not launches else "import time; time.sleep(60)"
        proc = _fake_xatlas(code)(src, dst)
        launches.append(proc)
        return proc

    monkeypatch.setattr(uvmod, "_launch", launch)
    job = uvmod.start_unwrap(bumpy_sphere(), tex_size=TEX, time_budget=None, workers=workers)
    with pytest.raises(RuntimeError, match="xatlas exploded"):
        job.result()
    assert len(launches) == workers
    assert all(p.poll() is not None for p in launches)  # the sleeping parts were killed and reaped
    assert not Path(job.tmp.name).exists()


def test_ctrl_c_while_waiting_kills_the_xatlas_children(monkeypatch):
    import signal
    import time
    from pathlib import Path

    monkeypatch.setattr(uvmod, "_launch", _fake_xatlas("import time; time.sleep(60)"))

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        job = uvmod.start_unwrap(bumpy_sphere(), tex_size=TEX, time_budget=30.0, workers=3)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            job.result()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.perf_counter() - t0 < 10
    assert [j["proc"].returncode for j in job.jobs] == [-9, -9, -9]
    assert not Path(job.tmp.name).exists()


def test_a_finished_part_is_collected_even_microseconds_before_its_deadline(tmp_path):
    """A part that finished in time keeps its atlas however little of the budget is left when it
    is collected (communicate() with a few microseconds left used to time out -> grid fallback)."""
    import time

    dst = tmp_path / "out.npz"
    np.savez(dst, vmap=np.arange(3), idx=np.arange(3).reshape(1, 3), uvs=np.zeros((3, 2)), charts=np.int64(1))
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        proc.wait()
        atlas = uvmod._collect(proc, dst, time.perf_counter() + 2e-5)
        assert atlas is not None and int(atlas[3]) == 1
