"""core/cameras.py: the one camera convention and its converters, checked geometrically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.cameras import (
    Cameras,
    elevation_offset_range,
    focal_from_fovy,
    orbit_cameras,
    sample_orbit_views,
)

ATOL = 1e-4


def random_cams(n: int = 16, seed: int = 0, height: int = 256, width: int | None = None) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    elev = torch.rand(n, generator=g) * 160 - 80
    azim = torch.rand(n, generator=g) * 360 - 180
    radius = 1.5 + torch.rand(n, generator=g)
    return orbit_cameras(elev, azim, radius, fovy=49.1, height=height, width=width)


def project_cv(cams: Cameras, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [P,3] -> pixel coords [V,P,2] and depth [V,P] through viewmats and Ks."""
    homo = torch.cat([pts, torch.ones(len(pts), 1)], dim=-1)
    cam = torch.einsum("vij,pj->vpi", cams.viewmats(), homo)[..., :3]
    uvw = torch.einsum("vij,vpj->vpi", cams.Ks(), cam)
    return uvw[..., :2] / uvw[..., 2:], cam[..., 2]


def project_gl(cams: Cameras, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points -> pixel coords through mvp (NDC -> pixels, row 0 at the top) and NDC z."""
    homo = torch.cat([pts, torch.ones(len(pts), 1)], dim=-1)
    clip = torch.einsum("vij,pj->vpi", cams.mvp(), homo)
    ndc = clip[..., :3] / clip[..., 3:]
    u = (ndc[..., 0] + 1) / 2 * cams.width
    v = (ndc[..., 1] + 1) / 2 * cams.height
    return torch.stack([u, v], dim=-1), ndc[..., 2]


@pytest.mark.parametrize("width", [None, 320])
def test_origin_projects_to_image_centre(width):
    cams = random_cams(width=width)
    origin = torch.zeros(1, 3)
    uv, depth = project_cv(cams, origin)
    centre = torch.tensor([cams.width / 2, cams.height / 2])
    assert torch.allclose(uv[:, 0], centre.expand(len(cams), 2), atol=1e-3)
    assert torch.allclose(depth[:, 0], cams.radius, atol=ATOL)  # in front, at the orbit radius
    uv_gl, _ = project_gl(cams, origin)
    assert torch.allclose(uv_gl[:, 0], centre.expand(len(cams), 2), atol=1e-3)


@pytest.mark.parametrize("width", [None, 320])
def test_project_matches_the_homogeneous_projection(width):
    cams = random_cams(width=width)
    pts = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    uv, depth = cams.project(pts)
    uv_ref, depth_ref = project_cv(cams, pts)
    assert uv.shape == (len(cams), 50, 2) and depth.shape == (len(cams), 50)
    assert torch.allclose(uv, uv_ref, atol=1e-3) and torch.allclose(depth, depth_ref, atol=ATOL)


@pytest.mark.parametrize(
    "elev, azim, expected",
    [
        (0.0, 0.0, (0.0, 0.0, 2.0)),  # azimuth 0 looks from +z
        (0.0, 90.0, (2.0, 0.0, 0.0)),  # azimuth 90 looks from +x
        (0.0, 180.0, (0.0, 0.0, -2.0)),
        (0.0, -90.0, (-2.0, 0.0, 0.0)),
        (-30.0, 0.0, (0.0, 1.0, math.sqrt(3.0))),  # negative elevation is above
        (30.0, 90.0, (math.sqrt(3.0), -1.0, 0.0)),
    ],
)
def test_camera_positions(elev, azim, expected):
    cams = orbit_cameras(elev, azim, radius=2.0)
    assert torch.allclose(cams.campos()[0], torch.tensor(expected), atol=ATOL)
    # The camera looks along its -Z at the origin, and its +X is horizontal (no roll).
    forward = -cams.c2w[0, :3, 2]
    assert torch.allclose(forward, -cams.campos()[0] / 2.0, atol=ATOL)
    assert abs(float(cams.c2w[0, 1, 0])) < ATOL


def test_negative_elevation_is_above():
    cams = orbit_cameras([-60, -30, -1], [0, 45, 170])
    assert (cams.campos()[:, 1] > 0).all()
    cams = orbit_cameras([1, 30, 60], [0, 45, 170])
    assert (cams.campos()[:, 1] < 0).all()


def test_poses_are_rotations_with_world_up_upward_in_the_image():
    cams = random_cams()
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand_as(R), atol=ATOL)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(cams)), atol=ATOL)
    # A point above the origin appears above the image centre (row 0 is the top).
    uv, _ = project_cv(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0]]))
    assert (uv[:, 1, 1] < uv[:, 0, 1]).all()
    # Azimuth 0, elevation 0: world +x is to the right.
    uv, _ = project_cv(orbit_cameras(0.0, 0.0), torch.tensor([[0.1, 0.0, 0.0]]))
    assert uv[0, 0, 0] > 128


def test_viewmats_are_the_rigid_inverse():
    cams = random_cams()
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    c2w_cv = cams.c2w @ flip
    w2c = cams.viewmats()
    assert torch.allclose(w2c, torch.linalg.inv(c2w_cv), atol=ATOL)
    assert torch.allclose(w2c @ c2w_cv, torch.eye(4).expand_as(w2c), atol=ATOL)
    assert torch.allclose(w2c[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(len(cams), 4))


def test_intrinsics():
    cams = orbit_cameras(0.0, 0.0, fovy=49.1, height=256, width=320)
    K = cams.Ks()[0]
    f = 256 / (2 * math.tan(math.radians(49.1) / 2))
    assert focal_from_fovy(49.1, 256) == pytest.approx(f)
    assert torch.allclose(K, torch.tensor([[f, 0, 160.0], [0, f, 128.0], [0, 0, 1]]), atol=1e-3)
    # The top edge of the vertical field of view lands on row 0.
    half = math.radians(49.1) / 2
    uv, _ = project_cv(cams, torch.tensor([[0.0, 2.0 * math.tan(half) * 0.999, 0.0]]))
    assert uv[0, 0, 1] == pytest.approx(0.128, abs=1e-2)


def test_mvp_agrees_with_viewmats_and_Ks():
    cams = random_cams(width=192)
    g = torch.Generator().manual_seed(0)
    pts = (
        torch.randn(50, 3, generator=g) * 0.4
    )  # inside the unit ball: in front of every camera (radius >= 1.5)
    uv_cv, depth_cv = project_cv(cams, pts)
    uv_gl, z_ndc = project_gl(cams, pts)
    assert (depth_cv > 0).all()
    assert torch.allclose(uv_cv, uv_gl, atol=2e-3)
    assert ((z_ndc > -1) & (z_ndc < 1)).all()
    # NDC depth increases with camera depth (closer points win the z-test). Points whose depths
    # differ by less than float32 rounding of the two computations (measured < 3e-5) may tie or swap.
    idx = depth_cv.argsort(dim=1)
    gap = torch.gather(depth_cv, 1, idx).diff(dim=1)
    dz = torch.gather(z_ndc, 1, idx).diff(dim=1)
    assert (dz[gap > 1e-4] > 0).all()


def test_cameras_batch_helpers():
    cams = random_cams(6)
    assert len(cams[2]) == 1 and torch.equal(cams[2].c2w, cams.c2w[2:3])
    assert len(cams[1:4]) == 3
    both = Cameras.cat([cams[:2], cams[2:]])
    assert torch.equal(both.c2w, cams.c2w) and torch.equal(both.azimuth, cams.azimuth)
    small = cams.resized(64)
    assert small.height == small.width == 64 and torch.equal(small.c2w, cams.c2w)
    assert small.Ks()[0, 0, 2] == 32.0


@pytest.mark.parametrize("seed", range(20))
def test_sample_orbit_views_like_the_authors(seed):
    rng = np.random.default_rng(seed)
    offsets, azims = sample_orbit_views(rng, 6, ref_elevation=0.0, min_ver=-30, max_ver=30)
    assert offsets.shape == azims.shape == (6,)
    assert -180 <= azims[0] <= -121
    assert (np.diff(azims) == 60).all()
    assert ((offsets >= -30) & (offsets <= 29)).all()
    # ImageDream: 4 views 90 degrees apart, elevation offsets in [-5, 0).
    offsets, azims = sample_orbit_views(rng, 4, ref_elevation=0.0, min_ver=-5, max_ver=0)
    assert -180 <= azims[0] <= -91 and (np.diff(azims) == 90).all()
    assert ((offsets >= -5) & (offsets <= -1)).all()


def test_sample_orbit_views_distribution():
    rng = np.random.default_rng(0)
    draws = [sample_orbit_views(rng, 6) for _ in range(400)]
    bases = np.array([a[0] for _, a in draws])
    offsets = np.concatenate([o for o, _ in draws])
    assert bases.min() == -180 and bases.max() == -121  # the whole range is reachable
    assert offsets.min() == -30 and offsets.max() == 29
    # Views draw their elevations independently (not one value per batch).
    assert np.mean([len(set(o)) > 1 for o, _ in draws]) > 0.9
    # Uneven sampling: independent azimuths in [-180, 180).
    _, az = sample_orbit_views(np.random.default_rng(1), 64, even=False)
    assert az.min() >= -180 and az.max() < 180 and len(set(az)) > 10


@pytest.mark.parametrize(
    "ref, lo, hi", [(0.0, -30, 30), (-30.0, -30, 60), (30.0, -60, 30), (-70.0, -10, 100), (60.0, -90, 20)]
)
def test_elevation_offset_range_matches_the_spec(ref, lo, hi):
    # docs/method.md#view-sampling: min = max(min(min_ver, min_ver - e), -80 - e); max = min(max(max_ver, max_ver - e), 80 - e)
    assert elevation_offset_range(ref, -30, 30) == (lo, hi)
    # The absolute elevation of every view stays within [-80, 80].
    assert ref + lo >= -80 and ref + hi <= 80


def test_converters_are_computed_once_per_cameras_and_follow_changes():
    """viewmats()/Ks() are memoised per cameras object (stage-1 steps reuse one), equal to a fresh
    build, rebuilt after an in-place pose change, and independent across resized/indexed copies."""
    from dataclasses import replace

    cams = random_cams(4)
    vm, K = cams.viewmats(), cams.Ks()
    assert cams.viewmats() is vm and cams.Ks() is K
    assert torch.equal(vm, cams._build_viewmats()) and torch.equal(K, cams._build_Ks())
    small = cams.resized(64)
    assert small.Ks() is not K and float(small.Ks()[0, 0, 2]) == 32.0 and float(K[0, 0, 2]) == 128.0
    assert torch.equal(cams[1:3].viewmats(), vm[1:3])
    fresh = replace(cams, c2w=cams.c2w.clone())
    assert fresh.viewmats() is not vm and torch.equal(fresh.viewmats(), vm)
    with torch.no_grad():
        cams.c2w[0, :3, 3] += 1.0  # moved in place: the memo must not serve the old pose
    moved = cams.viewmats()
    assert moved is not vm and torch.equal(moved, cams._build_viewmats()) and not torch.equal(moved, vm)


def test_differentiable_poses_are_not_memoised():
    from dataclasses import replace

    cams = random_cams(2)
    c2w = cams.c2w.clone().requires_grad_(True)
    posed = replace(cams, c2w=c2w)
    for _ in range(2):  # a shared graph would fail the second backward
        posed.viewmats().sum().backward()
    assert c2w.grad is not None
