"""GroupNorm (+ SiLU) of channels-last tensors in one Triton pass pair, with the exact torch path kept.

Why: PyTorch's CUDA GroupNorm needs NCHW-contiguous input, so on the channels-last networks every
GroupNorm copies NHWC -> NCHW and the next convolution copies back, and the SiLU after it is one more
elementwise kernel (measured on an H200: 158 layout copies per Stable Zero123 UNet call, 4 with the
kernels; bench/results/profile_unet_fusednorm_h200.json). The kernels of
:mod:`guidance.nets.fused_norm_kernels` read and write channels-last directly, with fp32 statistics
and the SiLU fused into the store.

With a ``shift`` (:func:`group_norm_act`), the kernels normalise ``x + shift[:, :, None, None]``,
the add done in fp32 as the kernels load ``x``: the ResnetBlock (guidance/nets/blocks.py) runs its
first conv without bias and hands ``conv1.bias + time_emb_proj(silu(temb))`` to ``norm2`` here, and
ends in :func:`resnet_residual`, one kernel for ``(shortcut(x) + conv2(h) + both conv biases) /
output_scale``. On an H200 the convolutions' bias adds (cuDNN adds a bias in a separate kernel), the
time-embedding add and the residual add were up to 5 full elementwise passes per ResnetBlock (the
largest elementwise item of a Stable Zero123 CFG call: 120 broadcasting adds, 0.71 ms of 9.0 ms).

The switch is a flag on each ``nn.GroupNorm`` module (:func:`set_fused_norm`), off unless set, so
the networks compute exactly what they did before on CPU, in tests and with ``model.fused_norm=false``.
Triton is imported only by :func:`triton_available` (a channels-last CUDA denoiser asks at
construction); without it the exact path runs.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "group_norm_act",
    "fused_group_norm",
    "resnet_residual",
    "fused_resnet_residual",
    "set_fused_norm",
    "uses_fused",
    "triton_available",
]

log = logging.getLogger(__name__)

#: The attribute :func:`set_fused_norm` sets on each ``nn.GroupNorm``.
FLAG = "fused_norm"
#: ... and on each module that declares it (the GEGLU feed-forwards; guidance.nets.fused_geglu).
GEGLU_FLAG = "fused_geglu"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TILE = 2048  # elements per tile (rows x padded group channels)
_TARGET_PROGRAMS = 1024  # programs per launch to aim for (several per SM on current GPUs)
_BLOCK = 1024  # elements per program of the residual kernel
#: Groups up to this many padded elements (next_pow2(H*W) x next_pow2(C/G)) take the one-pass kernel.
_ONEPASS_MAX = 16384
_broken = False  # set when a fused launch raised: the exact path from then on


@functools.cache
def triton_available() -> bool:
    """True when triton imports (it ships with torch's CUDA wheels; absent on some CPU installs)."""
    try:
        import guidance.nets.fused_geglu_kernel
        import guidance.nets.fused_norm_kernels  # noqa: F401
    except Exception:  # ImportError, or a triton that fails on import on this machine
        return False
    return True


def set_fused_norm(module: nn.Module, enabled: bool) -> int:
    """Turn the fused kernels on or off under ``module``: every ``nn.GroupNorm``, and every module
    declaring a ``fused_geglu`` flag (:mod:`guidance.nets.fused_geglu`); -> how many were set."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            setattr(m, FLAG, bool(enabled))
            n += 1
        elif hasattr(m, GEGLU_FLAG):
            setattr(m, GEGLU_FLAG, bool(enabled))
            n += 1
    return n


def _device_ok(x: torch.Tensor) -> bool:
    """CUDA tensors only (the CPU tests patch this to run the nets under Triton's interpreter)."""
    return x.is_cuda


def uses_fused(x: torch.Tensor, norm: nn.GroupNorm) -> bool:
    """Whether :func:`group_norm_act` takes the fused kernel for ``x`` (flag on, CUDA, channels-last, ...)."""
    return (
        getattr(norm, FLAG, False)
        and not _broken
        and _device_ok(x)
        and x.dim() == 4
        and x.dtype in _DTYPES
        and norm.affine
        and x.is_contiguous(memory_format=torch.channels_last)
        # no backward for the kernel: gradients take the exact path
        and not (torch.is_grad_enabled() and (x.requires_grad or norm.weight.requires_grad))
        and triton_available()
    )


def group_norm_act(
    x: torch.Tensor, norm: nn.GroupNorm, silu: bool, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.silu(norm(x + shift))`` (``silu``) or ``norm(x + shift)`` for ``x`` ``[B,C,H,W]``; fused when :func:`uses_fused`.

    ``shift`` ``[B,C]`` or ``[C]`` (any float dtype) is added per (batch, channel) before the
    statistics; None adds nothing. The exact path is the torch calls themselves (without ``shift``
    bit-identical to calling them directly; the shift is cast to ``x``'s dtype and added first); the
    fused one returns a channels-last tensor of ``x``'s dtype, the add and the statistics in fp32.
    """
    global _broken
    if uses_fused(x, norm):
        try:
            return fused_group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu, shift)
        except Exception as exc:  # a kernel that does not compile here: warn once, stay correct
            _broken = True
            log.warning("fused GroupNorm failed (%s: %s); using torch's GroupNorm", type(exc).__name__, exc)
    if shift is not None:
        x = x + shift.to(x.dtype)[..., None, None]
    y = norm(x)
    return F.silu(y) if silu else y


def _plan(batch: int, groups: int, hw: int, cg: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_HW, tiles per split, splits S) for one launch; no split is empty."""
    block_c = triton_next_pow2(cg)
    block_hw = max(1, _TILE // block_c)
    n_tiles = -(-hw // block_hw)
    want = max(1, min(n_tiles, -(-_TARGET_PROGRAMS // (batch * groups))))
    tiles_per_split = -(-n_tiles // want)
    return block_c, block_hw, tiles_per_split, -(-n_tiles // tiles_per_split)


def triton_next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (>= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def fused_group_norm(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    silu: bool,
    shift: torch.Tensor | None = None,
    onepass: bool | None = None,
) -> torch.Tensor:
    """GroupNorm (+ SiLU) of a channels-last ``x (+ shift)`` ``[B,C,H,W]`` by the Triton kernels -> same shape, dtype, layout.

    ``weight``/``bias`` ``[C]``, ``shift`` ``[B,C]`` or ``[C]`` or None (any float dtype); the shift
    add, statistics and arithmetic in fp32, biased variance as ``F.group_norm``. No device check:
    under ``TRITON_INTERPRET=1`` CPU tensors work (the tests). ``onepass``: the one-kernel path
    (a group in registers) or the stats/apply pair; None picks one-pass for groups of at most
    ``_ONEPASS_MAX`` padded elements (every UNet GroupNorm at 32x32 latents; not the VAE's).
    """
    from guidance.nets.fused_norm_kernels import group_norm_apply, group_norm_onepass, group_norm_stats

    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"{C} channels are not divisible into {groups} groups")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("fused_group_norm needs a channels-last contiguous tensor")
    shift_stride_b = 0
    if shift is not None:
        if tuple(shift.shape) not in ((B, C), (1, C), (C,)):
            raise ValueError(f"shift of shape {tuple(shift.shape)} for x {tuple(x.shape)}: want [B,C] or [C]")
        shift = shift.contiguous()
        shift_stride_b = C if shift.dim() == 2 and shift.shape[0] == B > 1 else 0  # [1,C] broadcasts
    hw, cg = H * W, C // groups
    y = torch.empty_like(x, memory_format=torch.channels_last)
    if x.numel() == 0:
        return y
    has_shift = shift is not None
    shift = x if shift is None else shift  # any pointer: not read without HAS_SHIFT
    padded_hw, block_c = triton_next_pow2(hw), triton_next_pow2(cg)
    group_elems = padded_hw * block_c  # one program's register tile in the one-pass kernel
    if onepass is None:
        onepass = group_elems <= _ONEPASS_MAX
    if onepass:
        group_norm_onepass[(B * groups,)](
            x,
            shift,
            y,
            weight,
            bias,
            hw,
            C,
            cg,
            shift_stride_b,
            float(eps),
            HAS_SHIFT=has_shift,
            SILU=bool(silu),
            BLOCK_HW=padded_hw,
            BLOCK_C=block_c,
            num_warps=8 if group_elems > 4096 else 4,
        )
        return y
    block_c, block_hw, tps, S = _plan(B, groups, hw, cg)
    stats = torch.empty(B * groups * S * 3, device=x.device, dtype=torch.float32)
    grid = (B * groups * S,)
    group_norm_stats[grid](
        x,
        shift,
        stats,
        hw,
        C,
        cg,
        tps,
        S,
        shift_stride_b,
        HAS_SHIFT=has_shift,
        BLOCK_HW=block_hw,
        BLOCK_C=block_c,
    )
    group_norm_apply[grid](
        x,
        shift,
        y,
        weight,
        bias,
        stats,
        hw,
        C,
        cg,
        tps,
        S,
        shift_stride_b,
        float(eps),
        HAS_SHIFT=has_shift,
        SILU=bool(silu),
        BLOCK_HW=block_hw,
        BLOCK_C=block_c,
        BLOCK_S=triton_next_pow2(S),
    )
    return y


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements between consecutive channels when ``a`` and ``b`` ``[B,C,H,W]`` are both dense
    channels-last (1) or both contiguous NCHW (H*W); 0 when the residual kernel cannot index them."""
    if a.shape != b.shape or a.dim() != 4:
        return 0
    for fmt, inner in ((torch.channels_last, 1), (torch.contiguous_format, a.shape[2] * a.shape[3])):
        if a.is_contiguous(memory_format=fmt) and b.is_contiguous(memory_format=fmt):
            return inner
    return 0


def resnet_residual(
    skip: torch.Tensor,
    h: torch.Tensor,
    bias: torch.Tensor | None,
    bias2: torch.Tensor | None,
    scale: float,
    fused: bool,
) -> torch.Tensor:
    """``(skip + h + bias + bias2) / scale`` for ``skip, h`` ``[B,C,H,W]`` of one dtype, biases ``[C]`` or None.

    ``fused`` (the caller's :func:`uses_fused`) takes the Triton kernel for CUDA tensors that share a
    dense layout (channels-last or NCHW): one pass, fp32 arithmetic, the layout of ``h``. Otherwise
    torch's ops: the biases added to ``h`` in turn, then ``skip``, then the scale.
    """
    global _broken
    if (
        fused
        and not _broken
        and _device_ok(h)
        and _same_layout(skip, h)
        and h.dtype in _DTYPES
        and skip.dtype == h.dtype
        and triton_available()
    ):
        try:
            return fused_resnet_residual(skip, h, bias, bias2, scale)
        except Exception as exc:  # a kernel that does not compile here: warn once, stay correct
            _broken = True
            log.warning("fused residual failed (%s: %s); using torch's ops", type(exc).__name__, exc)
    for b in (bias, bias2):
        if b is not None:
            h = h + b.to(h.dtype)[:, None, None]
    out = skip + h
    return out if scale == 1.0 else out / scale


def fused_resnet_residual(
    skip: torch.Tensor,
    h: torch.Tensor,
    bias: torch.Tensor | None,
    bias2: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """The residual kernel: ``(skip + h + bias + bias2) / scale`` -> ``h``'s shape, dtype and layout.

    ``skip`` and ``h`` ``[B,C,H,W]`` both channels-last or both NCHW-contiguous; biases ``[C]``.
    """
    from guidance.nets.fused_norm_kernels import resnet_residual as kernel

    inner = _same_layout(skip, h)
    if not inner:
        raise ValueError("fused_resnet_residual needs skip and h of one shape and one dense layout")
    y = torch.empty_like(h)
    n = y.numel()
    if n:
        C = h.shape[1]
        kernel[(-(-n // _BLOCK),)](
            skip,
            h,
            h if bias is None else bias.contiguous(),
            h if bias2 is None else bias2.contiguous(),
            y,
            n,
            C,
            inner,
            float(scale),
            HAS_BIAS=bias is not None,
            HAS_BIAS2=bias2 is not None,
            SCALED=scale != 1.0,
            BLOCK=_BLOCK,
        )
    return y
