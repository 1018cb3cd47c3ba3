"""Our DDIM / inverse-DDIM maths and refine loop vs diffusers' own schedulers (fp32, same noise)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from guidance.denoiser import ListNoise
from guidance.schedule import STABLE_DIFFUSION_DDIM_CONFIG, DDIMSchedule
from guidance.sir_step import plan_refine, refine

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [
    STABLE_DIFFUSION_DDIM_CONFIG,
    {**STABLE_DIFFUSION_DDIM_CONFIG, "timestep_spacing": "trailing", "steps_offset": 0},
    {
        **STABLE_DIFFUSION_DDIM_CONFIG,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "set_alpha_to_one": True,
        "steps_offset": 0,
    },
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_tables_and_grids_match_diffusers(cfg):
    ours = DDIMSchedule(cfg)
    ref = DDIMScheduler.from_config(cfg)
    inv = DDIMInverseScheduler.from_config(cfg)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert ours.final_alpha_cumprod == float(ref.final_alpha_cumprod)
    for n in (10, 20, 50):
        ref.set_timesteps(n)
        inv.set_timesteps(n)
        assert ours.timesteps(n) == ref.timesteps.tolist()
        assert ours.inverse_timesteps(n) == inv.timesteps.tolist()


def test_linspace_grid_matches_diffusers():
    cfg = {**STABLE_DIFFUSION_DDIM_CONFIG, "timestep_spacing": "linspace"}
    ref = DDIMScheduler.from_config(cfg)
    for n in (10, 20, 50):
        ref.set_timesteps(n)
        assert DDIMSchedule(cfg).timesteps(n) == ref.timesteps.tolist()


@pytest.mark.parametrize("cfg", CONFIGS[:2])
@pytest.mark.parametrize("n", [20, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(cfg, n, eta):
    ours = DDIMSchedule(cfg)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(n)
    g = torch.Generator().manual_seed(0)
    for t in ours.timesteps(n):
        x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        want = ref.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        got = ours.ddim_step(eps, t, ours.prev_timestep(t, n), x, eta, z)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS[:2])
@pytest.mark.parametrize("n", [10, 20])
def test_inverse_step_matches_diffusers(cfg, n):
    ours = DDIMSchedule(cfg)
    inv = DDIMInverseScheduler.from_config(cfg)
    inv.set_timesteps(n)
    g = torch.Generator().manual_seed(1)
    for t_next in ours.inverse_timesteps(n):
        x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        want = inv.step(eps, t_next, x).prev_sample
        got = ours.inverse_step(eps, ours.inverse_source(t_next, n), t_next, x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_add_noise_matches_diffusers():
    ours, ref = DDIMSchedule(), DDIMScheduler.from_config(STABLE_DIFFUSION_DDIM_CONFIG)
    x0, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for t in (1, 181, 501, 951):
        torch.testing.assert_close(ours.add_noise(x0, n, t), ref.add_noise(x0, n, torch.tensor([t])))


def test_plan_counts():
    s = DDIMSchedule()
    p = plan_refine(s, 501, 901, 20)
    assert p.inversion[0] == (501, 551) and p.inversion[-1] == (851, 901) and len(p.inversion) == 8
    assert p.reverse == list(range(901, 0, -50)) and len(p.reverse) == 19
    p2 = plan_refine(s, 181, 181, 50)  # stage 2: noise-adding only, 10 DDIM steps
    assert p2.inversion == [] and p2.reverse == list(range(181, 0, -20))
    p0 = plan_refine(s, 501, 901, 20, from_noise=True)
    assert p0.add_noise_t is None and p0.inversion == [] and len(p0.reverse) == 20
    with pytest.raises(ValueError):
        plan_refine(s, 901, 501, 20)


def _authors_loop(den, images, cams, t1, t2, eta, scale, n, noises):
    """The authors' train_step loop (zero123_utils.py:193-223) on diffusers' schedulers, fp32."""
    cfg = den.schedule.config
    sched, inv = DDIMScheduler.from_config(cfg), DDIMInverseScheduler.from_config(cfg)
    sched.set_timesteps(n)
    inv.set_timesteps(n)
    cond = den.prepare(cams)
    B = images.shape[0]
    unet = den.unet

    def pred(x, t, uncond):
        x_in = torch.cat([x, x])
        e = unet(
            torch.cat([x_in, cond.concat], 1),
            torch.full((2 * B,), float(t)),
            encoder_hidden_states=cond.hidden,
        ).sample
        e_c, e_u = e.chunk(2)
        return e_u if uncond else e_u + scale * (e_c - e_u)

    it = iter(noises)
    x = den.encode(images, ListNoise([next(it)]))
    x = sched.add_noise(x, next(it), torch.tensor([t1]))
    ts = inv.timesteps
    for i, t_inv in enumerate(ts[:-1]):
        t_next = ts[i + 1]
        if t_next <= t1:
            continue
        if t_next > t2:
            break
        x = inv.step(pred(x, int(t_inv), True), t_next, x).prev_sample
    for tt in sched.timesteps:
        if tt > t2:
            continue
        z = next(it) if eta > 0 else None
        x = sched.step(pred(x, int(tt), False), tt, x, eta=eta, variance_noise=z).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_refine_loop_matches_authors_loop_on_tiny_unet(tiny_zero123_cpu, eta):
    from core.cameras import orbit_cameras

    den = tiny_zero123_cpu
    n, t1, t2 = 10, 401, 801
    cams = orbit_cameras([10.0], [60.0], height=den.image_size)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(1, 3, den.image_size, den.image_size, generator=g)
    shape = den.latent_shape(1)
    noises = [torch.randn(shape, generator=g) for _ in range(2 + 9)]
    want = _authors_loop(den, images, cams, t1, t2, eta, 3.0, n, noises)
    captured = {}
    orig = den.decode

    def spy(x):
        captured["x"] = x
        return orig(x)

    den.decode = spy
    try:
        out = refine(den, images, cams, t1, t2, eta, 3.0, n, ListNoise(noises))
    finally:
        del den.decode
    assert out.uncond_calls == 4 and out.cfg_calls == 9
    # A random UNet's eps is not the noise, so DDIM drives the latents to magnitudes ~20-40; fp32
    # rounding (half- vs full-batch convolutions, fused coefficients) then scales with them. The
    # tolerance is 1e-4 absolute per unit of latent magnitude (observed: ~5e-6 relative).
    err = (captured["x"] - want).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item() / 10), err


@pytest.fixture(scope="module")
def tiny_zero123_cpu():
    from guidance.models.zero123 import Zero123Denoiser
    from testing.random_zero123 import cached_tiny_zero123

    den = Zero123Denoiser(cached_tiny_zero123(), device="cpu", dtype="fp32")
    den.set_reference(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)), 0.0)
    return den
