"""Stable Zero123 on CUDA (tiny model): CPU parity, fp16/bf16 sanity, CUDA-graph replay = eager."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def folder():
    from testing.random_zero123 import cached_tiny_zero123

    return cached_tiny_zero123()


def _setup(den):
    from core.cameras import orbit_cameras

    g = torch.Generator().manual_seed(0)
    den.set_reference(torch.rand(3, 64, 64, generator=g), 0.0)
    cams = orbit_cameras([0.0, 10.0, -20.0], [0.0, 120.0, 240.0], height=64)
    return cams, torch.rand(3, 3, 64, 64, generator=g)


def _noise(n: int):
    from guidance.denoiser import ListNoise

    g = torch.Generator().manual_seed(1)
    return ListNoise([torch.randn(3, 4, 8, 8, generator=g) for _ in range(n)])


def test_cuda_fp32_matches_cpu(folder, monkeypatch):
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.sir_step import refine

    # cuDNN convolutions default to TF32 (10-bit mantissa); compare true fp32 with the CPU.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    outs = []
    for dev in ("cpu", "cuda"):
        den = Zero123Denoiser(folder, device=dev, dtype="fp32", ref_latent="mode")
        cams, img = _setup(den)
        outs.append(refine(den, img, cams.to(dev), 651, 801, 0.5, 3.0, 20, _noise(2 + 17)).images.cpu())
    assert (outs[0] - outs[1]).abs().max() < 2e-3


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_refine_is_close_to_fp32(folder, dtype):
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.sir_step import refine

    outs = []
    for dt in ("fp32", dtype):
        den = Zero123Denoiser(folder, device="cuda", dtype=dt, ref_latent="mode")
        cams, img = _setup(den)
        out = refine(den, img, cams.to("cuda"), 651, 801, 0.0, 3.0, 20, _noise(2))
        assert torch.isfinite(out.images).all()
        outs.append(out.images)
    assert (outs[0] - outs[1]).abs().mean() < 0.05


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_cuda_graph_equals_eager(folder, dtype):
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.sir_step import refine

    res = []
    for graph in (False, True):
        den = Zero123Denoiser(folder, device="cuda", dtype=dtype, ref_latent="mode", cuda_graph=graph)
        cams, img = _setup(den)
        out = refine(den, img, cams.to("cuda"), 501, 901, 0.5, 3.0, 20, _noise(2 + 19))
        res.append(out.images)
        if graph:
            assert len(den._runner._entries) == 2  # batch 2B (CFG) and batch B (inversion)
            assert all(e["graph"] is not None for e in den._runner._entries.values())
    assert (res[0] - res[1]).abs().max() < 1e-3


@pytest.mark.slow
def test_compiled_networks_match_the_exact_path(folder):
    """``model.compile`` (torch.compile under CUDA graphs) against the exact fp16 graph path: one
    refine call's images (fused kernels reorder float sums, so close, not equal)."""
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.sir_step import refine

    res = []
    for compile_ in (False, True):
        den = Zero123Denoiser(
            folder, device="cuda", dtype="fp16", ref_latent="mode", cuda_graph=True, compile=compile_
        )
        cams, img = _setup(den)
        out = refine(den, img, cams.to("cuda"), 501, 901, 0.5, 3.0, 20, _noise(2 + 19))
        assert torch.isfinite(out.images).all()
        res.append(out.images)
    assert (res[0] - res[1]).abs().mean() < 5e-3
    assert (res[0] - res[1]).abs().max() < 0.1
