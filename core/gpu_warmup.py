"""Cold start: load the GPU math libraries on a side thread while the model loads.

The first convolution, matrix product and attention call of a process load and initialise cuDNN,
cuBLAS/cuBLASLt and their kernels: seconds of a one-shot run that would otherwise land in the first
network call after the weights are read. Tiny calls of the same kinds on a daemon thread, started
before the weights load, pay that cost in parallel (the ops release the GIL). Nothing here draws
random numbers or changes a setting the run reads; a failure only means no head start.
"""

from __future__ import annotations

import logging
import threading

import torch
import torch.nn.functional as F

__all__ = ["start_library_warmup"]

log = logging.getLogger(__name__)


def _touch_libraries(device: torch.device, dtype: torch.dtype) -> None:
    """One small channels-last convolution, GroupNorm, matrix product and attention in ``dtype``."""
    with torch.no_grad(), torch.cuda.device(device):
        x = torch.zeros(2, 32, 16, 16, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        w = torch.zeros(32, 32, 3, 3, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        F.conv2d(F.silu(F.group_norm(x, 8)), w, padding=1)
        a = torch.zeros(64, 64, device=device, dtype=dtype)
        F.linear(a, a, a[0])
        q = torch.zeros(2, 4, 64, 64, device=device, dtype=dtype)
        F.scaled_dot_product_attention(q, q, q)


def start_library_warmup(device: torch.device, dtype: torch.dtype = torch.float16) -> threading.Thread | None:
    """Start :func:`_touch_libraries` on a daemon thread for a CUDA ``device`` (None elsewhere)."""
    if device.type != "cuda":
        return None

    def work() -> None:
        try:
            _touch_libraries(device, dtype)
        except Exception as exc:  # no head start, nothing else
            log.debug("GPU library warm-up failed: %s", exc)

    thread = threading.Thread(target=work, name="gpu-library-warmup", daemon=True)
    thread.start()
    return thread
