"""GEGLU (``value * GELU(gate)``) of the UNet's feed-forward in one Triton pass, with the exact torch path kept.

Why: torch runs it as a GELU over the (strided) gate half and a multiply that cannot vectorise over
the strided halves: two kernels and three full reads for one output (0.87 ms of a 9.8 ms Stable
Zero123 CFG call at batch 12 on an H200, bench/results/profile_unet_fusednorm_h200.json). The
kernel of :mod:`guidance.nets.fused_geglu_kernel` reads the projection once and writes the product.

The switch is the ``fused_geglu`` flag of each feed-forward module, set with the GroupNorm flags by
:func:`guidance.nets.fused_norm.set_fused_norm` (``model.fused_norm``); off, or on CPU, in training
(gradients) or after a failed launch, the exact torch path runs.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from guidance.nets import fused_norm

__all__ = ["FLAG", "geglu", "fused_geglu"]

log = logging.getLogger(__name__)

#: The attribute :func:`guidance.nets.fused_norm.set_fused_norm` sets on modules that declare it.
FLAG = "fused_geglu"
_BLOCK = 1024
_broken = False  # set when a fused launch raised: the exact path from then on


def _uses_fused(h: torch.Tensor, module: torch.nn.Module) -> bool:
    return (
        getattr(module, FLAG, False)
        and not _broken
        and fused_norm._device_ok(h)
        and h.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and h.is_contiguous()
        and h.shape[-1] % 2 == 0
        and not (torch.is_grad_enabled() and h.requires_grad)
        and fused_norm.triton_available()
    )


def geglu(h: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``value * gelu(gate)`` of ``h`` ``[..., 2D]`` (value first) -> ``[..., D]``; fused when ``module``'s flag is on."""
    global _broken
    if _uses_fused(h, module):
        try:
            return fused_geglu(h)
        except Exception as exc:  # a kernel that does not compile here: warn once, stay correct
            _broken = True
            log.warning("fused GEGLU failed (%s: %s); using torch's", type(exc).__name__, exc)
    value, gate = h.chunk(2, dim=-1)
    return value * F.gelu(gate)


def fused_geglu(h: torch.Tensor) -> torch.Tensor:
    """The Triton kernel on a contiguous ``h`` ``[..., 2D]`` -> contiguous ``[..., D]`` of ``h``'s dtype (fp32 arithmetic)."""
    from guidance.nets.fused_geglu_kernel import geglu_kernel

    D = h.shape[-1] // 2
    y = torch.empty(*h.shape[:-1], D, device=h.device, dtype=h.dtype)
    n = y.numel()
    if n:
        geglu_kernel[(-(-n // _BLOCK),)](h, y, n, D, BLOCK=_BLOCK)
    return y
