"""The fused channels-last GroupNorm(+SiLU) (guidance/nets/fused_norm.py) on the CPU.

The Triton kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton decorates
them, hence a fresh interpreter per check) against ``F.group_norm`` (+ ``F.silu``). The exact path is
checked in-process: with the flag off (the nets' default) or on CPU tensors, the networks compute
bit for bit what torch's GroupNorm gives. The GPU checks are tests/gpu/test_fused_norm_gpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.fused_norm import FLAG, group_norm_act, set_fused_norm, uses_fused

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / ".." / "shared" / "data" / "images" / "00_zero123_lysol_rgba.png"


def _interpreted(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with ``TRITON_INTERPRET=1``; -> the JSON of its last line."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# (B, C, H, W, groups, dtype, eps, mean, std): C/G not a power of two, H*W not a multiple of the
# tile, one group, a large eps (dropping it shows), a large mean over a small spread (sums of x^2
# that cancel would show: torch's channels-last CPU GroupNorm misses this case by 1e7 x the bound),
# fp16 and bf16.
CASES = [
    (2, 12, 5, 7, 4, "float32", 1e-5, 0.0, 1.0),
    (1, 30, 9, 9, 3, "bfloat16", 1e-6, 2.0, 3.0),
    (2, 64, 4, 4, 32, "float16", 1e-5, -1.0, 2.0),
    (1, 8, 13, 11, 2, "float32", 0.5, 0.0, 1.0),
    (1, 6, 16, 16, 3, "float32", 1e-6, 300.0, 0.1),
    (3, 40, 3, 5, 1, "float16", 1e-5, 0.5, 1.0),
]

KERNEL_SCRIPT = """
import json, torch, torch.nn.functional as F
import guidance.nets.fused_norm as fn
fn._TILE, fn._TARGET_PROGRAMS = 64, 16  # small tiles: several tiles per split, several splits
rows = []
for i, (B, C, H, W, G, dt, eps, mean, std) in enumerate({cases!r}):
    dt = getattr(torch, dt)
    g = torch.Generator().manual_seed(i)
    x = (torch.randn(B, C, H, W, generator=g) * std + mean).to(dt)
    x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, generator=g).to(dt), torch.randn(C, generator=g).to(dt)
    for silu, onepass in ((False, False), (True, False), (False, True), (True, True)):
        y = fn.fused_group_norm(x, G, w, b, eps, silu, onepass=onepass)
        ref = F.group_norm(x.double(), G, w.double(), b.double(), eps)
        ref = F.silu(ref) if silu else ref
        # one rounding to the output dtype, fp32 arithmetic, and the mean held in fp32 (its rounding
        # error scaled by weight / std: torch's own fp32 GroupNorm does no better)
        f32 = torch.finfo(torch.float32).eps
        tol = torch.finfo(dt).eps * ref.abs() + 1e-5 + 4 * f32 * abs(mean) / std * float(w.abs().max())
        rows.append(dict(
            case=i, silu=silu, onepass=onepass, ratio=float(((y.double() - ref).abs() / tol).max()),
            dtype=str(y.dtype), channels_last=y.is_contiguous(memory_format=torch.channels_last),
            plan=fn._plan(B, G, H * W, C // G), hw=H * W,
        ))
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_kernel_matches_group_norm_under_the_interpreter():
    """The kernel pair (statistics, normalise + affine + SiLU) and the one-pass kernel against float64 F.group_norm (+ F.silu)."""
    rows = _interpreted(KERNEL_SCRIPT.format(cases=CASES))
    assert len(rows) == 4 * len(CASES)  # the stats/apply pair and the one-pass kernel
    for r in rows:
        case = CASES[r["case"]]
        assert r["ratio"] <= 1.0, (case, r)
        assert r["dtype"] == f"torch.{case[5]}" and r["channels_last"], r
    plans = [(r["plan"], r["hw"]) for r in rows]
    # the split machinery is exercised: several splits, several tiles per split, a partial last tile
    assert any(p[3] > 1 for p, _ in plans) and any(p[2] > 1 for p, _ in plans)
    assert any(hw % p[1] for p, hw in plans)


NETS_SCRIPT = """
import json, torch
from torch import nn
import guidance.nets.fused_norm as fn
from guidance.nets.fused_norm import set_fused_norm
from guidance.nets.sd_unet import load_sd_unet
from guidance.nets.vae import load_vae
from testing.random_zero123 import cached_tiny_zero123

import guidance.nets.fused_geglu as fg
fn._device_ok = lambda x: True  # CPU tensors through the interpreted kernels
from guidance.nets.blocks import ResnetBlock
calls, gcalls, rcalls = [], [], []
kernel, gkernel, rkernel = fn.fused_group_norm, fg.fused_geglu, fn.fused_resnet_residual
fn.fused_group_norm = lambda *a, **k: calls.append(1) or kernel(*a, **k)
fn.fused_resnet_residual = lambda *a, **k: rcalls.append(1) or rkernel(*a, **k)
fg.fused_geglu = lambda h: gcalls.append(1) or gkernel(h)
folder = cached_tiny_zero123()
unet = load_sd_unet(folder / "unet", torch.float32, "cpu").to(memory_format=torch.channels_last)
vae = load_vae(folder / "vae", torch.float32, "cpu").to(memory_format=torch.channels_last)
g = torch.Generator().manual_seed(0)
cl = lambda t: t.contiguous(memory_format=torch.channels_last)
x, z = cl(torch.randn(1, 8, 8, 8, generator=g)), cl(torch.randn(1, 4, 8, 8, generator=g))
img = cl(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1)
ctx, t = torch.randn(1, 1, 32, generator=g), torch.tensor([501.0])
runs = dict(
    unet=(unet, unet, lambda: unet(x, t, encoder_hidden_states=ctx).sample),
    decode=(vae, vae.decoder, lambda: vae.decode(z).sample),
    encode=(vae, vae.encoder, lambda: vae.encode(img).latent_dist.mean),
)
rows = {}
with torch.no_grad():
    for name, (net, part, fn_) in runs.items():
        set_fused_norm(net, False)
        ref = fn_()
        set_fused_norm(net, True)
        calls.clear()
        gcalls.clear()
        rcalls.clear()
        out = fn_()
        rows[name] = dict(
            rel=float((out - ref).norm() / ref.norm()),
            calls=len(calls),
            norms=sum(isinstance(m, nn.GroupNorm) for m in part.modules()),
            geglu_calls=len(gcalls),
            ffs=sum(hasattr(m, fg.FLAG) for m in part.modules()),
            residual_calls=len(rcalls),
            resnets=sum(isinstance(m, ResnetBlock) for m in part.modules()),
        )
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_nets_run_every_group_norm_through_the_kernel():
    """Tiny UNet and VAE (channels-last, fp32) with the flag on, kernels interpreted on the CPU: every
    GroupNorm of the network goes through the kernel once per call (every site is converted, the VAE
    attention's included), so does every GEGLU feed-forward of the UNet, every ResnetBlock ends in the
    residual kernel (its adds folded), and the outputs match the exact path."""
    rows = _interpreted(NETS_SCRIPT)
    for name, r in rows.items():
        assert r["calls"] == r["norms"] > 0, (name, r)
        assert r["geglu_calls"] == r["ffs"], (name, r)
        assert r["residual_calls"] == r["resnets"] > 0, (name, r)
        assert r["rel"] < 1e-5, (name, r)
    assert rows["unet"]["ffs"] > 0


# ---------------------------------------------------------------- the exact path (no triton needed)


@pytest.fixture(scope="module")
def nets():
    from guidance.nets.sd_unet import load_sd_unet
    from guidance.nets.vae import load_vae
    from testing.random_zero123 import cached_tiny_zero123

    folder = cached_tiny_zero123()
    return (
        load_sd_unet(folder / "unet", torch.float32, "cpu"),
        load_vae(folder / "vae", torch.float32, "cpu"),
    )


def _outputs(unet, vae, channels_last: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    ctx, t = torch.randn(2, 1, 32, generator=g), torch.tensor([501.0, 501.0])
    if channels_last:
        x, z, img = (v.contiguous(memory_format=torch.channels_last) for v in (x, z, img))
    with torch.no_grad():
        return [
            unet(x, t, encoder_hidden_states=ctx).sample,
            vae.decode(z).sample,
            vae.encode(img).latent_dist.mean,
        ]


def test_flag_is_off_by_default(nets):
    """The nets as loaded take the exact path: no GroupNorm carries the flag."""
    for net in nets:
        norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
        assert norms and not any(getattr(m, FLAG, False) for m in norms)


@pytest.mark.parametrize("channels_last", [False, True])
def test_flag_on_cpu_tensors_is_bit_identical(nets, channels_last):
    """CPU tensors take the exact path whatever the flag: the outputs are equal bit for bit."""
    unet, vae = nets
    ref = _outputs(unet, vae, channels_last)
    try:
        n_ff = sum(hasattr(m, "fused_geglu") for m in unet.modules())
        assert n_ff > 0
        assert set_fused_norm(unet, True) == sum(isinstance(m, nn.GroupNorm) for m in unet.modules()) + n_ff
        set_fused_norm(vae, True)
        out = _outputs(unet, vae, channels_last)
    finally:
        set_fused_norm(unet, False)
        set_fused_norm(vae, False)
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a, b)


def test_exact_path_is_torch_group_norm():
    """``group_norm_act`` off the fused path is ``F.silu(norm(x))`` / ``norm(x)`` exactly."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 12, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 12, 5, 5).contiguous(memory_format=torch.channels_last)
    set_fused_norm(norm, True)
    assert not uses_fused(x, norm)  # a CPU tensor
    with torch.no_grad():
        assert torch.equal(group_norm_act(x, norm, silu=True), F.silu(norm(x)))
        assert torch.equal(group_norm_act(x, norm, silu=False), norm(x))


def test_gradients_take_the_exact_path():
    """The kernel has no backward: a tensor that needs gradients never takes it."""
    norm = nn.GroupNorm(2, 4)
    set_fused_norm(norm, True)
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    assert not uses_fused(x, norm)


def test_model_fused_norm_reaches_the_denoiser():
    """``model.fused_norm`` is a checked config key (default true) read into the denoiser's keywords;
    on the CPU the denoiser keeps the exact path whatever it says."""
    from core.errors import UserError
    from guidance.latent_diffusion import pipeline_options
    from guidance.models.zero123 import Zero123Denoiser
    from pipeline.config import load_config
    from testing.random_zero123 import cached_tiny_zero123

    base = [f"input={IMAGE}", "device=cpu"]
    assert load_config(base).model.fused_norm is True
    cfg = load_config([*base, "model.fused_norm=false"])
    assert pipeline_options(cfg, "x")["fused_norm"] is False
    assert pipeline_options(load_config(base), "x")["fused_norm"] is True
    with pytest.raises(UserError, match="model.fused_norm"):
        load_config([*base, "model.fused_norm=maybe"])

    den = Zero123Denoiser(cached_tiny_zero123(), device="cpu", dtype="fp32", fused_norm=True)
    assert den.fused_norm is False
    assert not any(getattr(m, FLAG, False) for m in den.unet.modules())


GEGLU_SCRIPT = """
import json, torch, torch.nn.functional as F
import guidance.nets.fused_geglu as fg
fg._BLOCK = 64  # several programs, a partial last block
rows = []
for i, (shape, dt) in enumerate([((3, 5, 2 * 24), "float32"), ((2, 7, 2 * 40), "float16"), ((37, 2 * 3), "bfloat16")]):
    dt = getattr(torch, dt)
    h = (torch.randn(*shape, generator=torch.Generator().manual_seed(i)) * 3).to(dt)
    y = fg.fused_geglu(h)
    v, g = h.double().chunk(2, dim=-1)
    ref = v * F.gelu(g)
    tol = torch.finfo(dt).eps * ref.abs() + 1e-6
    rows.append(dict(ratio=float(((y.double() - ref).abs() / tol).max()), shape=list(y.shape), dtype=str(y.dtype)))
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_geglu_kernel_matches_torch_under_the_interpreter():
    """value * GELU(gate) (exact erf GELU) against float64 torch: one rounding to the output dtype."""
    rows = _interpreted(GEGLU_SCRIPT)
    assert [r["shape"] for r in rows] == [[3, 5, 24], [2, 7, 40], [37, 3]]
    assert [r["dtype"] for r in rows] == ["torch.float32", "torch.float16", "torch.bfloat16"]
    for r in rows:
        assert r["ratio"] <= 1.0, r
