"""Per-phase wall-clock timing that does not stall the GPU inside loops."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates seconds per named phase.

    On CUDA each phase is bracketed by CUDA events, which are only read (one synchronisation) in
    :meth:`seconds`; so timing an inner loop adds no host-device sync. On CPU it uses
    ``time.perf_counter``.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.cuda = device.type == "cuda"
        if self.cuda and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # An indexed device: torch.cuda.current_stream() without one asks torch.cuda.device_count()
        # at every event of every phase of every step.
        self._device = device
        self.started_unix = time.time()  # wall clock at creation, for process-level timelines
        self._events: dict[str, list[tuple]] = defaultdict(list)
        self._cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block under ``name`` (adds up over repeated entries)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self._device))
            try:
                yield
            finally:
                end.record(torch.cuda.current_stream(self._device))
                self._events[name].append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._cpu[name] += time.perf_counter() - t0

    def seconds(self) -> dict[str, float]:
        """Seconds per phase (synchronises the GPU once)."""
        out = dict(self._cpu)
        if self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
        return {k: round(v, 4) for k, v in out.items()}
