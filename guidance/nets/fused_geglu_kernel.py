"""The Triton kernel of :mod:`guidance.nets.fused_geglu` (imports triton: import this module lazily).

The feed-forward's projection ``h`` is ``[R, 2D]`` row-major: value ``h[:, :D]``, gate ``h[:, D:]``.
One program per block of output elements writes ``value * gelu(gate)`` (exact erf GELU, fp32
arithmetic) into a contiguous ``[R, D]``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["geglu_kernel"]


@triton.jit
def geglu_kernel(h_ptr, y_ptr, n, D, BLOCK: tl.constexpr):
    """``y[r, c] = h[r, c] * gelu(h[r, D + c])`` for the block's ``n = R*D`` flat outputs."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    row = offs // D
    src = offs + row * D  # row * 2D + col
    a = tl.load(h_ptr + src, mask=m, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + src + D, mask=m, other=0.0).to(tl.float32)
    y = a * (0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)
