"""Test-wide settings (imported before any test module, hence before torch)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
