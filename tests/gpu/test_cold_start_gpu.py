"""The GPU library warm-up thread (core.gpu_warmup) on CUDA: it finishes and draws no random number."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_library_warmup_finishes_without_touching_the_rng():
    from core.gpu_warmup import start_library_warmup

    dev = torch.device("cuda")
    cpu_rng, gpu_rng = torch.get_rng_state(), torch.cuda.get_rng_state(dev)
    for dtype in ("fp16", "bf16"):
        t = start_library_warmup(dev, dtype)
        assert t is not None
        t.join(120)
        assert not t.is_alive()
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(dev), gpu_rng)
