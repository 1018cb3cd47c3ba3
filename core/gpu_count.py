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
    """The machine's NVIDIA GPUs as NVML counts them; None when NVML cannot be loaded or answer, or
    when a GPU is in MIG mode (NVML counts the physical GPU, CUDA sees its MIG devices or none)."""
    for name in _NVML_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.nvmlInit_v2() != 0:
                return None
        except AttributeError:  # a library of that name without the NVML entry points
            return None
        try:
            count = ctypes.c_uint(0)
            if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return None
            return None if _mig_or_unknown(lib, count.value) else int(count.value)
        except AttributeError:
            return None
        finally:
            lib.nvmlShutdown()
    return None


def _mig_or_unknown(lib: ctypes.CDLL, count: int) -> bool:
    """Whether one of the ``count`` GPUs is in MIG mode, or cannot be asked (no handle for it)."""
    for i in range(count):
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
            return True
        current, pending = ctypes.c_uint(0), ctypes.c_uint(0)
        # Not 0 (NVML_ERROR_NOT_SUPPORTED on GPUs without MIG): no MIG mode.
        if (
            lib.nvmlDeviceGetMigMode(handle, ctypes.byref(current), ctypes.byref(pending)) == 0
            and current.value
        ):
            return True
    return False


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
