"""The Triton kernels of :mod:`guidance.nets.fused_norm` (imports triton: import this module lazily).

A channels-last ``[B,C,H,W]`` tensor is ``[B,H*W,C]`` in memory; group ``g`` is the column block
``g*Cg .. (g+1)*Cg`` of every row. Each group's rows are cut into ``S`` contiguous splits (several
programs per group, so a big VAE group does not stream through one SM). Both kernels normalise
``x + shift`` when ``HAS_SHIFT``: ``shift`` is ``[B,C]`` (batch stride ``C``) or ``[C]`` (batch stride
0), added in fp32 as each element is loaded (the ResnetBlock's conv bias and time embedding, which
would otherwise be full passes over the activation). Three kernels:

* ``group_norm_stats``: one program per (batch, group, split) -> the split's count, mean and M2
  (sum of squared deviations), accumulated in fp32 around a pivot (the mean of the split's first
  tile), so ``E[x^2] - mean^2`` does not cancel when ``|mean| >> std``;
* ``group_norm_apply``: one program per (batch, group, split): merges the ``S`` splits' statistics
  (Chan et al.'s pairwise formula, exact in exact arithmetic), then writes
  ``act((x + shift - mean) * rstd * weight + bias)`` in the input's dtype, act = SiLU or identity;
* ``group_norm_onepass``: one program per (batch, group) holding the whole group in registers
  (the UNet's groups at 32x32 latents and below: at most ``fused_norm._ONEPASS_MAX`` padded
  elements): mean, then the variance of the deviations (exact two-pass statistics), then the
  output, reading the input once instead of twice and launching once instead of twice;
* ``resnet_residual``: ``(skip + h + bias [+ bias2]) / scale`` elementwise, the end of a ResnetBlock.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["group_norm_onepass", "group_norm_stats", "group_norm_apply", "resnet_residual"]


@triton.jit
def _split_of(pid, S, HW, C, Cg):
    """Program ``pid``'s (split, batch*G + group, group, offset of its (batch, group)'s first element)."""
    s = pid % S
    bg = pid // S
    G = C // Cg
    b = bg // G
    g = bg % G
    return s, bg, g, b.to(tl.int64) * HW * C + g * Cg


@triton.jit
def _shift_of(shift_ptr, b, g, Cg, cols, col_ok, stride_b, HAS_SHIFT: tl.constexpr):
    """The fp32 shift of batch ``b``'s group ``g`` columns (zeros without ``HAS_SHIFT``)."""
    if HAS_SHIFT:
        sh = tl.load(shift_ptr + b.to(tl.int64) * stride_b + g * Cg + cols, mask=col_ok, other=0.0)
        sh = sh.to(tl.float32)
    else:
        sh = tl.zeros(cols.shape, dtype=tl.float32)
    return sh


@triton.jit
def group_norm_onepass(
    x_ptr,
    shift_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    HW,
    C,
    Cg,
    shift_stride_b,
    eps,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """GroupNorm (+ SiLU) of one whole (batch, group) of ``x (+ shift)`` held in registers (``HW <= BLOCK_HW``)."""
    _, bg, g, off = _split_of(tl.program_id(0), 1, HW, C, Cg)
    rows = tl.arange(0, BLOCK_HW)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < Cg
    m = (rows < HW)[:, None] & col_ok[None, :]
    idx = off + rows[:, None].to(tl.int64) * C + cols[None, :]
    sh = _shift_of(shift_ptr, bg // (C // Cg), g, Cg, cols, col_ok, shift_stride_b, HAS_SHIFT)
    x = tl.load(x_ptr + idx, mask=m, other=0.0).to(tl.float32) + sh[None, :]
    n = (HW * Cg).to(tl.float32)
    mean = tl.sum(tl.sum(tl.where(m, x, 0.0), axis=1), axis=0) / n
    d = tl.where(m, x - mean, 0.0)
    var = tl.sum(tl.sum(d * d, axis=1), axis=0) / n
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + g * Cg + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + g * Cg + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = d * (w * rstd)[None, :] + bias[None, :]
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def group_norm_stats(
    x_ptr,
    shift_ptr,  # [B,C] or [C] added to x (HAS_SHIFT); batch stride shift_stride_b
    stats_ptr,  # float32 [B*G*S, 3]: count, mean, M2
    HW,
    C,
    Cg,
    tiles_per_split,
    S,
    shift_stride_b,
    HAS_SHIFT: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Count, mean and M2 of one split of one (batch, group) of ``x (+ shift)``."""
    pid = tl.program_id(0)
    s, _, g, off = _split_of(pid, S, HW, C, Cg)
    base = x_ptr + off
    rows = tl.arange(0, BLOCK_HW)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < Cg
    sh = _shift_of(shift_ptr, pid // S // (C // Cg), g, Cg, cols, col_ok, shift_stride_b, HAS_SHIFT)
    row0 = s * tiles_per_split * BLOCK_HW
    # Pivot: the mean of the split's first tile (never empty: the host makes no empty split).
    r = row0 + rows
    m = (r < HW)[:, None] & col_ok[None, :]
    x = tl.load(base + r[:, None].to(tl.int64) * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
    x = tl.where(m, x + sh[None, :], 0.0)
    pivot = tl.sum(tl.sum(x, axis=1), axis=0) / tl.sum(tl.sum(m.to(tl.float32), axis=1), axis=0)
    acc1 = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for i in range(0, tiles_per_split):
        r = row0 + i * BLOCK_HW + rows
        m = (r < HW)[:, None] & col_ok[None, :]
        x = tl.load(base + r[:, None].to(tl.int64) * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, x + sh[None, :] - pivot, 0.0)
        acc1 += d
        acc2 += d * d
    n_rows = tl.minimum(HW - row0, tiles_per_split * BLOCK_HW)
    n = (n_rows * Cg).to(tl.float32)
    s1 = tl.sum(tl.sum(acc1, axis=1), axis=0)
    s2 = tl.sum(tl.sum(acc2, axis=1), axis=0)
    out = stats_ptr + pid * 3
    tl.store(out, n)
    tl.store(out + 1, pivot + s1 / n)
    tl.store(out + 2, tl.maximum(s2 - s1 * s1 / n, 0.0))


@triton.jit
def group_norm_apply(
    x_ptr,
    shift_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    stats_ptr,
    HW,
    C,
    Cg,
    tiles_per_split,
    S,
    shift_stride_b,
    eps,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Normalise one split of one (batch, group) of ``x (+ shift)`` with the group's merged statistics; affine; SiLU."""
    s, bg, g, off = _split_of(tl.program_id(0), S, HW, C, Cg)
    # Merge the S splits of this group (each program redoes it: S is small, the loads are cached).
    k = tl.arange(0, BLOCK_S)
    k_ok = k < S
    st = stats_ptr + (bg * S + k) * 3
    cnt = tl.load(st, mask=k_ok, other=0.0)
    mean_k = tl.load(st + 1, mask=k_ok, other=0.0)
    m2_k = tl.load(st + 2, mask=k_ok, other=0.0)
    total = tl.sum(cnt, axis=0)
    mean = tl.sum(cnt * mean_k, axis=0) / total
    dev = mean_k - mean
    var = (tl.sum(m2_k, axis=0) + tl.sum(cnt * dev * dev, axis=0)) / total
    rstd = 1.0 / tl.sqrt(var + eps)

    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < Cg
    w = tl.load(w_ptr + g * Cg + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + g * Cg + cols, mask=col_ok, other=0.0).to(tl.float32)
    scale = w * rstd  # y = (x - mean) * scale + bias: no x * scale - mean * scale cancellation
    sh = _shift_of(shift_ptr, bg // (C // Cg), g, Cg, cols, col_ok, shift_stride_b, HAS_SHIFT)
    centre = sh - mean  # x + shift - mean, one add per element
    rows = tl.arange(0, BLOCK_HW)
    row0 = s * tiles_per_split * BLOCK_HW
    for i in range(0, tiles_per_split):
        r = row0 + i * BLOCK_HW + rows
        m = (r < HW)[:, None] & col_ok[None, :]
        idx = off + r[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(x_ptr + idx, mask=m, other=0.0).to(tl.float32)
        y = (x + centre[None, :]) * scale[None, :] + bias[None, :]
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def resnet_residual(
    skip_ptr,
    h_ptr,
    b_ptr,  # [C] (HAS_BIAS)
    b2_ptr,  # [C] (HAS_BIAS2): the shortcut conv's bias
    y_ptr,
    n,
    C,
    inner,  # elements between consecutive channels: 1 channels-last, H*W for NCHW
    scale,
    HAS_BIAS: tl.constexpr,
    HAS_BIAS2: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``y = (skip + h + bias + bias2) / scale`` over ``n`` flat elements of same-layout tensors (fp32 math)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    y = tl.load(skip_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y += tl.load(h_ptr + offs, mask=m, other=0.0).to(tl.float32)
    c = (offs // inner) % C
    if HAS_BIAS:
        y += tl.load(b_ptr + c, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS2:
        y += tl.load(b2_ptr + c, mask=m, other=0.0).to(tl.float32)
    if SCALED:
        y = y / scale
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)
