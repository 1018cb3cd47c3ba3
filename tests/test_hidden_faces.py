"""Dropping the faces no outside view sees (mesh_renderer.visibility, export.visible_views)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mesh_renderer.visibility import drop_hidden_faces, sphere_cameras, visible_faces


def _sphere(radius: float, subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def _open_box() -> tuple[torch.Tensor, torch.Tensor]:
    """A unit box without its top (+y) face: its inside is seen from above only."""
    import trimesh

    m = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    top = m.face_normals[:, 1] > 0.9
    m.update_faces(~top)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def test_a_bubble_inside_an_object_is_dropped_and_its_shell_kept():
    vo, fo = _sphere(0.6)
    vi, fi = _sphere(0.25)
    v = torch.cat([vo, vi])
    f = torch.cat([fo, fi + len(vo)])
    nv, nf = drop_hidden_faces(v, f, views=32, size=96, backend="torch")
    assert nf.shape[0] == fo.shape[0]  # every outer face, no inner one
    assert torch.allclose(nv.norm(dim=1), torch.full((len(nv),), 0.6), atol=1e-4)
    assert nv.shape[0] == vo.shape[0] and int(nf.max()) == nv.shape[0] - 1


def test_an_open_cavity_stays():
    """A box open at the top: its inner walls and floor are seen through the opening."""
    v, f = _open_box()
    nv, nf = drop_hidden_faces(v, f, views=64, size=96, backend="torch")
    assert nf.shape[0] == f.shape[0] and torch.equal(nv, v)


def test_sphere_cameras_cover_the_sphere_evenly():
    cams = sphere_cameras(64, radius=2.0, size=32)
    pos = cams.c2w[:, :3, 3]
    assert torch.allclose(pos.norm(dim=1), torch.full((64,), 2.0), atol=1e-4)
    assert abs(float(pos.mean(0).norm())) < 0.1  # balanced: no hemisphere favoured
    assert float(cams.elevation.max()) > 75 and float(cams.elevation.min()) < -75  # near both poles


def test_visible_faces_of_a_lone_sphere_is_every_face():
    v, f = _sphere(0.5, subdivisions=1)
    from mesh_renderer import Mesh

    seen = visible_faces(Mesh(v=v, f=f), sphere_cameras(24, size=64), backend="torch")
    assert bool(seen.all())


def test_views_zero_keeps_the_mesh_untouched():
    vo, fo = _sphere(0.6, 1)
    vi, fi = _sphere(0.25, 1)
    v, f = torch.cat([vo, vi]), torch.cat([fo, fi + len(vo)])
    nv, nf = drop_hidden_faces(v, f, views=0)
    assert nv is v and nf is f


def test_stage1_export_drops_the_inner_walls(tmp_path):
    """The tiny oracle run: its coarse mesh reports the hidden faces it dropped, and with
    export.visible_views=0 (the paper) it keeps every face."""
    from pipeline import load_config, run_stage1
    from testing.oracle_tiny import oracle_tiny_args

    faces = {}
    for views in (0, 32):
        cfg = load_config(
            oracle_tiny_args(f"outdir={tmp_path / str(views)}", f"export.visible_views={views}")
        )
        mesh = run_stage1(cfg)["mesh"]
        faces[views] = (mesh["faces"], mesh.get("hidden_faces_dropped"))
    assert faces[0][1] is None
    assert faces[32][1] is not None and faces[32][0] + faces[32][1] >= faces[0][0] - 1
    assert np.isfinite(faces[32][0]) and faces[32][0] > 0


def _bubble_in_shell() -> tuple[torch.Tensor, torch.Tensor, int]:
    """An outer sphere (radius 0.6) around an inner bubble (0.25); -> (v, f, outer face count)."""
    vo, fo = _sphere(0.6)
    vi, fi = _sphere(0.25)
    return torch.cat([vo, vi]), torch.cat([fo, fi + len(vo)]), fo.shape[0]


def test_cameras_inside_or_close_to_the_mesh_keep_its_outer_surface():
    """A camera radius inside the object (or so close that the views see only small caps of it)
    must not drop the real surface: the views back off until the whole mesh is in view."""
    v, f, n_outer = _bubble_in_shell()
    for radius in (0.1, 0.4, 0.7):
        nv, nf = drop_hidden_faces(v, f, views=32, size=96, radius=radius, backend="torch")
        assert nf.shape[0] == n_outer, radius
        assert torch.allclose(nv.norm(dim=1), torch.full((len(nv),), 0.6), atol=1e-4), radius


def test_visibility_cameras_back_off_only_when_the_mesh_does_not_fit():
    from mesh_renderer.visibility import view_distance

    fovy = 49.1
    assert view_distance(2.0, fovy, 0.8) == 2.0  # the stage's cameras already see all of it
    d = view_distance(0.4, fovy, 0.6)
    assert abs(d - 0.6 / math.sin(math.radians(fovy / 2))) < 1e-6


def test_views_are_rasterised_in_chunks_of_bounded_size(monkeypatch):
    """Large export.visible_size: few views per rasterisation (tri_id etc. per chunk stay bounded),
    the same faces seen as in one chunk."""
    import mesh_renderer.visibility as vis
    from mesh_renderer import Mesh

    v, f, _ = _bubble_in_shell()
    mesh = Mesh(v=v, f=f)
    monkeypatch.setattr(vis, "CHUNK_ELEMENTS", 1 << 18)  # 3 views of 256 px per call, cheap on a CPU
    cams = sphere_cameras(8, size=256)
    pixels = []
    real = vis.rasterize

    def recording(m, c, backend="auto"):
        pixels.append(len(c) * c.height * c.width)
        return real(m, c, backend=backend)

    monkeypatch.setattr(vis, "rasterize", recording)
    seen = visible_faces(mesh, cams, backend="torch")
    assert pixels == [3 * 256 * 256, 3 * 256 * 256, 2 * 256 * 256]
    assert torch.equal(seen, visible_faces(mesh, cams, backend="torch", chunk=8))
    monkeypatch.undo()
    assert vis.views_per_chunk(256 * 256, 100_000) == 16  # the default export: unchanged
    assert vis.views_per_chunk(8192 * 8192, 100_000) == 1


def test_preflight_counts_the_visibility_views(tmp_path):
    """export.visible_size drives a buffer like the other sizes: an infeasible one is refused
    before the run, naming the key; views=0 costs nothing."""
    import pytest

    from core.errors import UserError
    from pipeline import load_config, preflight

    root = Path(__file__).resolve().parents[1]
    base = ["--config", str(root / "tests" / "data" / "oracle_tiny.yaml"), f"outdir={tmp_path}"]
    cfg = load_config([*base, "export.visible_size=8192"])
    assert preflight.memory_estimates(cfg)["export.visible_size"] > 8e9
    with pytest.raises(UserError, match="'export.visible_size'=8192"):
        preflight.check_memory(cfg, 8e9)
    cfg = load_config([*base, "export.visible_views=0", "export.visible_size=8192"])
    assert preflight.memory_estimates(cfg)["export.visible_size"] == 0


def test_a_mesh_no_view_resolves_is_kept_whole(caplog):
    """Under 2 % of the faces seen (here: a speck below a pixel in every view) is a degenerate case:
    the mesh comes back unchanged, with a warning, rather than cut down to nothing."""
    v, f = _sphere(1e-4, 1)
    with caplog.at_level("WARNING", logger="mesh_renderer.visibility"):
        nv, nf = drop_hidden_faces(v, f, views=16, size=32, backend="torch")
    assert nv is v and nf is f
    assert any("kept whole" in r.message for r in caplog.records)
