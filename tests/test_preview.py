"""core/preview.py, pipeline/previews.py and tools/render.py: grids, turntables, videos, rendering files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import preview
from pipeline import previews

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def test_preview_grid_size_and_layout(tmp_path):
    imgs = torch.zeros(8, 3, 16, 20)
    imgs[3, 0] = 1.0  # view 3 red: row 0, column 3
    path = preview.preview_grid(imgs, tmp_path / "sub" / "g.png", ncols=4)
    with Image.open(path) as im:
        assert im.size == (4 * 20, 2 * 16) and im.mode == "RGB"
        arr = np.asarray(im)
    assert tuple(arr[8, 3 * 20 + 10]) == (255, 0, 0) and tuple(arr[8, 10]) == (0, 0, 0)
    assert not [p for p in path.parent.iterdir() if p.name != "g.png"]  # no temporary file left


def test_grid_fills_missing_cells_white():
    grid = preview.make_grid(np.zeros((5, 4, 6, 3), np.uint8), ncols=4)
    assert grid.shape == (8, 24, 3)
    assert (grid[4:, 6:] == 255).all() and (grid[4:, :6] == 0).all()


def test_turntable_cameras_cover_360_degrees():
    cams = preview.turntable_cameras(120, elevation=-10.0, radius=2.5, fovy=40.0, size=64)
    assert len(cams) == 120 and cams.height == cams.width == 64 and cams.fovy == 40.0
    az = cams.azimuth.numpy()
    assert az[0] == 0 and np.allclose(np.diff(az), 3.0) and az[-1] == pytest.approx(357.0)
    pos = cams.campos()
    assert torch.allclose(pos.norm(dim=-1), torch.full((120,), 2.5), atol=1e-4)
    assert torch.allclose(pos[:, 1], torch.full((120,), 2.5 * math.sin(math.radians(10))), atol=1e-4)  # above
    ang = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2])) % 360  # azimuth measured from +Z towards +X
    steps = torch.diff(torch.cat([ang, ang[:1]])) % 360
    assert torch.allclose(steps, torch.full((120,), 3.0), atol=1e-3)  # one full turn in equal steps
    assert steps.sum().item() == pytest.approx(360.0, abs=1e-2)
    # every camera looks at the origin: its -Z axis points to it
    fwd = -cams.c2w[:, :3, 2]
    assert torch.allclose(fwd, -pos / pos.norm(dim=-1, keepdim=True), atol=1e-5)


def test_preview_cameras_default_views():
    cams = preview.preview_cameras()
    assert cams.azimuth.tolist() == [0, 45, 90, 135, 180, 225, 270, 315]
    assert (cams.elevation == 0).all() and cams.height == 512


def test_save_video_roundtrip(tmp_path):
    import imageio.v2 as imageio

    frames = torch.rand(5, 3, 15, 17)  # odd sizes are padded to even ones
    path = preview.save_video(frames, tmp_path / "v.mp4", fps=10)
    assert path.stat().st_size > 0
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        got = [f for f in reader]
    finally:
        reader.close()
    assert len(got) == 5 and got[0].shape == (16, 18, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), preview.atomic_path(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_render_file_mesh(tmp_path):
    duck = SHARED / "meshes" / "duck.glb"
    if not duck.is_file():
        pytest.skip("duck.glb missing")
    out = previews.render_file(duck, out_dir=tmp_path, size=32, normalize=True, backend="torch", device="cpu")
    with Image.open(out["preview"]) as im:
        assert im.size == (4 * 32, 2 * 32)
        arr = np.asarray(im)
    assert (arr < 250).any() and tuple(arr[0, 0]) == (255, 255, 255)  # object on white


def test_render_file_ply_with_video(tmp_path):
    import gs_renderer

    save_ply = gs_renderer.save_ply
    model = gs_renderer.GaussianModel.init_ball(200, radius=0.5, seed=0)
    with torch.no_grad():
        model.opacities.fill_(3.0)  # opaque enough to be seen
    save_ply(model, tmp_path / "m_model.ply")
    out = previews.render_file(
        tmp_path / "m_model.ply", size=24, video=True, n_frames=4, backend="torch", device="cpu", chunk=3
    )
    assert out["preview"] == tmp_path / "m_model_preview.png" and out["video"] == tmp_path / "m_model.mp4"
    with Image.open(out["preview"]) as im:
        assert im.size == (4 * 24, 2 * 24)
    assert out["video"].stat().st_size > 0


def test_tools_render_cli_errors(tmp_path, capsys):
    from tools import render

    assert render.main([str(tmp_path / "nope.glb")]) == 2
    assert "error:" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hi")
    assert render.main([str(tmp_path / "x.txt")]) == 2
    assert "cannot render" in capsys.readouterr().err
