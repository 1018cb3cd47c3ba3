"""The GPU library warm-up thread (core.gpu_warmup) on CUDA: it finishes and draws no random number."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_library_warmup_finishes_without_touching_the_rng():
    from core.gpu_warmup import start_library_warmup

    dev = torch.device("cuda")
    cpu_rng, gpu_rng = torch.get_rng_state(), torch.cuda.get_rng_state(dev)
    for dtype in (torch.float16, torch.bfloat16):
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


def test_graph_capture_survives_cpu_tensor_work_on_another_thread():
    """The one-command run captures stage 2's graphs while the UV unwrap thread builds CPU tensors
    (whose pinned-memory queries are CUDA calls): the capture must not be invalidated by them."""
    import threading

    import numpy as np

    from guidance.cuda_graphs import GraphRunner

    dev = torch.device("cuda")
    lin = torch.nn.Linear(256, 256).to(dev)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            t = torch.from_numpy(np.ones(4096, np.float32)).to("cpu")
            t.is_pinned()

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        runner = GraphRunner(lambda x: lin(x), dev, True, name="test")
        x = torch.randn(64, 256, device=dev)
        with torch.no_grad():
            for _ in range(6):
                out = runner(x=x)
    finally:
        stop.set()
        worker.join(10)
    assert runner.enabled and any(e["graph"] is not None for e in runner._entries.values())
    with torch.no_grad():
        assert torch.equal(out, lin(x).float())


def test_renderer_preloads_on_the_warmup_thread_leave_both_renderers_ready():
    """gsplat and the nvdiffrast plugin load on the warm-up thread; the main thread then renders
    with both, and gets the same image as a render after a main-thread load would give."""
    import gs_renderer
    import mesh_renderer
    import mesh_renderer.raster as raster
    from core.cameras import orbit_cameras
    from core.gpu_warmup import start_library_warmup

    dev = torch.device("cuda")
    t = start_library_warmup(
        dev,
        torch.float16,
        [
            lambda: gs_renderer.preload_kernels("auto", dev),
            lambda: mesh_renderer.preload_kernels("auto", dev),
        ],
    )
    t.join(300)
    assert not t.is_alive()
    assert gs_renderer.gsplat_available() and raster._DR is not None
    model = gs_renderer.GaussianModel.init_ball(500, seed=0, device=dev)
    cams = orbit_cameras([0.0, 0.0], [0.0, 90.0], height=64, device=dev)
    bg = torch.ones(3, device=dev)
    a = gs_renderer.render(model, cams, bg, backend="gsplat").rgb
    b = gs_renderer.render(model, cams, bg, backend="gsplat").rgb
    assert torch.isfinite(a).all() and torch.equal(a, b)
    mesh = mesh_renderer.Mesh(
        v=torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]], device=dev),
        f=torch.tensor([[0, 1, 2]], device=dev),
    )
    ras = mesh_renderer.rasterize(mesh, cams, backend="nvdiffrast")
    ref = mesh_renderer.rasterize(mesh, cams, backend="torch")
    assert ras.alpha.sum() > 100  # the triangle is on screen
    assert (ras.alpha == ref.alpha).float().mean() > 0.99


def test_warmup_thread_runs_on_the_runs_device():
    """Preloads run with the stage's device current (cuda:N must not get work on GPU 0)."""
    from core.gpu_warmup import start_library_warmup

    last = torch.device("cuda", torch.cuda.device_count() - 1)
    seen = []
    t = start_library_warmup(last, torch.float16, [lambda: seen.append(torch.cuda.current_device())])
    t.join(120)
    assert seen == [last.index]
