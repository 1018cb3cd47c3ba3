"""The fused channels-last GroupNorm(+SiLU) and GEGLU Triton kernels on CUDA (guidance/nets/fused_norm.py, fused_geglu.py).

Tolerances, and why:
* kernel vs ``F.group_norm`` in fp32 on the same half-precision input: ``|y - ref| <= 2 eps_dtype |ref|
  + 1e-3 (bf16: 1e-2)``: one rounding of the output (half an ulp) plus fp32 arithmetic, which the
  exact fp16 path (GroupNorm rounded, then SiLU rounded again) does not beat;
* full-size Stable Zero123 UNet (random weights, CFG batch 12): fused vs exact eps within relative L2
  1e-2 (fp16; 5e-2 bf16), and the fused path no further from an fp32 (no TF32) reference than
  1.25 x the exact half-precision path is (+1e-4): the kernels add no error beyond the dtype's own.
  In bf16 each path is ~3.5e-2 from fp32 (H200: fused 3.28e-2, exact 3.65e-2, fused vs exact
  3.85e-2 with the GEGLU kernel, which rounds once where torch rounds GELU and product), so the
  direct bound only catches gross errors; the fp32 comparison is the accuracy check;
* the ResnetBlock's folded adds (conv biases and time embedding as the fused GroupNorm's shift, one
  residual kernel): shifted kernel vs ``F.group_norm(x + shift)`` and residual kernel vs torch in fp32,
  the bounds above; in the full UNet they sit inside the fused-vs-exact bounds above, not loosened;
* one SIR refine step (full size, fp16, CUDA graphs): refined images (in [0,1]) fused vs exact,
  mean abs < 5e-3 and max abs < 0.1, the bounds of the ``model.compile`` test (reordered sums).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

F16 = torch.float16
# (B, C, H, W): the UNet's GroupNorm inputs at batch 12 (CFG of 6 views; the up path's concatenated
# widths too), and the VAE's at batch 6 (decoder up to 256 px at 128 channels).
UNET_SHAPES = [
    (12, 320, 32, 32),
    (12, 640, 32, 32),
    (12, 960, 32, 32),
    (12, 640, 16, 16),
    (12, 1920, 16, 16),
    (12, 1280, 8, 8),
    (12, 2560, 8, 8),
    (12, 1280, 4, 4),
    (12, 2560, 4, 4),
]
VAE_SHAPES = [(6, 128, 256, 256), (6, 256, 256, 256), (6, 256, 128, 128), (6, 512, 64, 64), (6, 512, 32, 32)]


def _tol(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == F16 else 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", UNET_SHAPES + VAE_SHAPES)
def test_kernel_matches_group_norm_at_real_shapes(shape, dtype):
    from guidance.nets.fused_norm import fused_group_norm

    g = torch.Generator(device="cuda").manual_seed(0)
    C = shape[1]
    x = (torch.randn(shape, generator=g, device="cuda") * 2 + 0.5).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, generator=g, device="cuda") * 0.5 + 1).to(dtype)
    b = (torch.randn(C, generator=g, device="cuda") * 0.5).to(dtype)
    for silu in (False, True):
        y = fused_group_norm(x, 32, w, b, 1e-6, silu)
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        ref = F.group_norm(x.float(), 32, w.float(), b.float(), 1e-6)
        ref = F.silu(ref) if silu else ref
        err = (y.float() - ref).abs()
        bound = 2 * torch.finfo(dtype).eps * ref.abs() + _tol(dtype)
        assert bool((err <= bound).all()), (shape, silu, float(err.max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", UNET_SHAPES[:4] + VAE_SHAPES[-2:])
def test_shifted_kernel_and_residual_at_real_shapes(shape, dtype):
    """GroupNorm(x + shift) + SiLU for a [B,C] and a [C] shift, and the residual kernel, at real shapes."""
    from guidance.nets.fused_norm import fused_group_norm, fused_resnet_residual

    g = torch.Generator(device="cuda").manual_seed(0)
    B, C = shape[:2]
    x = (torch.randn(shape, generator=g, device="cuda") * 2 + 0.5).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, generator=g, device="cuda") * 0.5 + 1).to(dtype)
    b = (torch.randn(C, generator=g, device="cuda") * 0.5).to(dtype)
    for shift in (
        torch.randn(B, C, generator=g, device="cuda").to(dtype),
        torch.randn(C, generator=g, device="cuda"),
    ):
        y = fused_group_norm(x, 32, w, b, 1e-6, True, shift)
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        full = shift.float().reshape(-1, C)[:, :, None, None]
        ref = F.silu(F.group_norm(x.float() + full, 32, w.float(), b.float(), 1e-6))
        err = (y.float() - ref).abs()
        bound = 2 * torch.finfo(dtype).eps * ref.abs() + _tol(dtype)
        assert bool((err <= bound).all()), (shape, shift.shape, float(err.max()))
    h = torch.randn(shape, generator=g, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    y = fused_resnet_residual(x, h, w, b, 2.0)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = (x.float() + h.float() + w.float()[:, None, None] + b.float()[:, None, None]) / 2.0
    err = (y.float() - ref).abs()
    assert bool((err <= torch.finfo(dtype).eps * ref.abs() + 1e-6).all()), (shape, float(err.max()))


# The GEGLU projections of the UNet's feed-forwards at batch 12: [B, tokens, 2 * 4 * width].
GEGLU_SHAPES = [(12, 1024, 2560), (12, 256, 5120), (12, 64, 10240), (12, 16, 10240)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", GEGLU_SHAPES)
def test_geglu_kernel_matches_torch_at_real_shapes(shape, dtype):
    from guidance.nets.fused_geglu import fused_geglu

    g = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(shape, generator=g, device="cuda") * 2).to(dtype)
    y = fused_geglu(h)
    assert y.dtype == dtype and y.shape == (*shape[:-1], shape[-1] // 2) and y.is_contiguous()
    value, gate = h.float().chunk(2, dim=-1)
    ref = value * F.gelu(gate)
    err = (y.float() - ref).abs()
    bound = 2 * torch.finfo(dtype).eps * ref.abs() + _tol(dtype)
    assert bool((err <= bound).all()), (shape, float(err.max()))


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from testing.random_zero123 import save_zero123

    return save_zero123(tmp_path_factory.mktemp("zero123_full_gn"), "full", dtype=F16)


def _eps_inputs(den, views: int = 6):
    from core.cameras import orbit_cameras
    from guidance.denoiser import TorchNoise

    gen = torch.Generator(device="cuda").manual_seed(0)
    S = den.image_size
    den.set_reference(torch.rand(3, S, S, generator=gen, device="cuda"), 0.0, noise=TorchNoise(gen))
    cams = orbit_cameras([0.0] * views, [i * 360.0 / views for i in range(views)], height=S, device="cuda")
    x = torch.randn(den.latent_shape(views), generator=gen, device="cuda")
    return cams, den.prepare(cams), x


def _cfg_kernel_names(den, cond, x) -> list[str]:
    """The CUDA kernels of one eager CFG call at t=501, after a warm-up call (and Triton's compile)."""
    from torch.profiler import ProfilerActivity, profile

    den.eps_cfg(x, 501, cond, 3.0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        den.eps_cfg(x, 501, cond, 3.0)
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_full_unet_fused_vs_exact(full_folder, dtype, monkeypatch):
    """CFG eps at batch 12 of the full-size UNet: fused (the ResnetBlocks' adds folded too) vs exact
    vs an fp32 reference."""
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.nets import fused_norm
    from guidance.nets.fused_norm import set_fused_norm

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    den = Zero123Denoiser(full_folder, device="cuda", dtype=dtype, ref_latent="mode")
    assert den.fused_norm  # channels-last CUDA, triton present: on by default
    _, cond, x = _eps_inputs(den)
    folded = []
    kernel = fused_norm.fused_resnet_residual
    monkeypatch.setattr(fused_norm, "fused_resnet_residual", lambda *a: folded.append(1) or kernel(*a))
    fused = den.eps_cfg(x, 501, cond, 3.0)
    assert len(folded) == 22  # every ResnetBlock of the UNet took the folded path
    for net in (den.unet, den.vae):
        set_fused_norm(net, False)
    exact = den.eps_cfg(x, 501, cond, 3.0)
    del den
    ref_den = Zero123Denoiser(full_folder, device="cuda", dtype="fp32", ref_latent="mode", fused_norm=False)
    _, cond32, _ = _eps_inputs(ref_den)
    ref = ref_den.eps_cfg(x, 501, cond32, 3.0)
    direct = _rel(fused, exact)
    fused_err, exact_err = _rel(fused, ref), _rel(exact, ref)
    print(f"{dtype}: fused vs exact {direct:.2e}; vs fp32: fused {fused_err:.2e}, exact {exact_err:.2e}")
    assert direct < (1e-2 if dtype == "fp16" else 5e-2)
    assert fused_err <= 1.25 * exact_err + 1e-4


@pytest.mark.slow
def test_refine_step_fused_vs_exact(full_folder):
    """One SIR refine step (inversion + CFG sampling + decode) through CUDA graphs, fused vs exact."""
    from guidance.denoiser import ListNoise
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.sir_step import refine

    outs = []
    for fused in (True, False):
        den = Zero123Denoiser(
            full_folder, device="cuda", dtype="fp16", ref_latent="mode", cuda_graph=True, fused_norm=fused
        )
        assert den.fused_norm is fused
        cams, cond, _ = _eps_inputs(den)
        gen = torch.Generator().manual_seed(1)
        noise = ListNoise([torch.randn(6, 4, 32, 32, generator=gen) for _ in range(2 + 19)])
        img = torch.rand(6, 3, den.image_size, den.image_size, generator=gen)
        out = refine(den, img, cams, 501, 901, 0.5, 3.0, 20, noise, cond=cond)
        assert torch.isfinite(out.images).all()
        outs.append(out.images.float())
        del den
    diff = (outs[0] - outs[1]).abs()
    print(f"refine fused vs exact: mean {float(diff.mean()):.2e}, max {float(diff.max()):.2e}")
    assert float(diff.mean()) < 5e-3 and float(diff.max()) < 0.1


@pytest.mark.slow
def test_fused_unet_launches_far_fewer_copies(full_folder):
    """torch.profiler on one eager CFG call: the fused UNet launches >= 100 fewer layout-copy kernels
    (61 GroupNorms x NHWC->NCHW->NHWC, and the transformers' NCHW outputs) and runs the Triton kernels."""
    from bench.profile_unet import category
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.nets.fused_norm import set_fused_norm

    den = Zero123Denoiser(full_folder, device="cuda", dtype="fp16", ref_latent="mode")
    _, cond, x = _eps_inputs(den)
    counts = {}
    for fused in (True, False):
        set_fused_norm(den.unet, fused)
        names = _cfg_kernel_names(den, cond, x)
        counts[fused] = (
            sum(category(n) == "copy/layout" for n in names),
            sum("group_norm_apply" in n or "group_norm_onepass" in n for n in names),
            sum("geglu_kernel" in n for n in names),
        )
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in den.unet.modules())
    ffs = sum(hasattr(m, "fused_geglu") for m in den.unet.modules())
    print(
        f"copy kernels: fused {counts[True][0]}, exact {counts[False][0]}; {norms} GroupNorms, {ffs} GEGLUs"
    )
    assert norms == 61 and counts[True][1] == norms and counts[False][1] == 0
    assert ffs == 16 and counts[True][2] == ffs and counts[False][2] == 0
    assert counts[False][0] - counts[True][0] >= 100


@pytest.mark.slow
def test_folded_resnets_launch_fewer_kernels(full_folder, monkeypatch):
    """torch.profiler on one eager CFG call of the fused UNet, the ResnetBlocks' adds folded vs not:
    each of the 22 blocks loses its conv bias adds (cuDNN adds a bias in a kernel of its own: 44, +17
    shortcuts), its time-embedding add and its residual add, and gains one [B,C] shift add and the
    residual kernel: 61 fewer kernels when every bias add was separate; asserted >= 2 per block."""
    from bench.profile_unet import category
    from guidance.models.zero123 import Zero123Denoiser
    from guidance.nets.blocks import ResnetBlock

    den = Zero123Denoiser(full_folder, device="cuda", dtype="fp16", ref_latent="mode")
    assert den.fused_norm
    _, cond, x = _eps_inputs(den)
    counts = {}
    folds = ResnetBlock._folds
    for fold in (True, False):
        monkeypatch.setattr(ResnetBlock, "_folds", folds if fold else lambda self, x: False)
        names = _cfg_kernel_names(den, cond, x)
        counts[fold] = (
            len(names),
            sum(category(n) == "elementwise" for n in names),
            sum("resnet_residual" in n for n in names),
            sum("group_norm_apply" in n or "group_norm_onepass" in n for n in names),
        )
    resnets = sum(isinstance(m, ResnetBlock) for m in den.unet.modules())
    print(
        f"kernels per CFG call: folded {counts[True]}, unfolded {counts[False]} (total, elementwise, residual, GN)"
    )
    assert resnets == 22 and counts[True][2] == resnets and counts[False][2] == 0
    assert counts[True][3] == counts[False][3] == 61  # the GroupNorms stay fused either way
    assert counts[False][0] - counts[True][0] >= 2 * resnets
    # the elementwise kernels lose the residual adds and >= 2 bias or temb adds per block
    assert counts[False][1] - counts[True][1] >= 3 * resnets
