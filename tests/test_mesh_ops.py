"""Geometry utilities: clean_mesh, decimate, unwrap_uv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mesh_renderer import Mesh
from mesh_renderer.ops import clean_mesh, connected_components, decimate
from mesh_renderer.uv import unwrap_uv


def icosphere(subdivisions: int, radius: float = 1.0, center=(0.0, 0.0, 0.0)):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(s.vertices) + np.asarray(center), np.asarray(s.faces)


def test_clean_removes_floaters_duplicates_and_degenerates():
    v, f = icosphere(3)  # 1280 faces, radius 1
    sv, sf = icosphere(1, radius=0.05, center=(2.0, 0, 0))  # tiny floater: 80 faces, small diameter
    lv, lf = icosphere(0, radius=0.8, center=(-3.0, 0, 0))  # big but only 20 faces (< 64)
    verts = np.concatenate([v, sv, lv, v[:5] + 1e-9])  # near-duplicate vertices to merge
    n0, n1, n2 = len(v), len(v) + len(sv), len(v) + len(sv) + len(lv)
    dup = np.arange(n2, n2 + 5)
    faces = np.concatenate(
        [
            f,
            sf + n0,
            lf + n1,
            f[:7][:, ::-1],  # duplicates with flipped order
            [[0, 0, 1], [dup[0], 0, 1]],  # degenerate (repeated index; after merging)
        ]
    )
    cv, cf = clean_mesh(torch.tensor(verts), torch.tensor(faces))
    assert cv.dtype == torch.float32 and cf.dtype == torch.int64
    assert cf.shape == (1280, 3) and cv.shape == (642, 3)
    assert torch.allclose(cv.norm(dim=-1), torch.ones(642), atol=1e-5)  # only the unit sphere is left
    assert int(cf.max()) == len(cv) - 1
    assert len(np.unique(connected_components(len(cv), cf.numpy()))) == 1


def test_clean_keeps_largest_component_and_numpy_input():
    v, f = icosphere(0)  # 20 faces: below min_faces, but it is all there is
    cv, cf = clean_mesh(v, f)
    assert cf.shape == (20, 3) and cv.shape == (12, 3)


@pytest.mark.parametrize("target", [500, 2000])
def test_decimate_hits_budget(target):
    v, f = icosphere(4)  # 5120 faces
    dv, df = decimate(torch.tensor(v, dtype=torch.float32), torch.tensor(f), target)
    assert target * 0.9 <= len(df) <= target
    assert int(df.max()) == len(dv) - 1 and int(df.min()) == 0
    assert torch.allclose(dv.norm(dim=-1), torch.ones(len(dv)), atol=0.05)  # still a sphere
    _, same_f = decimate(v, f, 10_000)
    assert same_f.shape == f.shape


def test_unwrap_gives_valid_uv_layout():
    v, f = icosphere(3)
    noisy = v * (1 + 0.05 * np.sin(5 * v[:, :1]) * np.cos(3 * v[:, 1:2]))
    m = Mesh(v=noisy, f=f)
    u = unwrap_uv(m, tex_size=256)
    assert torch.equal(u.f, u.ft) and u.vt.shape == (len(u.v), 2) and u.vn.shape == u.v.shape
    assert float(u.vt.min()) >= 0.0 and float(u.vt.max()) <= 1.0
    assert len(u.f) == len(f)
    # Vertices are copies of input vertices (split along seams), so every position exists in the input.
    d = (u.v[:, None] - m.v[None]).norm(dim=-1).min(dim=1).values  # exact, unlike cdist
    assert float(d.max()) < 1e-6
    # No degenerate UV triangles: every face has positive UV area; charts do not overlap.
    t = u.vt[u.ft]
    area = (
        (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
        - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])
    ) / 2
    assert (area.abs() > 0).all() and float(area.abs().sum()) < 1.0
    # Over budget: decimated first.
    small = unwrap_uv(m, max_faces=400, tex_size=128)
    assert len(small.f) <= 400 and torch.equal(small.f, small.ft)


def _uv_texel_owners(u: Mesh, tex: int) -> torch.Tensor:
    """How many UV triangles cover each texel centre, ``[tex*tex]`` (barycentric inside test)."""
    ys, xs = torch.meshgrid(torch.arange(tex), torch.arange(tex), indexing="ij")
    pts = torch.stack([(xs.reshape(-1) + 0.5) / tex, (ys.reshape(-1) + 0.5) / tex], -1).double()
    t = u.vt[u.ft].double()  # [F,3,2]
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    count = torch.zeros(len(pts), dtype=torch.int64)
    for i in range(len(t)):
        v0, v1, v2 = b[i] - a[i], c[i] - a[i], pts - a[i]
        den = v0[0] * v1[1] - v1[0] * v0[1]
        w1 = (v2[:, 0] * v1[1] - v1[0] * v2[:, 1]) / den
        w2 = (v0[0] * v2[:, 1] - v2[:, 0] * v0[1]) / den
        count += ((w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)).long()
    return count


def test_grid_atlas_gives_every_face_its_own_texels():
    from mesh_renderer.uv import grid_atlas

    v, f = icosphere(1)
    m = Mesh(v=v, f=f)
    u = grid_atlas(m, tex_size=256, padding=2)
    assert torch.equal(u.f, u.ft) and len(u.f) == len(f) and u.v.shape == (3 * len(f), 3)
    assert torch.allclose(u.v[u.f], m.v[m.f])  # the same triangles, split per face
    assert float(u.vt.min()) >= 0.0 and float(u.vt.max()) <= 1.0
    t = u.vt[u.ft]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (
        t[:, 1, 1] - t[:, 0, 1]
    )
    assert float(area.abs().min()) > 0
    owners = _uv_texel_owners(u, 256)
    assert int(owners.max()) == 1  # no texel shared by two faces
    per_face = len(f) and int((owners > 0).sum()) / len(f)
    assert per_face > 10  # each face gets real texels, not a sliver


def test_unwrap_falls_back_to_grid_atlas_past_its_time_budget():
    """xatlas runs in a child process that is killed at the budget; the grid atlas comes back at once."""
    import time

    import mesh_renderer.uv as uvmod

    v, f = icosphere(4)
    t0 = time.perf_counter()
    # One worker: the whole mesh in one process (per-part fallback: tests/test_uv_parallel.py).
    u = uvmod.unwrap_uv(Mesh(v=v, f=f), tex_size=256, time_budget=0.01, workers=1)  # < a process start
    assert time.perf_counter() - t0 < 2.0
    assert len(u.f) == len(f) and u.v.shape == (3 * len(f), 3)
    assert torch.equal(u.vt, uvmod.grid_atlas(Mesh(v=v, f=f), tex_size=256).vt)
    fast = uvmod.unwrap_uv(Mesh(v=v, f=f), tex_size=256, time_budget=None, workers=1)  # the real xatlas path
    assert fast.vt.shape != u.vt.shape or not torch.allclose(fast.vt, u.vt)  # xatlas' layout, not the grid
