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
