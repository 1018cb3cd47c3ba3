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


def test_adam_on_cuda_equals_torch_fused_adam_bit_for_bit():
    """core.adam on the GPU: the same kernel as torch.optim.Adam(fused=True), so the same bits."""
    from core.adam import Adam
    from gs_renderer import GaussianModel
    from gs_renderer.model import update_learning_rate

    dev = torch.device("cuda")
    m = GaussianModel.init_ball(2000, seed=3, device=dev)
    opt = m.make_optimizer()
    assert isinstance(opt, Adam)
    twins = {p: p.detach().clone().requires_grad_(True) for g in opt.param_groups for p in g["params"]}
    ref = torch.optim.Adam(
        [{**g, "params": [twins[p] for p in g["params"]]} for g in opt.param_groups], fused=True
    )
    gen = torch.Generator(device=dev).manual_seed(0)
    for step in range(5):
        update_learning_rate(opt, 100 * step)
        update_learning_rate(ref, 100 * step)
        for p, q in twins.items():
            p.grad = torch.randn(p.shape, generator=gen, device=dev, dtype=p.dtype)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for p, q in twins.items():
            assert torch.equal(p, q), f"step {step}: parameters differ"
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(opt.state[p][key], ref.state[q][key]), (step, key)
