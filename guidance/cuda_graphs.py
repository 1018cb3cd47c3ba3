"""Run a network through CUDA graphs captured once per input signature.

The networks here run at a handful of fixed shapes (batch 6/12 at 32x32 latents for stage 1, 8/16
for stage 2) and are launch-bound at those sizes: replaying a captured graph removes the per-kernel
launch cost (measured on an H100: UNet batch 12 fp16, 43 ms eager vs 13.5 ms graphed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

Out = torch.Tensor | tuple[torch.Tensor, ...]

#: Eager calls of a new input signature before :class:`GraphRunner` captures it (on the next call).
WARMUP_CALLS = 1


def _as_float(out: Out, copy: bool) -> Out:
    if isinstance(out, tuple):
        return tuple(o.to(torch.float32, copy=copy) for o in out)
    return out.to(torch.float32, copy=copy)


class GraphRunner:
    """Calls ``fn(**tensors)`` eagerly, or through one CUDA graph per input signature.

    Graph mode keeps static input buffers per signature (names, shapes, dtypes), runs ``warmup``
    eager calls on a side stream (cuDNN/cuBLAS choose their algorithms there), then captures;
    later calls copy the inputs in and replay. A capture failure falls back to eager for good (a
    slower run beats a crash). Outputs (a tensor or a tuple of tensors) are returned as fresh
    float32 tensors, never as the static buffers.
    """

    def __init__(
        self,
        fn: Callable[..., Out],
        device: torch.device,
        enabled: bool,
        warmup: int = WARMUP_CALLS,
        name: str = "network",
    ) -> None:
        self.fn = fn
        self.enabled = bool(enabled) and torch.device(device).type == "cuda"
        self.warmup = warmup
        self.name = name
        self._entries: dict[tuple, dict[str, Any]] = {}
        self._pool = None

    def __call__(self, **inputs: torch.Tensor) -> Out:
        if not self.enabled:
            return _as_float(self.fn(**inputs), copy=False)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))
        e = self._entries.get(key)
        if e is None:
            e = {
                "bufs": {k: torch.empty_like(v) for k, v in inputs.items()},
                "calls": 0,
                "graph": None,
                "out": None,
            }
            self._entries[key] = e
        for k, v in inputs.items():
            e["bufs"][k].copy_(v)
        if e["graph"] is None:
            e["calls"] += 1
            if e["calls"] <= self.warmup:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.fn(**e["bufs"])
                torch.cuda.current_stream().wait_stream(side)
                return _as_float(out, copy=True)
            try:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                g = torch.cuda.CUDAGraph()
                # thread_local: another thread's CUDA call, even a CPU tensor's pinned-memory query,
                # must not invalidate this capture (the default global mode lets it: a one-command
                # run once crashed so); the pipeline also keeps its helper threads off CUDA here.
                with torch.cuda.graph(g, pool=self._pool, capture_error_mode="thread_local"):
                    e["out"] = self.fn(**e["bufs"])
                e["graph"] = g
                log.debug("captured a CUDA graph of the %s for %s", self.name, key)
            except Exception as exc:  # pragma: no cover - GPU only
                log.warning("CUDA graph capture of the %s failed (%s); running it eagerly", self.name, exc)
                self.enabled = False
                self._entries.clear()
                return _as_float(self.fn(**inputs), copy=False)
        e["graph"].replay()
        return _as_float(e["out"], copy=True)
