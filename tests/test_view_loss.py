"""The stage-1 loss as one autograd node (pipeline.view_loss): value and gradients equal the torch formula."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.cameras import orbit_cameras
from core.types import RenderOutput
from gs_renderer.model import GaussianModel
from gs_renderer.render import render
from pipeline.config import load_config
from pipeline.gaussians import GaussianRepresentation
from pipeline.stage1 import gaussian_settings
from pipeline.view_loss import view_loss, view_loss_terms


def _views_formula(rgb, alpha, target, s, V):
    """The refined-view terms of the stage-1 loss, term by term with torch ops (docs/method.md#sir-loop)."""
    loss = s.lambda_target * (rgb[:V] - target).abs().sum() / V
    bg = (target.amin(1, keepdim=True) >= 1.0 - s.bg_threshold).to(target.dtype)
    fg = 1.0 - F.max_pool2d(bg, 3, stride=1, padding=1)
    loss = loss + s.bg_alpha_loss * (alpha[:V] * bg).sum() / V
    return loss + s.fg_alpha_loss * ((1.0 - alpha[:V]) * fg).sum() / V


def _ref_formula(rgb, alpha, ref_rgb, ref_mask, s):
    """The reference-view terms: L1 to the photo, squared error to its mask."""
    return s.ref_loss * (rgb - ref_rgb).abs().sum() + s.ref_mask_loss * ((alpha - ref_mask) ** 2).sum()


def _formula(rgb, alpha, target, ref_rgb, ref_mask, s, V):
    """The whole stage-1 loss on rows ``[V+1,...]`` (the reference view last)."""
    return _views_formula(rgb, alpha, target, s, V) + _ref_formula(rgb[V], alpha[V], ref_rgb, ref_mask, s)


def _case(seed: int = 0, V: int = 3, S: int = 10):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(V + 1, 3, S, S, generator=g, dtype=torch.float64)
    alpha = torch.rand(V + 1, 1, S, S, generator=g, dtype=torch.float64)
    target = torch.rand(V, 3, S, S, generator=g, dtype=torch.float64)
    target[:, :, :4] = 0.995  # background rows: both alpha terms and their edge rule matter
    target[0, :, :, 7:] = 1.0
    rgb[1, :, 2, 2] = target[1, :, 2, 2]  # d == 0: abs's gradient there is 0
    ref_rgb = torch.rand(3, S, S, generator=g, dtype=torch.float64)
    ref_mask = (torch.rand(1, S, S, generator=g) > 0.5).double()
    return rgb, alpha, target, ref_rgb, ref_mask


def _rep(settings, ref_rgb, ref_mask, S, V, ref_size=None):
    model = GaussianModel.init_ball(20, radius=0.5, seed=0)
    ref_cam = orbit_cameras(0.0, 0.0, height=ref_size or S)
    rep = GaussianRepresentation(model, settings, ref_rgb, ref_mask, ref_cam)
    rep.begin_iteration(orbit_cameras([0.0] * V, [0.0, 120.0, 240.0][:V], height=S))
    return rep


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.0, 0.0), (0.7, 0.0), (0.0, 2.5)])
def test_batched_rows_match_the_formula_value_and_gradients(weights):
    V, S = 3, 10
    rgb, alpha, target, ref_rgb, ref_mask = _case(V=V, S=S)
    s = replace(
        gaussian_settings(load_config(["guidance=oracle"])),
        bg_alpha_loss=weights[0],
        fg_alpha_loss=weights[1],
        lambda_target=1.3,
    )
    rep = _rep(s, ref_rgb, ref_mask, S, V)
    a1, b1 = rgb.clone().requires_grad_(), alpha.clone().requires_grad_()
    a2, b2 = rgb.clone().requires_grad_(), alpha.clone().requires_grad_()
    got = rep.loss(RenderOutput(rgb=a1, alpha=b1), target)
    want = _formula(a2, b2, target, ref_rgb, ref_mask, s, V)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (2.0 * got).backward()
    (2.0 * want).backward()  # grad_output != 1 reaches both gradients
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-12, atol=1e-12)
    assert float(a1.grad[1, 0, 2, 2]) == 0.0


def test_separate_reference_render_and_cached_terms():
    """Reference at another size: its own terms on its own render; the constants follow the target."""
    V, S = 2, 8
    _, _, target, _, _ = _case(V=V, S=S)
    g = torch.Generator().manual_seed(3)
    ref_rgb, ref_mask = torch.rand(3, 12, 12, generator=g), (torch.rand(1, 12, 12, generator=g) > 0.5).float()
    s = gaussian_settings(load_config(["guidance=oracle"]))
    rep = _rep(s, ref_rgb, ref_mask, S, V, ref_size=12)
    assert not rep.batched_ref
    out = rep.render(rep.cams)
    target = target.float()
    ref = render(rep.model, rep.ref_cam, rep.bg, backend=rep.backend)
    ref_part = _ref_formula(ref.rgb[0], ref.alpha[0], ref_rgb, ref_mask, s)
    want = _views_formula(out.rgb, out.alpha, target, s, V) + ref_part
    torch.testing.assert_close(rep.loss(out, target), want, rtol=1e-5, atol=1e-3)
    # A new target (same shape) rebuilds the constants; so does an in-place change of the old one.
    other = torch.ones_like(target)
    want_other = _views_formula(out.rgb, out.alpha, other, s, V) + ref_part
    assert abs(float(want_other - want)) > 1.0
    torch.testing.assert_close(rep.loss(out, other), want_other, rtol=1e-5, atol=1e-3)
    target.fill_(1.0)
    torch.testing.assert_close(rep.loss(out, target), want_other, rtol=1e-5, atol=1e-3)


def test_view_loss_terms_checks_row_count_and_builds_weights():
    t = torch.zeros(3, 3, 4, 4)
    terms = view_loss_terms(t, [0.5, 0.5, 2.0], w_sq=[0.0, 0.0, 0.25], const=1.5)
    assert terms.w_rgb.flatten().tolist() == [0.5, 0.5, 2.0]
    assert terms.w_sq2.flatten().tolist() == [0.0, 0.0, 0.5]
    rgb = torch.full((3, 3, 4, 4), 0.5, requires_grad=True)
    alpha = torch.ones(3, 1, 4, 4, requires_grad=True)
    loss = view_loss(rgb, alpha, terms)
    # 0.5 * 48 * (0.5 + 0.5 + 2.0) + 0.25 * 16 + 1.5
    assert float(loss.detach()) == pytest.approx(0.5 * 48 * 3.0 + 4.0 + 1.5)
    with pytest.raises(ValueError, match="expected 3 row weights"):
        view_loss_terms(t, [1.0, 1.0])
