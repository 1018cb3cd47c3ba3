"""The oracle teacher: a perfect denoiser, so refine returns its renders from any t2 and eta."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.cameras import orbit_cameras
from guidance.models.oracle import OracleDenoiser, color_field
from guidance.sir_step import refine

MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
pytestmark = [
    pytest.mark.skipif(not (MESHES / "spot.obj").is_file(), reason="../shared/data/meshes missing"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def oracle():
    return OracleDenoiser(MESHES / "spot.obj", image_size=48, backend="torch")


def test_normalised_and_reference_image(oracle):
    lo, hi = oracle.mesh.bbox()
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3), atol=1e-6, rtol=0)
    assert abs((hi - lo).max().item() - 1.0) < 1e-5
    rgb, mask = oracle.reference_image(0.0, 48)
    assert rgb.shape == (3, 48, 48) and mask.shape == (1, 48, 48)
    assert 0.02 < mask.mean() < 0.6
    assert torch.all(rgb[:, mask[0] == 0] == 1.0)  # white background
    fg = rgb[:, mask[0] > 0]
    assert fg.std(dim=1).min() > 0.05  # the colour field varies over the surface


def test_color_field_is_a_pure_function():
    p = torch.rand(1000, 3) - 0.5
    a, b = color_field(p), color_field(p.clone())
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert a.std(0).min() > 0.1  # smooth hues move
    near = color_field(p + 0.02)
    assert (near - a).abs().mean() < (color_field(torch.rand(1000, 3) - 0.5) - a).abs().mean()


@pytest.mark.parametrize("t1, t2, eta", [(501, 901, 0.5), (451, 801, 0.0), (201, 201, 1.0), (101, 951, 0.5)])
def test_refine_returns_the_renders(oracle, t1, t2, eta):
    cams = orbit_cameras([0.0, -20.0, 15.0], [0.0, 120.0, 240.0], height=96)
    g = torch.Generator().manual_seed(0)
    want, _ = oracle.render(cams)
    images = torch.nn.functional.interpolate(want, (96, 96), mode="bilinear")  # converged renders
    out = refine(oracle, images, cams, t1, t2, eta, 3.0, 20, g)
    # The last DDIM step lands on alpha_0 = alphas_cumprod[0] < 1, not on x0: the result is
    # sqrt(a0) x0 + sqrt(1 - a0 - s^2) eps + s z, i.e. off by ~sqrt(1 - a0) |n| / 2 in pixels.
    a0 = oracle.schedule.final_alpha_cumprod
    err = (out.images - want).abs()
    assert err.mean() < 0.5 * math.sqrt(1 - a0) * 1.0
    assert err.max() < 0.5 * ((1 - math.sqrt(a0)) + math.sqrt(1 - a0) * 6.0)
    assert out.cfg_calls == len([t for t in oracle.schedule.timesteps(20) if t <= t2])


def test_refine_from_other_images(oracle):
    """Inputs far from x0 add sqrt(ab_t1 / (1 - ab_t1)) (x - x0) to the effective noise, nothing more."""
    cams = orbit_cameras([0.0, -20.0], [30.0, 200.0], height=48)
    g = torch.Generator().manual_seed(2)
    want, _ = oracle.render(cams)
    a0 = oracle.schedule.final_alpha_cumprod
    for t1, t2 in ((101, 951), (501, 901)):
        out = refine(oracle, torch.rand(2, 3, 48, 48, generator=g), cams, t1, t2, 0.5, 3.0, 20, g)
        ab1 = oracle.schedule.alpha_bar(t1)
        n_max = 6.0 + 2.0 * math.sqrt(ab1 / (1 - ab1))
        assert (out.images - want).abs().max() < 0.5 * ((1 - math.sqrt(a0)) + math.sqrt(1 - a0) * n_max)


def test_refine_from_noise_and_stage2(oracle):
    cams = orbit_cameras([0.0, 10.0], [45.0, 225.0], height=48)
    want, _ = oracle.render(cams)
    a0 = oracle.schedule.final_alpha_cumprod
    g = torch.Generator().manual_seed(1)
    out = refine(oracle, torch.zeros(2, 3, 48, 48), cams, 0, 1000, 0.5, 3.0, 20, g, from_noise=True)
    assert (out.images - want).abs().mean() < 0.5 * math.sqrt(1 - a0)
    t = oracle.schedule.timesteps(50)[40]
    out = refine(oracle, want, cams, t, t, 0.0, 2.0, 50, g)
    assert (out.images - want).abs().mean() < 0.5 * math.sqrt(1 - a0) and out.cfg_calls == 10


def test_textured_mesh_uses_its_texture():
    duck = MESHES / "duck.glb"
    if not duck.is_file():
        pytest.skip("duck.glb missing")
    o = OracleDenoiser(duck, image_size=32, backend="torch")
    assert o.textured
    rgb, mask = o.reference_image(0.0, 32)
    fg = rgb[:, mask[0] > 0]
    assert fg[0].mean() > 0.6 and fg[2].mean() < 0.4  # the duck is yellow


def test_load_denoiser_oracle():
    from guidance import load_denoiser

    cfg = {
        "guidance": "oracle",
        "oracle": {"mesh": str(MESHES / "spot.obj")},
        "sir": {"render_size": 32},
        "render": {"mesh_backend": "torch"},
        "cameras": {"radius": 2.0, "fovy": 49.1},
    }
    d = load_denoiser(cfg, "cpu")
    assert isinstance(d, OracleDenoiser) and d.image_size == 32
    from core.errors import UserError

    with pytest.raises(UserError, match="oracle.mesh"):
        load_denoiser({"guidance": "oracle", "oracle": {"mesh": "/nonexistent.obj"}}, "cpu")
    with pytest.raises(UserError, match="guidance="):
        load_denoiser({"guidance": "sd"}, "cpu")
