"""core.gpu_count: the batch driver's GPU count without torch (NVML, CUDA_VISIBLE_DEVICES as CUDA reads it)."""

from __future__ import annotations

import pytest

from core import gpu_count
from core.gpu_count import cuda_gpus, visible_count


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, 4),  # unset: every GPU
        ("", 0),  # set but empty: none
        ("2", 1),
        ("3,1", 2),
        ("0,7,1", 1),  # CUDA stops at the first entry that names no device
        ("1,x,2", 1),
        ("-1", 0),
        (" 1 , 2 ", 2),
        ("0,0", 0),  # a repeated device: none (torch's rule)
        ("GPU-6f1e,1", 2),  # UUIDs count as devices
        ("MIG-aa,MIG-bb", 2),
    ],
)
def test_visible_count_reads_cuda_visible_devices_as_cuda_does(visible, expected):
    assert visible_count(4, visible) == expected


def test_cuda_gpus_applies_the_environment_to_nvmls_count(monkeypatch):
    monkeypatch.setattr(gpu_count, "nvml_device_count", lambda: 2)
    assert cuda_gpus({}) == 2
    assert cuda_gpus({"CUDA_VISIBLE_DEVICES": "1"}) == 1
    assert cuda_gpus({"CUDA_VISIBLE_DEVICES": "2"}) == 0
    monkeypatch.setattr(gpu_count, "nvml_device_count", lambda: None)
    assert cuda_gpus({}) is None  # NVML cannot tell: the caller asks torch


def test_the_driver_counts_gpus_without_torch_and_falls_back_to_it(monkeypatch):
    """batch's count: NVML's when it answers, 0 without a CUDA driver, torch's only when a driver
    exists whose NVML cannot answer."""
    import batch

    asked = []
    monkeypatch.setattr(gpu_count, "cuda_gpus", lambda: 3)
    assert batch._visible_gpus("cuda") == 3 and batch._visible_gpus("auto") == 3
    assert batch._visible_gpus("cpu") == 0 and batch._mps_gpus("cuda:1", 0) == 1
    monkeypatch.setattr(gpu_count, "cuda_gpus", lambda: None)
    monkeypatch.setattr(gpu_count, "cuda_driver_present", lambda: False)
    assert batch._visible_gpus("cuda") == 0 and batch._mps_gpus("cuda:0", 0) == 0
    import torch

    monkeypatch.setattr(gpu_count, "cuda_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 5)
    assert batch._visible_gpus("auto") == 5 and asked


def test_nvml_count_is_none_or_a_count_here():
    """On any machine: an int (GPUs present) or None (no NVIDIA driver), never an exception."""
    n = gpu_count.nvml_device_count()
    assert n is None or (isinstance(n, int) and n >= 0)


class _FakeNvml:
    """``libnvidia-ml`` as ctypes sees it: ``gpus`` GPUs, MIG mode on for the indices in ``mig``."""

    def __init__(self, gpus: int, mig: tuple[int, ...] = (), mig_ret: int = 0) -> None:
        self.gpus, self.mig, self.mig_ret, self.shutdowns = gpus, mig, mig_ret, 0

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlDeviceGetCount_v2(self, count) -> int:
        count._obj.value = self.gpus
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle) -> int:
        handle._obj.value = index.value + 1
        return 0

    def nvmlDeviceGetMigMode(self, handle, current, pending) -> int:
        current._obj.value = int(handle.value - 1 in self.mig)
        return self.mig_ret

    def nvmlShutdown(self) -> int:
        self.shutdowns += 1
        return 0


def _use_fake_nvml(monkeypatch, fake: _FakeNvml) -> None:
    import ctypes

    def cdll(name):
        if "nvidia-ml" not in name:
            raise OSError(name)
        return fake

    monkeypatch.setattr(ctypes, "CDLL", cdll)


def test_a_gpu_in_mig_mode_leaves_the_count_to_cuda(monkeypatch):
    """NVML counts physical GPUs; a GPU in MIG mode shows CUDA its MIG devices instead (or none when
    none is made), so NVML's count is not what CUDA sees: the caller must ask torch (None)."""
    fake = _FakeNvml(2)
    _use_fake_nvml(monkeypatch, fake)
    assert gpu_count.nvml_device_count() == 2 and fake.shutdowns == 1
    _use_fake_nvml(monkeypatch, _FakeNvml(2, mig_ret=3))  # NVML_ERROR_NOT_SUPPORTED: no MIG there
    assert gpu_count.nvml_device_count() == 2
    fake = _FakeNvml(2, mig=(1,))
    _use_fake_nvml(monkeypatch, fake)
    assert gpu_count.nvml_device_count() is None and fake.shutdowns == 1
    assert cuda_gpus({}) is None
