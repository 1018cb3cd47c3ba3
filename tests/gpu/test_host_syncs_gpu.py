"""Stage-1 optimiser steps and the camera converters make no host-device sync on CUDA.

Everything runs under ``torch.cuda.set_sync_debug_mode("error")`` after a warm-up step (optimiser
state, gsplat's extension load, cached constants), so any new ``.item()``, ``float(tensor)``,
``torch.tensor(list, device=cuda)``, ``nonzero``... in the loop fails here. The one sync a gsplat
render has by design, its tile intersection reading the number of intersections to size its
buffers (``isect_tiles``, an ``.item()`` in gsplat's C++), is exempted alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch


@contextlib.contextmanager
def _syncs_are_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.fixture
def gsplat_isect_exempt(monkeypatch):
    """Let gsplat's tile intersection (its one by-design sync) run with sync errors off."""
    from gs_renderer import gsplat_available

    if not gsplat_available():
        pytest.skip("gsplat is not usable here")
    import gsplat.rendering

    real = gsplat.rendering.isect_tiles

    def isect_tiles(*args, **kwargs):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(gsplat.rendering, "isect_tiles", isect_tiles)


def test_camera_converters_make_no_sync():
    from core.cameras import Cameras, orbit_cameras

    dev = torch.device("cuda")
    elev = torch.tensor([0.0, -30.0, 15.0], device=dev)
    azim = torch.tensor([0.0, 120.0, 240.0], device=dev)
    with _syncs_are_errors():
        cams = orbit_cameras(elev, azim, radius=2.5, fovy=49.1, height=64, width=48, device=dev)
        both = Cameras.cat([cams, cams[0]]).resized(32, 48)
        out = [both.viewmats(), both.Ks(), both.projection(), both.mvp(), both.campos()]
    torch.cuda.synchronize()
    assert out[0].shape == (4, 4, 4) and out[1].shape == (4, 3, 3) and out[3].shape == (4, 4, 4)
    assert float(out[1][0, 0, 2]) == 24.0 and float(out[1][0, 1, 2]) == 16.0
    assert torch.allclose(out[4].norm(dim=-1), torch.full((4,), 2.5, device=dev))


def test_stage1_steps_make_no_sync(gsplat_isect_exempt):
    from core.cameras import orbit_cameras
    from gs_renderer import GaussianModel
    from pipeline import load_config
    from pipeline.gaussians import GaussianRepresentation
    from pipeline.stage1 import gaussian_settings

    dev = torch.device("cuda")
    S, V = 64, 4
    cfg = load_config(["guidance=oracle", "device=cuda"])
    # Every per-step option on (scale cap, background-alpha loss); densification window 0..300,
    # events every 100 steps, so steps 1..5 accumulate statistics but never densify.
    settings = replace(gaussian_settings(cfg), backend="gsplat", max_scale=0.05, bg_alpha_loss=0.1)
    assert settings.density_start_iter <= 1 and settings.densification_interval > 5
    g = torch.Generator(device=dev).manual_seed(0)
    ref_cam = orbit_cameras(0.0, 0.0, height=S, device=dev)
    model = GaussianModel.init_ball(2000, radius=0.5, seed=0).to(dev)
    rep = GaussianRepresentation(
        model,
        settings,
        torch.rand(3, S, S, device=dev, generator=g),
        (torch.rand(1, S, S, device=dev, generator=g) > 0.5).float(),
        ref_cam,
    )
    elev = torch.tensor([0.0, -20.0, 10.0, -5.0], device=dev)
    azim = torch.tensor([10.0, 100.0, 190.0, 280.0], device=dev)
    target = torch.rand(V, 3, S, S, device=dev, generator=g)

    def one_step(cams):
        rep.begin_iteration(cams)
        out = rep.render(cams)
        loss = rep.loss(out, target)
        rep.step(loss, out)
        return loss.detach()

    cams = orbit_cameras(elev, azim, radius=2.0, height=S, device=dev)
    one_step(cams)  # warm-up
    losses = []
    with _syncs_are_errors():
        for _ in range(4):
            cams = orbit_cameras(elev, azim, radius=2.0, height=S, device=dev)
            losses.append(one_step(cams))
    torch.cuda.synchronize()
    assert rep.step_count == 5
    assert all(torch.isfinite(x) for x in losses)
    assert float(rep.densifier.denom.sum()) > 0  # statistics were accumulated
    assert float(rep.model.get_scales().detach().max()) <= 0.05 * (1 + 1e-6)
