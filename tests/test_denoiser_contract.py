"""The Denoiser contract, checked on every registered denoiser (tiny instances through the real loaders).

Parametrised over :func:`guidance.registry.names` (plus the test toy), so a newly registered model is
picked up automatically; it needs a tiny config in :mod:`testing.tiny_denoisers`.
"""

from __future__ import annotations

import pytest
import torch

from core.cameras import orbit_cameras
from guidance import load_denoiser
from guidance.denoiser import Denoiser, TorchNoise
from guidance.registry import get, names
from guidance.sir_step import refine
from testing.tiny_denoisers import tiny_config
from testing.toy_denoiser import TOY_NAME, registered, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread_module")

NAMES = sorted({*names(), TOY_NAME})


@pytest.fixture(scope="module", params=NAMES)
def den(request) -> Denoiser:
    """A tiny instance of each denoiser on the CPU, built by ``load_denoiser`` from its config."""
    with registered(toy_spec()):
        d = load_denoiser(tiny_config(request.param), "cpu")
        if request.param == TOY_NAME:
            assert get(TOY_NAME).needs_input is False
    gen = torch.Generator().manual_seed(0)
    d.set_reference(torch.rand(3, 40, 40, generator=gen), -10.0, noise=TorchNoise(gen))
    return d


def _cams(d: Denoiser, groups: int):
    """``groups`` groups of ``views_per_group`` views, each group's views evenly spaced in azimuth."""
    v = d.views_per_group
    az = [i * 360.0 / v + 30.0 * g for g in range(groups) for i in range(v)]
    elev = [-5.0 + 3.0 * k for k in range(len(az))]
    return orbit_cameras(elev, az, radius=2.0, height=d.image_size)


def _latents(d: Denoiser, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(d.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


def test_attributes(den):
    assert den.image_size > 0 and den.latent_size > 0 and den.latent_channels > 0
    assert den.views_per_group >= 1
    assert den.latent_shape(3) == (3, den.latent_channels, den.latent_size, den.latent_size)
    assert den.device == torch.device("cpu")


def test_encode_decode_shapes_dtypes_ranges(den):
    B, S = 2 * den.views_per_group, den.image_size
    img = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    lat = den.encode(img)
    assert lat.shape == den.latent_shape(B) and lat.dtype == torch.float32 and torch.isfinite(lat).all()
    out = den.decode(lat)
    assert out.shape == (B, 3, S, S) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # Sampling the posterior draws exactly one latent-shaped tensor (the documented draw order).
    calls = []

    class _Recorder(TorchNoise):
        def randn(self, shape, device):
            calls.append(tuple(shape))
            return super().randn(shape, device)

    den.encode(img, noise=_Recorder(torch.Generator().manual_seed(2)))
    assert calls == [den.latent_shape(B)]


def test_eps_shapes_and_nfe_counting(den):
    B = 2 * den.views_per_group
    cond = den.prepare(_cams(den, 2))
    x = _latents(den, B, 3)
    x_before = x.clone()
    den.reset_counters()
    e = den.eps_cfg(x, 500, cond, 3.0)
    assert e.shape == den.latent_shape(B) and e.dtype == torch.float32 and torch.isfinite(e).all()
    assert (den.nfe, den.nfe_cfg, den.nfe_uncond) == (1, 1, 0)
    rows_cfg = den.nfe_rows
    eu = den.eps_uncond(x, 500, cond)
    assert eu.shape == den.latent_shape(B) and eu.dtype == torch.float32
    assert (den.nfe, den.nfe_cfg, den.nfe_uncond) == (2, 1, 1)
    rows_uncond = den.nfe_rows - rows_cfg
    # CFG is one call at twice the unconditional batch; a batch holds at least the B views
    # (ImageDream adds one reference frame per group of 4).
    assert rows_cfg == 2 * rows_uncond and rows_uncond >= B
    assert torch.equal(x, x_before)  # inputs are not modified in place
    den.reset_counters()
    assert (den.nfe, den.nfe_cfg, den.nfe_uncond, den.nfe_rows) == (0, 0, 0, 0)


def test_cfg_batching(den):
    """scale 0 = the unconditional prediction; the result is linear in the scale (scale 1 = conditional)."""
    B = 2 * den.views_per_group
    cond = den.prepare(_cams(den, 2))
    x = _latents(den, B, 4)
    e0, e1, e3 = (den.eps_cfg(x, 400, cond, s) for s in (0.0, 1.0, 3.0))
    eu = den.eps_uncond(x, 400, cond)
    # Tolerances: a batch of B vs 2B rows changes CPU kernel blocking, hence float32 rounding.
    torch.testing.assert_close(e0, eu, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(e3, e0 + 3.0 * (e1 - e0), atol=1e-4, rtol=1e-4)


def test_views_per_group_batching(den):
    """Two groups in one call give the same predictions as each group alone; partial groups are refused."""
    v = den.views_per_group
    cams = _cams(den, 2)
    x = _latents(den, 2 * v, 5)
    both = den.eps_cfg(x, 300, den.prepare(cams), 2.0)
    alone = [
        den.eps_cfg(x[g * v : (g + 1) * v], 300, den.prepare(cams[g * v : (g + 1) * v]), 2.0) for g in (0, 1)
    ]
    torch.testing.assert_close(torch.cat(alone), both, atol=5e-4, rtol=1e-4)
    if v > 1:
        with pytest.raises(ValueError):
            den.prepare(cams[: v + 1])


def test_deterministic_under_a_seed(den):
    """The same seed gives bit-identical refine targets (posterior sample, noise to t1, DDIM with eta > 0)."""
    B = den.views_per_group
    cams = _cams(den, 1)
    img = torch.rand(B, 3, den.image_size, den.image_size, generator=torch.Generator().manual_seed(6))

    def run(seed: int) -> torch.Tensor:
        return refine(
            den,
            img,
            cams,
            t1=300,
            t2=500,
            eta=0.5,
            cfg_scale=2.0,
            num_steps=10,
            noise=torch.Generator().manual_seed(seed),
        ).images

    a = run(7)
    assert a.shape == (B, 3, den.image_size, den.image_size) and a.dtype == torch.float32
    assert torch.equal(a, run(7))  # no draw from the global RNG, none left to chance
