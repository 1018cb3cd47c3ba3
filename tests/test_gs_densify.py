"""Densification: clone/split/prune counts, Adam state alignment, statistics units."""

import math

import pytest
import torch

from core.cameras import orbit_cameras
from core.types import RenderOutput
from gs_renderer import Densifier, GaussianModel, render


def _five():
    # A: small & hot -> clone; B: large & hot -> split; C: transparent -> prune;
    # D: huge (> 0.1 * extent) -> prune; E: plain -> kept.
    means = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2], [0.1, 0.1, 0.1]])
    scales = torch.log(torch.tensor([0.01, 0.1, 0.01, 0.5, 0.02]))[:, None].repeat(1, 3)
    scales[1, 1] = math.log(0.05)  # B anisotropic, to check the per-axis split scale
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(5, 1)
    op = torch.logit(torch.tensor([0.5, 0.5, 0.001, 0.5, 0.5]))
    sh0 = torch.arange(15.0).reshape(5, 1, 3)
    return GaussianModel(means, scales, quats, op, sh0)


def test_clone_split_prune_counts_and_params():
    m = _five()
    opt = m.make_optimizer()
    d = Densifier(m, opt, seed=0)
    d.grad_accum = torch.tensor([0.05, 0.02, 0.0, 0.0, 0.009])
    d.denom = torch.tensor([2.0, 1.0, 0.0, 1.0, 1.0])  # mean grads: .025, .02, 0 (nan->0), 0, .009
    stats = d.densify_and_prune(grad_thresh=0.01, min_opacity=0.005, extent=4.0)
    assert stats == {"before": 5, "cloned": 1, "split": 1, "pruned": 2, "after": 5}
    # Order: kept (A, E after pruning C, D), clone of A, 2 children of B.
    sh = m.sh0.detach()[:, 0, 0].tolist()
    assert sh == [0.0, 12.0, 0.0, 3.0, 3.0]
    assert torch.equal(m.means[2], m.means[0])  # the clone is an exact copy
    child_scales = m.get_scales().detach()[3:]
    assert torch.allclose(child_scales, torch.tensor([0.1, 0.05, 0.1]).expand(2, 3) / 1.6, rtol=1e-5)
    off = m.means.detach()[3:] - torch.tensor([0.2, 0, 0])
    assert (off.abs() < 0.5).all() and not torch.equal(m.means[3], m.means[4])
    assert d.grad_accum.shape == (5,) and float(d.grad_accum.abs().sum()) == 0 and float(d.denom.sum()) == 0
    # The optimiser now holds the new leaves.
    for g in opt.param_groups:
        assert g["params"][0] is getattr(
            m,
            {"xyz": "means", "f_dc": "sh0", "opacity": "opacities", "scaling": "scales", "rotation": "quats"}[
                g["name"]
            ],
        )


def test_adam_state_moves_with_points():
    m = _five()
    opt = m.make_optimizer()
    # Row i of every gradient is (i+1): after one step, exp_avg row i = 0.1 * (i+1).
    for t in m.parameters().values():
        if t.numel():
            t.grad = (torch.arange(5.0) + 1).reshape(5, *([1] * (t.dim() - 1))).expand_as(t).clone()
    opt.step()
    d = Densifier(m, opt)
    d.grad_accum = torch.tensor([0.05, 0.02, 0.0, 0.0, 0.009])
    d.denom = torch.ones(5)
    d.densify_and_prune()
    # Kept rows are A (row 0) and E (row 4); then 1 clone and 2 split children with zero state.
    expect = torch.tensor([0.1, 0.5, 0.0, 0.0, 0.0])
    for g in opt.param_groups:
        st = opt.state[g["params"][0]]
        ea = st["exp_avg"].reshape(5, -1)
        assert torch.allclose(ea, expect[:, None].expand_as(ea), atol=1e-6), g["name"]
        assert st["exp_avg_sq"].shape == g["params"][0].shape
    # And the optimiser still steps on the new tensors.
    for t in m.parameters().values():
        if t.numel():
            t.grad = torch.ones_like(t)
    before = m.means.detach().clone()
    opt.step()
    assert not torch.equal(before, m.means.detach())


def test_final_prune():
    m = _five()
    opt = m.make_optimizer()
    d = Densifier(m, opt)
    with torch.no_grad():
        m.scales[1] = math.log(0.09)  # B below the 0.1 limit
        m.opacities[4] = math.log(0.009 / 0.991)  # E: opacity 0.009 < 0.01
    assert d.final_prune() == 3  # C (opacity 0.001), D (scale 0.5), E
    assert m.num_points == 2 and torch.equal(m.sh0.detach()[:, 0, 0], torch.tensor([0.0, 3.0]))


def test_stats_units_and_all_views():
    m = GaussianModel.init_ball(30, seed=0)
    d = Densifier(m, None)
    V, N, H, W = 3, 30, 64, 32
    means2d = torch.zeros(V, N, 2, requires_grad=True)
    radii = torch.ones(V, N, dtype=torch.int32)
    radii[0, 0] = 0  # not visible in view 0
    out = RenderOutput(
        rgb=torch.zeros(V, 3, H, W), alpha=torch.zeros(V, 1, H, W), means2d=means2d, radii=radii
    )
    g = torch.zeros(V, N, 2)
    g[:, 0] = torch.tensor([0.001, 0.0])  # pixel-gradient along x
    g[:, 1] = torch.tensor([0.0, 0.001])
    g[1, 2] = torch.tensor([0.003, 0.004])
    means2d.grad = g
    d.add_stats(out)
    mg = d.mean_grads()
    assert mg[0] == pytest.approx(0.001 * W / 2)  # views 1,2 only
    assert float(d.denom[0]) == 2 and float(d.denom[1]) == 3
    assert mg[1] == pytest.approx(0.001 * H / 2)
    assert mg[2] == pytest.approx(math.hypot(0.003 * W / 2, 0.004 * H / 2) / 3)
    # views=2: a third row (e.g. the reference view in the same batch) is left out.
    d.reset_stats()
    d.add_stats(out, views=2)
    assert float(d.denom[0]) == 1 and float(d.denom[1]) == 2
    assert d.mean_grads()[2] == pytest.approx(math.hypot(0.003 * W / 2, 0.004 * H / 2) / 2)


def test_densify_after_real_render_keeps_training():
    m = GaussianModel.init_ball(200, seed=0)
    opt = m.make_optimizer()
    d = Densifier(m, opt, seed=1)
    cams = orbit_cameras([0, -20], [0, 120], radius=2.0, height=16)
    for _ in range(2):
        out = render(m, cams, torch.ones(3), backend="torch", need_means2d=True)
        (out.rgb.sum() * 10).backward()
        d.add_stats(out)
        opt.step()
        opt.zero_grad()
    assert float(d.denom.max()) == 4
    stats = d.densify_and_prune(grad_thresh=0.0)  # every visible point is hot
    assert stats["after"] == 200 + stats["cloned"] + stats["split"] - stats["pruned"]
    assert stats["cloned"] + stats["split"] > 0
    out = render(m, cams, torch.ones(3), backend="torch", need_means2d=True)
    out.rgb.sum().backward()
    opt.step()
    assert out.means2d.shape[1] == m.num_points
