"""The per-step camera and densification code is sync-free and bit-identical to its old formulas.

On a GPU a ``torch.tensor([...], device=cuda)`` is a blocking host->device copy, and ``.item()``,
``float()``, ``bool()``, ``nonzero`` wait for the GPU; ``tests/gpu/test_host_syncs_gpu.py`` runs the
real steps under ``torch.cuda.set_sync_debug_mode("error")``. Here (CPU) the old formulas are kept
as references and compared bit for bit (int32 views, so even the sign of a zero counts), and the
hot-path calls run with every host-reading tensor call patched to raise.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import pytest
import torch

from core.cameras import Cameras, orbit_cameras, orbit_poses
from core.types import RenderOutput
from gs_renderer import GaussianModel
from gs_renderer.densify import Densifier
from pipeline import load_config
from pipeline.gaussians import GaussianRepresentation
from pipeline.stage1 import gaussian_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (float32 compared as int32: -0.0 differs from 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ------------------------------------------------------------------ the old formulas (references)
def _old_orbit_poses(elevation, azimuth, radius):
    elevation = torch.as_tensor(elevation, dtype=torch.float32)
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32, device=elevation.device)
    radius = torch.as_tensor(radius, dtype=torch.float32, device=elevation.device).expand_as(elevation)
    e = torch.deg2rad(elevation.clamp(-89.99, 89.99))
    a = torch.deg2rad(azimuth)
    campos = torch.stack(
        [radius * torch.cos(e) * torch.sin(a), -radius * torch.sin(e), radius * torch.cos(e) * torch.cos(a)],
        dim=-1,
    )
    back = torch.nn.functional.normalize(campos, dim=-1)
    up_world = torch.tensor([0.0, 1.0, 0.0], device=campos.device).expand_as(back)
    right = torch.nn.functional.normalize(torch.cross(up_world, back, dim=-1), dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.eye(4, device=campos.device).repeat(len(campos), 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = campos
    return c2w


def _old_rigid_inverse(c2w):
    R = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.eye(4, device=c2w.device).repeat(len(c2w), 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3:] = -R @ c2w[:, :3, 3:]
    return w2c


def _old_viewmats(c: Cameras):
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=c.device))
    return _old_rigid_inverse(c.c2w @ flip)


def _old_Ks(c: Cameras):
    f = c.focal
    K = torch.tensor([[f, 0.0, c.width / 2.0], [0.0, f, c.height / 2.0], [0.0, 0.0, 1.0]], device=c.device)
    return K.expand(len(c), 3, 3).contiguous()


def _old_projection(c: Cameras, near=0.01, far=100.0):
    f = c.focal
    return torch.tensor(
        [
            [2.0 * f / c.width, 0.0, 0.0, 0.0],
            [0.0, -2.0 * f / c.height, 0.0, 0.0],
            [0.0, 0.0, -(far + near) / (far - near), -(2.0 * far * near) / (far - near)],
            [0.0, 0.0, -1.0, 0.0],
        ],
        device=c.device,
    )


def _old_add_stats(grad, radii, width, height, views, last_view_only, acc, den, rad):
    g = grad
    if views is not None:
        g, radii = g[:views], radii[:views]
    if last_view_only:
        g, radii = g[-1:], radii[-1:]
    scale = torch.tensor([width / 2.0, height / 2.0], device=g.device)
    norms = (g * scale).norm(dim=-1)
    vis = radii > 0
    return acc + (norms * vis).sum(0), den + vis.sum(0), torch.maximum(rad, radii.float().max(0).values)


# ---------------------------------------------------------------------------- bit-equality checks
def _random_cameras(seed: int, v: int, fovy: float, h: int, w: int) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    elev = torch.rand(v, generator=g) * 180.0 - 90.0  # includes the clamped poles' neighbourhood
    elev[0] = 90.0  # clamped to 89.99
    azim = torch.rand(v, generator=g) * 720.0 - 360.0
    azim[-1] = 0.0  # zeros in c2w: exercises signed zeros through the flip
    elev[-1] = 0.0
    radius = 1.0 + 3.0 * torch.rand(v, generator=g)
    return Cameras(
        c2w=orbit_poses(elev, azim, radius),
        elevation=elev,
        azimuth=azim,
        radius=radius,
        fovy=fovy,
        height=h,
        width=w,
    )


CASES = [(0, 1, 49.1, 64, 64), (1, 5, 30.0, 256, 256), (2, 8, 60.0, 48, 80), (3, 3, 17.3, 33, 21)]


@pytest.mark.parametrize("seed,v,fovy,h,w", CASES)
def test_camera_converters_bit_identical_to_the_old_formulas(seed, v, fovy, h, w):
    cams = _random_cameras(seed, v, fovy, h, w)
    assert _bits_equal(cams.c2w, _old_orbit_poses(cams.elevation, cams.azimuth, cams.radius))
    assert _bits_equal(cams.viewmats(), _old_viewmats(cams))
    assert _bits_equal(cams.Ks(), _old_Ks(cams))
    assert cams.Ks().is_contiguous() and cams.Ks().shape == (v, 3, 3)
    for near, far in ((0.01, 100.0), (0.5, 7.25)):
        assert _bits_equal(cams.projection(near, far), _old_projection(cams, near, far))
        assert _bits_equal(
            cams.mvp(near, far), _old_projection(cams, near, far) @ _old_rigid_inverse(cams.c2w)
        )
    # A Python radius (orbit_cameras' default path) matches the old as_tensor conversion.
    for radius in (2.0, 3, 1.7):
        new = orbit_cameras(cams.elevation, cams.azimuth, radius=radius, fovy=fovy, height=h, width=w)
        assert _bits_equal(new.c2w, _old_orbit_poses(cams.elevation, cams.azimuth, radius))
        assert _bits_equal(new.radius, torch.as_tensor(radius, dtype=torch.float32).expand(v).clone())


@pytest.mark.parametrize(
    "views,last,size", [(None, False, None), (3, False, None), (3, True, (40, 24)), (None, True, None)]
)
def test_add_stats_bit_identical_to_the_old_formula(views, last, size):
    n, V, H, W = 50, 4, 24, 40
    g = torch.Generator().manual_seed(5)
    model = GaussianModel.init_ball(n, radius=0.5, seed=0)
    d = Densifier(model, None)
    acc, den, rad = d.grad_accum.clone(), d.denom.clone(), d.max_radii2d.clone()
    width, height = size if size is not None else (None, None)
    for _ in range(3):  # accumulates over steps
        means2d = torch.zeros(V, n, 2, requires_grad=True)
        means2d.grad = torch.randn(V, n, 2, generator=g) * torch.rand(V, n, 1, generator=g) * 1e-2
        radii = torch.randint(-1, 6, (V, n), generator=g, dtype=torch.int32).clamp_min(0)
        out = RenderOutput(
            rgb=torch.zeros(V, 3, H, W), alpha=torch.zeros(V, 1, H, W), means2d=means2d, radii=radii
        )
        d.add_stats(out, width=width, height=height, views=views, last_view_only=last)
        acc, den, rad = _old_add_stats(
            means2d.grad, radii, width or W, height or H, views, last, acc, den, rad
        )
        assert _bits_equal(d.grad_accum, acc)
        assert torch.equal(d.denom, den) and d.denom.dtype == den.dtype
        assert _bits_equal(d.max_radii2d, rad)
    assert float(d.grad_accum.abs().sum()) > 0 and float(d.denom.sum()) > 0


def test_clamp_scales_matches_the_conditional_clamp():
    model = GaussianModel.init_ball(40, radius=0.5, seed=1)
    with torch.no_grad():
        model.scales.copy_(torch.log(torch.linspace(0.001, 0.2, 120)).view(40, 3))
    d = Densifier(model, None)
    limit = float(torch.log(torch.tensor(0.05)))
    expected = model.scales.detach().clamp(max=limit)
    n_over = int((model.scales.detach() > limit).any(dim=1).sum())
    n = d.clamp_scales(0.05)
    assert torch.is_tensor(n) and int(n) == n_over > 0
    assert _bits_equal(model.scales.detach(), expected)
    assert int(d.clamp_scales(0.05)) == 0  # nothing over the cap any more
    assert _bits_equal(model.scales.detach(), expected)


# ------------------------------------------------------------------- no host reads in the hot path
class _NoHostReads:
    """While ``active``, calls that read a tensor on the host (or build one from a list) raise."""

    NAMES = ("item", "tolist", "nonzero", "masked_select", "__bool__", "__float__", "__int__", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        for name in self.NAMES:
            monkeypatch.setattr(
                torch.Tensor, name, self._guard(getattr(torch.Tensor, name), f"Tensor.{name}")
            )
        monkeypatch.setattr(torch, "tensor", self._guard(torch.tensor, "torch.tensor"))

    def _guard(self, fn, label):
        def wrapped(*args, **kwargs):
            if self.active:
                raise AssertionError(f"{label} in the hot path (a host-device sync on CUDA)")
            return fn(*args, **kwargs)

        return wrapped

    @contextlib.contextmanager
    def on(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


def test_hot_path_makes_no_host_reads(monkeypatch):
    S, V = 8, 2
    cfg = load_config(["guidance=oracle", "device=cpu"])
    settings = replace(gaussian_settings(cfg), max_scale=0.05)  # clamp_scales runs every step too
    ref_cam = orbit_cameras(0.0, 0.0, height=S)
    model = GaussianModel.init_ball(30, radius=0.5, seed=0)
    rep = GaussianRepresentation(model, settings, torch.ones(3, S, S), torch.ones(1, S, S), ref_cam)
    elev, azim = torch.tensor([0.0, -20.0]), torch.tensor([30.0, 210.0])
    target = torch.rand(V, 3, S, S, generator=torch.Generator().manual_seed(0))
    guard = _NoHostReads(monkeypatch)
    # The optimiser is another part's (and CPU Adam reads its step counter with .item()).
    real_step = rep.optimizer.step

    def unguarded_step(*a, **k):
        guard.active = False
        try:
            return real_step(*a, **k)
        finally:
            guard.active = True

    rep.optimizer.step = unguarded_step

    def fake_render() -> RenderOutput:
        """A differentiable stand-in for the rasteriser (the CPU reference one syncs by design)."""
        m = rep.model
        means2d = (m.means[None, :, :2] * 10.0).expand(V + 1, -1, -1)
        means2d.retain_grad()
        shade = (m.get_colors().mean(0) * m.get_opacities().mean() + 0.01 * means2d.mean())[
            None, :, None, None
        ]
        return RenderOutput(
            rgb=shade.expand(V + 1, 3, S, S),
            alpha=m.get_opacities().mean().expand(V + 1, 1, S, S),
            means2d=means2d,
            radii=torch.ones(V + 1, m.num_points, dtype=torch.int32),
        )

    for step in range(4):  # a warm-up step first (optimiser state, cached constants), then guarded
        with guard.on() if step else contextlib.nullcontext():
            cams = orbit_cameras(elev, azim, radius=2.0, height=S)
            cams.viewmats(), cams.Ks(), cams.projection(), cams.mvp()
            rep.begin_iteration(cams)
            out = fake_render()
            rep.step(rep.loss(out, target), out)
    assert rep.step_count == 4
    assert float(rep.densifier.denom.sum()) == 4 * 30  # last view only, every Gaussian visible
    assert float(rep.model.get_scales().detach().max()) <= 0.05 * (1 + 1e-6)
    # The guard does catch the old formulas.
    with guard.on(), pytest.raises(AssertionError, match="torch.tensor"):
        _old_Ks(cams)
    assert math.isfinite(float(rep.densifier.grad_accum.sum()))
