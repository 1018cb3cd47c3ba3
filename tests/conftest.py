"""Test-wide settings (imported before any test module, hence before torch) and test gating.

The project is importable through ``pythonpath = ["."]`` in pyproject.toml. Gating lives here, once:
every test under ``tests/gpu/`` is marked ``gpu`` and skipped without CUDA; ``slow`` tests carry a
``@pytest.mark.slow`` decorator (more than ~4 s on the 2-core CPU), so ``pytest -m "not slow"`` is a
quick pass and ``pytest -m "not gpu"`` the CPU suite.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GPU_DIR = Path(__file__).resolve().parent / "gpu"


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection sees the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/gpu/ ``gpu``; skip all ``gpu`` tests when CUDA is unavailable."""
    import torch  # here, not at the top: the environment settings above must come first

    skip = pytest.mark.skip(reason="needs CUDA") if not torch.cuda.is_available() else None
    for item in items:
        if GPU_DIR in item.path.parents:
            item.add_marker(pytest.mark.gpu)
        if skip is not None and item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _torch_one_thread():
    """One intra-op torch thread while active: the test box has 2 shared cores, and intra-op threads
    contend badly on tiny ops. torch is imported here, not at the top, so the settings above come first."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch thread for each test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    yield from _torch_one_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole module, its module-scoped fixtures included."""
    yield from _torch_one_thread()


@pytest.fixture(autouse=True)
def _deterministic_seed():
    """Every test starts from the same global RNG state, whatever ran before it."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - tests that still use the legacy global state
    torch.manual_seed(0)
