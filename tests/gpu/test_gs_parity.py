"""gsplat (CUDA) vs the PyTorch reference renderer on the same scene and cameras."""

import math

import pytest
import torch


def _scene(n=3000, seed=0, sh_degree=0):
    from gs_renderer import GaussianModel

    g = torch.Generator().manual_seed(seed)
    m = GaussianModel.init_ball(n, radius=0.5, seed=seed, sh_degree=sh_degree)
    with torch.no_grad():
        m.scales.copy_(torch.log(0.01 + 0.04 * torch.rand(n, 3, generator=g)))
        m.quats.copy_(torch.randn(n, 4, generator=g))
        m.opacities.copy_(torch.randn(n, generator=g) * 1.5 - 0.5)
        m.sh0.copy_(torch.randn(n, 1, 3, generator=g))
        m.shN.copy_(0.3 * torch.randn(m.shN.shape, generator=g))
    return m.to("cuda")


def _cams(h=64, w=None):
    from core.cameras import orbit_cameras

    return orbit_cameras(
        [0, -30, 15, -10], [0, 70, 160, 250], radius=2.0, fovy=49.1, height=h, width=w, device="cuda"
    )


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("sh_degree,h,w", [(0, 64, 64), (1, 48, 80)])
def test_forward_and_gradients_match(sh_degree, h, w):
    from gs_renderer import render

    m = _scene(sh_degree=sh_degree)
    cams = _cams(h, w)
    bg = torch.tensor([0.2, 0.5, 1.0], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    wr = torch.rand(4, 3, h, w, device="cuda", generator=gen)
    wa = torch.rand(4, 1, h, w, device="cuda", generator=gen)
    res = {}
    for backend in ("gsplat", "torch"):
        for t in m.parameters().values():
            t.grad = None
        out = render(m, cams, bg, backend=backend, need_means2d=True)
        ((out.rgb * wr).sum() + (out.alpha * wa).sum()).backward()
        m2d_grad = out.means2d.grad.clone()
        out = type(out)(**{k: (v.detach() if torch.is_tensor(v) else v) for k, v in vars(out).items()})
        res[backend] = (out, {k: t.grad.clone() for k, t in m.parameters().items() if t.numel()}, m2d_grad)
    (og, gg, mg), (ot, gt, mt) = res["gsplat"], res["torch"]
    assert og.rgb.shape == ot.rgb.shape == (4, 3, h, w)
    assert float((og.rgb - ot.rgb).abs().max()) < 1e-2
    assert float((og.alpha - ot.alpha).abs().max()) < 1e-2
    hit = (og.alpha > 0.5) & (ot.alpha > 0.5)
    assert float(((og.depth - ot.depth).abs() / ot.depth.clamp_min(1e-3))[hit].max()) < 1e-2
    assert og.means2d.shape == ot.means2d.shape == (4, m.num_points, 2)
    vis = (og.radii > 0) & (ot.radii > 0)
    assert float((og.means2d - ot.means2d)[vis].abs().max()) < 1e-3
    assert og.radii.shape == ot.radii.shape
    assert float((og.radii > 0).eq(ot.radii > 0).float().mean()) > 0.995
    assert int((og.radii - ot.radii)[vis].abs().max()) <= 1
    for k in gt:
        assert _cos(gg[k], gt[k]) > 0.99, (k, _cos(gg[k], gt[k]))
    assert _cos(mg, mt) > 0.99


def test_auto_picks_gsplat_and_batches():
    from gs_renderer import gsplat_available, render

    assert gsplat_available()
    m = _scene(500)
    cams = _cams(32)
    bg = torch.ones(3, device="cuda")
    a = render(m, cams, bg, backend="auto")
    b = render(m, cams, bg, backend="gsplat")
    assert torch.equal(a.rgb, b.rgb)
    for v in range(len(cams)):
        one = render(m, cams[v], bg, backend="gsplat")
        assert torch.allclose(one.rgb[0], b.rgb[v], atol=1e-5)


def test_single_gaussian_gsplat_analytic():
    from core.cameras import orbit_cameras
    from gs_renderer import GaussianModel, render

    s, o = 0.08, 0.8
    m = GaussianModel(
        torch.zeros(1, 3),
        torch.full((1, 3), math.log(s)),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.logit(torch.tensor([o])),
        torch.zeros(1, 1, 3),
    ).to("cuda")
    cams = orbit_cameras(0.0, 0.0, radius=2.0, fovy=40.0, height=32, device="cuda")
    out = render(m, cams, torch.zeros(3, device="cuda"), backend="gsplat")
    var = (cams.focal * s / 2.0) ** 2 + 0.3
    ys, xs = torch.meshgrid(
        torch.arange(32, device="cuda") + 0.5, torch.arange(32, device="cuda") + 0.5, indexing="ij"
    )
    ana = o * torch.exp(-0.5 * ((xs - 16) ** 2 + (ys - 16) ** 2) / var)
    ana = torch.where(ana < 1 / 255, torch.zeros_like(ana), ana)
    assert torch.allclose(out.alpha[0, 0], ana, atol=1e-4)


def test_rgb_only_mode_gives_the_same_colours_alpha_and_gradients():
    """depth=False (stage 1's steps: gsplat "RGB") vs the default "RGB+ED": same rgb, alpha and
    gradients of every parameter and of means2d; only the depth is dropped."""
    from gs_renderer import render

    m = _scene(sh_degree=0)
    cams = _cams(64)
    bg = torch.tensor([1.0, 1.0, 1.0], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(2)
    wr = torch.rand(4, 3, 64, 64, device="cuda", generator=gen)
    wa = torch.rand(4, 1, 64, 64, device="cuda", generator=gen)
    res = {}
    for depth in (True, False):
        for t in m.parameters().values():
            t.grad = None
        out = render(m, cams, bg, backend="gsplat", need_means2d=True, depth=depth)
        ((out.rgb * wr).sum() + (out.alpha * wa).sum()).backward()
        grads = {k: t.grad.clone() for k, t in m.parameters().items() if t.grad is not None}
        res[depth] = (out.rgb.detach(), out.alpha.detach(), out.depth, out.means2d.grad.clone(), grads)
    (r1, a1, d1, m1, g1), (r0, a0, d0, m0, g0) = res[True], res[False]
    assert d1 is not None and d0 is None
    assert torch.allclose(r0, r1, atol=1e-6, rtol=0) and torch.allclose(a0, a1, atol=1e-6, rtol=0)
    assert torch.allclose(m0, m1, atol=1e-6, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) >= 4
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-5), k
