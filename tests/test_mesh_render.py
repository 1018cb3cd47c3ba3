"""Differentiable mesh rendering (torch backend): pixels at known positions, z-buffer, gradients, batching."""

from __future__ import annotations

import math

import pytest
import torch

from core.cameras import orbit_cameras
from mesh_renderer import Mesh, rasterize, render, shade
from mesh_renderer.shade import sample_texture

pytestmark = pytest.mark.usefixtures("one_thread_module")

RED, GREEN, BLUE, WHITE = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]


def quad(z: float = 0.0, half: float = 0.5, albedo=None) -> Mesh:
    """Square in the plane z, facing +Z, u along +X and v along +Y."""
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    vt = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    if albedo is None:  # row 0 = top (v=1): red | green over blue | white
        albedo = torch.tensor([[RED, GREEN], [BLUE, WHITE]])
    return Mesh(v=v, f=f, vt=vt, albedo=albedo)


def cube() -> Mesh:
    """Unit cube whose 6 faces map to 6 texels of a [1,6,3] texture (+X,-X,+Y,-Y,+Z,-Z)."""
    verts, faces, uvs = [], [], []
    for k, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]):
        a, b = [i for i in range(3) if i != axis]
        base = len(verts)
        for s, t in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
            p = [0.0, 0.0, 0.0]
            p[axis], p[a], p[b] = 0.5 * sign, 0.5 * s, 0.5 * t
            verts.append(p)
            uvs.append([(k + 0.5) / 6, 0.5])
        tri = [[0, 1, 2], [0, 2, 3]]
        # Flip winding where (a, b, axis) is left-handed so every face points outwards.
        n = torch.linalg.cross(torch.eye(3)[a], torch.eye(3)[b])[axis] * sign
        faces += [[base + i for i in (t if n > 0 else t[::-1])] for t in tri]
    colors = torch.tensor([RED, GREEN, BLUE, [1.0, 1.0, 0], [0, 1.0, 1.0], [1.0, 0, 1.0]])[None]
    return Mesh(v=torch.tensor(verts), f=torch.tensor(faces), vt=torch.tensor(uvs), albedo=colors)


def test_quad_pixels_depth_normal():
    cams = orbit_cameras(0.0, 0.0, radius=2.0, fovy=49.1, height=64)
    out = render(quad(), cams, bg=[0.2, 0.3, 0.4], backend="torch")
    f = 32 / math.tan(math.radians(49.1) / 2)
    lo, hi = 32 - 0.25 * f, 32 + 0.25 * f  # quad edges in pixels (half-size 0.5 at distance 2)
    rgb = out.rgb[0]
    assert rgb.shape == (3, 64, 64) and out.alpha.shape == (1, 1, 64, 64)
    a, b = int(lo) + 3, int(hi) - 3
    assert torch.allclose(rgb[:, a, a], torch.tensor(RED))  # image top-left = texture top-left
    assert torch.allclose(rgb[:, a, b], torch.tensor(GREEN))  # +X is on the right
    assert torch.allclose(rgb[:, b, a], torch.tensor(BLUE))
    assert torch.allclose(rgb[:, b, b], torch.tensor(WHITE))
    assert torch.allclose(rgb[:, 2, 2], torch.tensor([0.2, 0.3, 0.4]))  # background
    cover = out.alpha[0, 0]
    assert cover[32, 32] == 1 and cover[2, 2] == 0
    # Coverage spans exactly the pixels whose centres are inside [lo, hi].
    cols = cover[32].nonzero().squeeze(1)
    assert int(cols.min()) == math.ceil(lo - 0.5) and int(cols.max()) == math.floor(hi - 0.5)
    assert float(out.depth[0, 0, 32, 32]) == pytest.approx(2.0, abs=1e-5)
    assert torch.allclose(out.normal[0, :, 32, 32], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert float(out.viewcos[0, 0, 32, 32]) == pytest.approx(1.0, abs=1e-3)
    assert float(out.viewcos[0, 0, a, a]) < float(out.viewcos[0, 0, 32, 32])  # off-axis: smaller cosine


def test_cube_faces_seen_from_each_side():
    m = cube()
    cams = orbit_cameras([0, 0, 0, 0, -89.9, 89.9], [0, 90, 180, -90, 0, 0], radius=3.0, height=32)
    out = render(m, cams, backend="torch")
    centre = out.rgb[:, :, 16, 16]  # [V,3]
    expect = m.albedo[0][[4, 0, 5, 1, 2, 3]]  # +Z, +X, -Z, -X, +Y (above: negative elevation), -Y
    assert torch.allclose(centre, expect, atol=1e-5)
    assert (out.viewcos[:, 0, 16, 16] > 0.99).all()  # outward normals face the camera


def test_zbuffer_nearest_wins_regardless_of_order():
    near = quad(z=0.2, albedo=torch.tensor([[RED]]))
    far = quad(z=-0.2, half=0.8, albedo=torch.tensor([[BLUE]]))
    for first, second in [(near, far), (far, near)]:
        v = torch.cat([first.v, second.v])
        f = torch.cat([first.f, second.f + 4])
        vt = torch.tensor([[0.25, 0.5]] * 4 + [[0.75, 0.5]] * 4)
        tex = torch.tensor([[first.albedo[0, 0].tolist(), second.albedo[0, 0].tolist()]])
        m = Mesh(v=v, f=f, vt=vt, albedo=tex)
        out = render(m, orbit_cameras(0.0, 0.0, 2.0, height=32), backend="torch")
        assert torch.allclose(out.rgb[0, :, 16, 16], torch.tensor(RED))
        assert torch.allclose(out.rgb[0, :, 16, 3], torch.tensor(BLUE))  # only the big far quad there
        assert float(out.depth[0, 0, 16, 16]) == pytest.approx(1.8, abs=1e-4)


def test_texture_gradients_match_bilinear_weights():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(8, 8, 3, generator=g, requires_grad=True)
    m = quad(albedo=tex.detach())
    cams = orbit_cameras([0.0, -20.0], [0.0, 30.0], 2.0, height=32)
    raster = rasterize(m, cams, backend="torch")
    out = shade(raster, tex, bg=0.0)
    w = torch.rand(out.rgb.shape, generator=g)
    (out.rgb * w).sum().backward()
    grad = tex.grad.clone()
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    # Rendering is linear in the texture: the gradient is exact, check one texel by finite difference.
    r, c, ch = 3, 4, 1
    delta = torch.zeros_like(tex)
    delta[r, c, ch] = 1.0
    with torch.no_grad():
        fd = ((shade(raster, tex + delta, bg=0.0).rgb - out.rgb) * w).sum()
    assert float(fd) == pytest.approx(float(grad[r, c, ch]), rel=1e-3, abs=1e-4)


def test_sigmoid_after_sampling_and_cached_shading():
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(16, 16, 3, generator=g, requires_grad=True)
    m = quad(albedo=torch.sigmoid(raw.detach()))
    raster = rasterize(m, orbit_cameras(-15.0, 20.0, 2.0, height=32), backend="torch")
    a = shade(raster, raw, bg=0.0, activation="sigmoid")
    b = sample_texture(raster, raw.detach())
    mask = raster.mask[..., None]
    assert torch.allclose(a.rgb.permute(0, 2, 3, 1)[mask.expand_as(b)], torch.sigmoid(b)[mask.expand_as(b)])
    a.rgb.mean().backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    again = shade(raster, raw, bg=0.0, activation="sigmoid")  # second shade reuses the cached lookup
    assert torch.equal(again.rgb, a.rgb)


def test_batch_equals_single_views():
    m = cube()
    cams = orbit_cameras([-30, 0, 20, 10], [15, 100, -140, 60], radius=2.5, height=40)
    batch = render(m, cams, bg=0.5, backend="torch")
    for i in range(len(cams)):
        one = render(m, cams[i], bg=0.5, backend="torch")
        for name in ["rgb", "alpha", "depth", "normal", "viewcos"]:
            assert torch.allclose(getattr(batch, name)[i : i + 1], getattr(one, name), atol=1e-6), name


def test_untextured_mesh_renders_grey_and_bad_backend_fails():
    m = Mesh(v=cube().v, f=cube().f)
    out = render(m, orbit_cameras(0.0, 0.0, 2.5, height=16), bg=1.0, backend="torch")
    assert torch.allclose(out.rgb[0, :, 8, 8], torch.tensor([0.7, 0.7, 0.7]))
    with pytest.raises(ValueError, match="backend"):
        rasterize(m, orbit_cameras(0.0, 0.0, 2.5, height=16), backend="opengl")
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(m, orbit_cameras(0.0, 0.0, 2.5, height=16), backend="nvdiffrast")
