"""Stable Zero123 backend: tiny random model in the real layout, real loader, real paper schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.cameras import orbit_cameras
from core.schedules import t1_for_t2, t2_for_iteration
from guidance.denoiser import Denoiser, ListNoise, TorchNoise
from guidance.models.zero123 import zero123_embedding
from guidance.schedule import DDIMSchedule
from guidance.sir_step import refine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder():
    from testing.random_zero123 import cached_tiny_zero123

    return cached_tiny_zero123()


@pytest.fixture(scope="module")
def den(tiny_folder):
    from guidance.models.zero123 import Zero123Denoiser

    d = Zero123Denoiser(tiny_folder, device="cpu", dtype="fp32")
    d.set_reference(
        torch.rand(3, 100, 100, generator=torch.Generator().manual_seed(0)),
        -10.0,
        noise=TorchNoise(torch.Generator().manual_seed(1)),
    )
    return d


def test_layout_and_loader(tiny_folder, den):
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["clip_camera_projection"] == ["zero123", "CLIPCameraProjection"]
    assert (tiny_folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_folder / "image_encoder" / "model.safetensors").is_file()
    keys = set(den.cam_proj.state_dict())
    assert keys == {"proj.weight", "proj.bias"}
    assert den.cam_proj.proj.weight.shape == (32, 36)
    assert den.unet.config.in_channels == 8
    assert den.image_size == 64 and den.latent_size == 8 and den.latent_channels == 4
    assert den.variant == "stable" and den.views_per_group == 1
    assert den.schedule.timesteps(20)[0] == 951
    assert den.clip_emb.shape == (1, 32) and den.ref_latent.shape == (1, 4, 8, 8)


def test_conditioning_layout(den):
    cams = orbit_cameras([-10.0, 20.0], [0.0, 90.0], height=64)
    cond = den.prepare(cams)
    assert cond.hidden.shape == (4, 1, 32) and cond.concat.shape == (4, 4, 8, 8)
    # [cond; uncond]: zero token and zero concat latent in the uncond half.
    assert cond.hidden[2:].abs().max() == 0 and cond.concat[2:].abs().max() == 0
    torch.testing.assert_close(cond.concat[:2], den.ref_latent.expand(2, -1, -1, -1))
    cam = torch.tensor(
        [
            [0.0, 0.0, 1.0, torch.pi / 2 - torch.pi / 18],
            [torch.pi / 6, 1.0, 0.0, torch.pi / 2 - torch.pi / 18],
        ]
    )
    torch.testing.assert_close(den.camera_vectors(cams), cam, atol=1e-6, rtol=0)
    want = den.cam_proj(torch.cat([den.clip_emb.expand(2, -1), cam], -1))[:, None]
    torch.testing.assert_close(cond.hidden[:2], want)


def test_eps_cfg_and_uncond(den):
    cams = orbit_cameras([0.0, 0.0], [30.0, 200.0], height=64)
    cond = den.prepare(cams)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    full = den.unet(
        torch.cat([torch.cat([x, x]), cond.concat], 1),
        torch.full((4,), 501.0),
        encoder_hidden_states=cond.hidden,
    ).sample
    e_c, e_u = full[:2], full[2:]
    n0, r0 = den.nfe, den.nfe_rows
    # eps magnitudes ~5-15 on the tiny model; half- vs full-batch convolutions round differently.
    tol = dict(atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(den.eps_cfg(x, 501, cond, 3.0), e_u + 3.0 * (e_c - e_u), **tol)
    torch.testing.assert_close(den.eps_cfg(x, 501, cond, 1.0), e_c, **tol)
    torch.testing.assert_close(den.eps_uncond(x, 501, cond), e_u, **tol)
    assert den.nfe - n0 == 3 and den.nfe_rows - r0 == 4 + 4 + 2
    assert (e_c - e_u).abs().max() > 1e-3  # the conditioning reaches the network


def test_encode_decode_ranges(den):
    img = torch.rand(3, 3, 64, 64)
    mean = den.encode(img)
    sample = den.encode(img, ListNoise([torch.zeros(3, 4, 8, 8)]))
    torch.testing.assert_close(mean, sample)  # zero noise = posterior mean
    out = den.decode(torch.randn(3, 4, 8, 8))
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_refine_paper_schedule_on_tiny_model(den):
    """Init pass + first and last SIR iterations of the v1 schedule, and a stage-2 refine, on CPU."""
    s = den.schedule
    grid, inv = s.timesteps(20), s.inverse_timesteps(20)
    B = 2
    cams = orbit_cameras([0.0] * B, [0.0, 180.0], height=64)
    images = torch.rand(B, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    den.reset_counters()
    out = refine(den, images, cams, 0, 1000, 0.5, 3.0, 20, g, from_noise=True)
    assert out.cfg_calls == 20 and out.uncond_calls == 0
    for k, (n_inv, n_rev) in ((0, (7, 17)), (19, (2, 5))):
        t2 = t2_for_iteration(k, 20, grid, 0.8, 0.2)
        t1 = t1_for_t2(t2, inv, 0.6)
        out = refine(den, images, cams, t1, t2, 0.5, 3.0, 20, g)
        assert (out.uncond_calls, out.cfg_calls) == (n_inv, n_rev)
        assert out.images.shape == (B, 3, 64, 64) and torch.isfinite(out.images).all()
        assert out.images.min() >= 0 and out.images.max() <= 1
    t = s.timesteps(50)[int(50 * 0.8)]
    out = refine(den, images, cams, t, t, 0.0, 2.0, 50, g)  # stage 2: t=181, 10 steps, eta 0
    assert t == 181 and (out.uncond_calls, out.cfg_calls) == (0, 10)
    assert den.nfe == 20 + 24 + 7 + 10 and den.nfe_rows == 2 * B * (20 + 17 + 5 + 10) + B * (7 + 2)


def test_refine_is_deterministic_given_noise(den):
    cams = orbit_cameras([0.0], [90.0], height=64)
    img = torch.rand(1, 3, 64, 64)
    a = refine(den, img, cams, 651, 801, 0.5, 3.0, 20, torch.Generator().manual_seed(7)).images
    b = refine(den, img, cams, 651, 801, 0.5, 3.0, 20, torch.Generator().manual_seed(7)).images
    c = refine(den, img, cams, 651, 801, 0.5, 3.0, 20, torch.Generator().manual_seed(8)).images
    assert torch.equal(a, b) and not torch.equal(a, c)


class _Counting(Denoiser):
    """A free denoiser that only counts network calls (zero eps, zero latents)."""

    def __init__(self):
        super().__init__()
        self.schedule, self.image_size, self.latent_size, self.latent_channels = DDIMSchedule(), 8, 1, 1
        self.device = torch.device("cpu")

    def encode(self, images, noise=None):
        return torch.zeros(images.shape[0], 1, 1, 1)

    def decode(self, latents):
        return torch.zeros(latents.shape[0], 3, 8, 8)

    def prepare(self, cams):
        return None

    def eps_cfg(self, x, t, cond, scale):
        self._count("cfg", 2 * x.shape[0])
        return torch.zeros_like(x)

    def eps_uncond(self, x, t, cond):
        self._count("uncond", x.shape[0])
        return torch.zeros_like(x)


@pytest.mark.parametrize("t_start, total, inv_calls", [(0.8, 323, 87), (0.9, 352, 95)])
def test_nfe_budget_of_the_paper_schedule(t_start, total, inv_calls):
    """v1 (t_start 0.8): 20 + 87 + 216 = 323 UNet calls; HEAD (0.9): 352 (docs/method.md#nfe)."""
    den = _Counting()
    grid, inv = den.schedule.timesteps(20), den.schedule.inverse_timesteps(20)
    B = 6
    img = torch.zeros(B, 3, 8, 8)
    refine(den, img, None, 0, 1000, 0.5, 3.0, 20, from_noise=True)
    for k in range(20):
        t2 = t2_for_iteration(k, 20, grid, t_start, 0.2)
        refine(den, img, None, t1_for_t2(t2, inv, 0.6), t2, 0.5, 3.0, 20)
    assert den.nfe == total and den.nfe_uncond == inv_calls
    # inversion at half batch: B rows instead of the authors' 2B
    assert den.nfe_rows == 2 * B * (total - inv_calls) + B * inv_calls


def test_xl_variant_camera(tiny_folder, tmp_path):
    import shutil

    from guidance.models.zero123 import Zero123Denoiser

    xl = tmp_path / "zero123-xl-diffusers"
    shutil.copytree(tiny_folder, xl)
    d = Zero123Denoiser(xl, device="cpu", dtype="fp32")
    assert d.variant == "xl"
    d.ref_elevation = -10.0
    v = d.camera_vectors(orbit_cameras([0.0], [90.0], height=64))
    assert v[0, 3] == 0.0  # radius offset on our fixed-radius orbits


def test_load_denoiser_zero123(tiny_folder):
    from guidance import load_denoiser
    from guidance.models.zero123 import Zero123Denoiser

    cfg = {
        "guidance": "zero123",
        "model": {
            "id": "ashawkey/stable-zero123-diffusers",
            "path": str(tiny_folder),
            "dtype": "fp32",
            "cuda_graph": True,
            "ref_latent": "mode",
        },
    }
    d = load_denoiser(cfg, "cpu")
    assert isinstance(d, Zero123Denoiser) and d.ref_latent_mode == "mode"
    assert not d._runner.enabled  # graphs only on CUDA


def test_zero123_embedding_known_values():
    cams = orbit_cameras([10.0, -20.0, 0.0], [90.0, 0.0, -180.0])
    emb = zero123_embedding(cams, ref_elevation=0.0)
    expected = torch.tensor(
        [
            [math.radians(10), 1.0, 0.0, math.radians(90)],
            [math.radians(-20), 0.0, 1.0, math.radians(90)],
            [0.0, 0.0, -1.0, math.radians(90)],
        ]
    )
    assert emb.shape == (3, 4)
    assert torch.allclose(emb, expected, atol=1e-4)
    # Relative elevation; the last entry encodes the reference elevation (Stable Zero123).
    emb = zero123_embedding(orbit_cameras(-25.0, 30.0), ref_elevation=-15.0)
    assert torch.allclose(
        emb[0], torch.tensor([math.radians(-10), 0.5, math.sqrt(3) / 2, math.radians(75)]), atol=1e-4
    )
    # Zero123-XL: radius offset 0 in the last slot.
    assert zero123_embedding(orbit_cameras(-25.0, 30.0), -15.0, stable=False)[0, 3] == 0.0
