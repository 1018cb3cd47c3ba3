"""Cold start: load the GPU math libraries on a side thread while the model loads.

The first convolution, matrix product and attention call of a process load and initialise cuDNN,
cuBLAS/cuBLASLt and their kernels: seconds of a one-shot run that would otherwise land in the first
network call after the weights are read. Tiny calls of the same kinds on a daemon thread, started
before the weights load, pay that cost in parallel (the ops release the GIL). The same thread then
runs the caller's ``preload`` callables (the renderers' kernel loads: gsplat's and nvdiffrast's
extension modules take ~0.5 s each to find and load). Nothing here draws random numbers or changes
a setting the run reads; a failure only means no head start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

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


def start_library_warmup(
    device: torch.device,
    dtype: torch.dtype = torch.float16,
    preload: Sequence[Callable[[], object]] = (),
) -> threading.Thread | None:
    """Start :func:`_touch_libraries`, then each ``preload()``, on a daemon thread for a CUDA
    ``device`` (None elsewhere). The caller joins the thread before it captures CUDA graphs."""
    if device.type != "cuda":
        return None

    def work() -> None:
        # The run's device is this thread's current one too: a preload that makes CUDA calls on
        # "the current device" (gsplat's check) must not set up a context on GPU 0 for cuda:N.
        with torch.cuda.device(device) if device.index is not None else contextlib.nullcontext():
            for fn in (lambda: _touch_libraries(device, dtype), *preload):
                try:
                    fn()
                except Exception as exc:  # no head start, nothing else
                    log.debug("GPU warm-up step failed: %s", exc)

    thread = threading.Thread(target=work, name="gpu-library-warmup", daemon=True)
    thread.start()
    return thread
