"""How many CUDA GPUs this process would see, without importing torch or creating a CUDA context.

The batch driver only needs the count to place its workers; importing torch and initialising CUDA
for it cost the driver ~2-3 s before any worker could start (H200 host). NVML (``libnvidia-ml``,
shipped with the NVIDIA driver) answers in milliseconds; ``CUDA_VISIBLE_DEVICES`` is then applied
as CUDA applies it: entries are read up to the first one that names no device.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["cuda_driver_present", "cuda_gpus", "nvml_device_count", "visible_count"]

_NVML_NAMES = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")
_CUDA_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library loads (no CUDA context is made): without it no GPU can run."""
    for name in _CUDA_NAMES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def nvml_device_count() -> int | None:
    """The machine's NVIDIA GPUs as NVML counts them; None when NVML cannot be loaded or answer."""
    for name in _NVML_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.nvmlInit_v2() != 0:
                return None
            count = ctypes.c_uint(0)
            ok = lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
            lib.nvmlShutdown()
        except AttributeError:  # a library of that name without the NVML entry points
            return None
        return int(count.value) if ok else None
    return None


def visible_count(machine: int, visible: str | None) -> int:
    """GPUs a CUDA process sees among ``machine`` GPUs under ``CUDA_VISIBLE_DEVICES=visible``.

    None: all of them. Otherwise the comma list is read in order and stops at the first entry that
    names no device (an index out of range, a negative or malformed one), as CUDA does; ``GPU-``/
    ``MIG-`` UUIDs count as devices; a repeated entry makes the whole list name none (torch's rule).
    """
    if visible is None:
        return machine
    seen: list[str] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if entry.startswith(("GPU-", "MIG-")):
            key = entry
        elif entry.isdigit() and int(entry) < machine:
            key = str(int(entry))
        else:
            break
        if key in seen:
            return 0
        seen.append(key)
    return len(seen)


def cuda_gpus(environ: Mapping[str, str] | None = None) -> int | None:
    """GPUs a CUDA process started with ``environ`` would see; None when NVML cannot tell."""
    machine = nvml_device_count()
    if machine is None:
        return None
    env = os.environ if environ is None else environ
    return visible_count(machine, env.get("CUDA_VISIBLE_DEVICES"))
