"""The method around the refine step: what each stage hands the refine call, and its losses (issue 21).

The oracle end-to-end tests cannot see diffusion settings (an exact teacher returns the truth
whatever t, eta or CFG). Here a spy wraps :func:`guidance.sir_step.refine` as the SIR loop calls it
and records eta, CFG, (t1, t2), grid size, the init flag and the cameras of every call, in short
runs of both stages on ``configs/image.yaml`` (the paper's values, only sizes shrunk) with the toy
sphere denoiser. The plans are checked against the paper's schedules written out by hand, the
reference camera against the camera convention, and both stages' losses against hand-written
formulas on fixed tensors (sum-reduced L1 in stage 1, mean MSE in stage 2, reference terms, LRs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.sir as sir_module
import pipeline.stage1 as stage1_module
import pipeline.stage2 as stage2_module
from core.cameras import orbit_cameras
from core.types import RenderOutput
from gs_renderer import GaussianModel
from mesh_renderer import Mesh, save_mesh
from pipeline import load_config, run_stage1, run_stage2
from pipeline.gaussians import GaussianRepresentation
from pipeline.plans import stage1_plan, stage2_plan
from pipeline.setup import setup_stage
from pipeline.stage1 import gaussian_settings
from pipeline.texture import TextureRepresentation
from testing.toy_denoiser import SphereDenoiser, registered, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

# The paper's stage-1 schedule (docs/method.md#timesteps): t2 over the 20 iterations, and
# t1 = inverse_grid[int(t2/1000 * 20 * 0.6)] on the grid 1, 51, ..., 951.
PAPER_T2 = [
    801,
    751,
    701,
    701,
    651,
    651,
    601,
    551,
    551,
    501,
    451,
    451,
    401,
    401,
    351,
    301,
    301,
    251,
    251,
    201,
]
T1_OF = {801: 451, 751: 451, 701: 401, 651: 351, 601: 351, 551: 301, 501: 301, 451: 251, 401: 201, 351: 201}
T1_OF |= {301: 151, 251: 151, 201: 101}


def _cfg(*overrides: str, config: str = "configs/image.yaml"):
    return load_config(["--config", str(ROOT / config), "guidance=toy_sphere", "device=cpu", *overrides])


@pytest.fixture
def toy():
    with registered(toy_spec()):
        yield


class RefineSpy:
    """Records the arguments of every refine call made by the SIR loop, then calls the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict] = []
        self.real = sir_module.refine
        monkeypatch.setattr(sir_module, "refine", self)

    def __call__(self, denoiser, x, cams, **kw):
        self.calls.append(
            dict(
                kw,
                views=len(cams),
                size=tuple(x.shape[-2:]),
                elevation=cams.elevation.tolist(),
                azimuth=cams.azimuth.tolist(),
            )
        )
        return self.real(denoiser, x, cams, **kw)


# ----------------------------------------------------------------------------------------- plans
def test_stage1_plan_is_the_papers(toy):
    cfg = _cfg()
    plan = stage1_plan(cfg, SphereDenoiser(8))
    assert [t2 for _, t2 in plan.t_pairs] == PAPER_T2
    assert [t1 for t1, _ in plan.t_pairs] == [T1_OF[t] for t in PAPER_T2]
    assert plan.steps == [15] * 20 and plan.init_steps == 15
    assert (plan.eta, plan.cfg, plan.grid_steps) == (0.5, 3.0, 20)
    assert (plan.views, plan.render_size, plan.resize_mode) == (6, 256, "bicubic")
    assert (plan.min_ver, plan.max_ver, plan.radius, plan.even_view) == (-30, 30, 2.0, True)
    assert plan.fovy == pytest.approx(49.1)


def test_stage2_plan_is_the_papers(toy):
    plan = stage2_plan(_cfg(), SphereDenoiser(8))
    assert plan.t_pairs == [(181, 181)] * 3 and plan.steps == [15] * 3 and plan.init_steps == 0
    assert (plan.eta, plan.cfg, plan.grid_steps) == (0.0, 2.0, 50)
    assert (plan.views, plan.render_size, plan.resize_mode) == (8, 512, "bilinear")


def test_imagedream_plan(toy):
    plan = stage1_plan(_cfg(config="configs/imagedream.yaml"), SphereDenoiser(8))
    # 10-point grid 901..1: t2 = 801, then 701 x7, 601 x8, 501 x7, 401 x7 (spec 1.7); inv_ratio 1.
    assert [t2 for _, t2 in plan.t_pairs] == [801] + [701] * 7 + [601] * 8 + [501] * 7 + [401] * 7
    assert all(t1 == t2 for t1, t2 in plan.t_pairs)
    assert (plan.eta, plan.cfg, plan.views, plan.init_steps) == (1.0, 2.0, 4, 50)


@pytest.mark.parametrize(
    ("config", "calls"), [("configs/imagedream.yaml", 208), ("configs/imagedream_paper.yaml", 285)]
)
def test_imagedream_network_calls(toy, config, calls):
    """ImageDream calls of stage 1: 208 with the paper's inv_ratio 1.0, 285 with the code's 0.6 (issue 21)."""
    from guidance.sir_step import plan_refine

    den = SphereDenoiser(8)
    plan = stage1_plan(_cfg(config=config), den)
    n = len(plan_refine(den.schedule, 0, 0, plan.grid_steps, from_noise=True).reverse)
    for t1, t2 in plan.t_pairs:
        p = plan_refine(den.schedule, t1, t2, plan.grid_steps)
        n += len(p.inversion) + len(p.reverse)
    assert n == calls


# ------------------------------------------------------------------------- what refine receives
def test_stage1_hands_refine_the_plan(toy, monkeypatch, tmp_path):
    spy = RefineSpy(monkeypatch)
    built, finished = [], []

    class Recording(GaussianRepresentation):
        def __init__(self, *a, **kw):
            built.append(kw)
            super().__init__(*a, **kw)

        def finish(self):
            finished.append(self.model.num_points)
            super().finish()

    monkeypatch.setattr(stage1_module, "GaussianRepresentation", Recording)
    cfg = _cfg(
        f"outdir={tmp_path}", "quiet=true", "elevation=-10", "gaussians.num_pts=64", "ref_size=16",
        "sir.render_size=16", "sir.iters=2", "sir.init_steps=1", "sir.steps_min=1", "sir.steps_max=1",
        "render.gs_backend=torch",
    )  # fmt: skip
    report = run_stage1(cfg, SphereDenoiser(16), export=False)
    assert report["optimiser_steps"] == 3
    init, *its = spy.calls
    assert init["from_noise"] is True and init["num_steps"] == 20
    # t2 for k = 0, 1 of 2 iterations: grid index int(k/2 * (16 - 3.999..) + 3.999..) = 3, 10
    # (6 + 3.9999999999999996 rounds to 10.0 in float64); t1 index int(t2/1000 * 12) = 9, 5.
    assert [(c["t1"], c["t2"]) for c in its] == [(451, 801), (251, 451)]
    for c in spy.calls:
        assert (c["eta"], c["cfg_scale"], c["num_steps"], c["views"]) == (0.5, 3.0, 20, 6)
        # ref elevation -10: offsets in [max(min(-30, -20), -70), min(max(30, 40), 90)) = [-30, 40).
        assert all(-40 <= e < 30 and e == int(e) for e in c["elevation"])
        assert len(set(c["elevation"])) > 1  # drawn per view
        az = np.array(c["azimuth"])
        assert np.all(np.diff(az) == 60) and -180 <= az[0] < -120
    assert [c["from_noise"] for c in its] == [False, False]
    assert built[0]["bg"] == (1.0, 1.0, 1.0)  # white background (spec 1.6)
    assert finished == [64]  # the final prune runs once, after training


def _cube(tex: int = 4) -> Mesh:
    """Unit cube, each face mapped to the whole [tex,tex] texture (colours vary across a face)."""
    verts, faces, uvs = [], [], []
    for axis, sign in [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]:
        a, b = [i for i in range(3) if i != axis]
        base = len(verts)
        for s, t in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
            p = [0.0, 0.0, 0.0]
            p[axis], p[a], p[b] = 0.5 * sign, 0.5 * s, 0.5 * t
            verts.append(p)
            uvs.append([(s + 1) / 2, (t + 1) / 2])
        n = torch.linalg.cross(torch.eye(3)[a], torch.eye(3)[b])[axis] * sign
        faces += [[base + i for i in (tri if n > 0 else tri[::-1])] for tri in ([0, 1, 2], [0, 2, 3])]
    g = torch.Generator().manual_seed(0)
    albedo = torch.rand(tex, tex, 3, generator=g) * 0.8 + 0.1
    return Mesh(v=torch.tensor(verts), f=torch.tensor(faces), vt=torch.tensor(uvs), albedo=albedo)


def test_stage2_hands_refine_the_plan(toy, monkeypatch, tmp_path):
    spy = RefineSpy(monkeypatch)
    built = []

    class Recording(TextureRepresentation):
        def __init__(self, *a, **kw):
            built.append(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(stage2_module, "TextureRepresentation", Recording)
    mesh = save_mesh(_cube(), tmp_path / "cube.glb")
    cfg = _cfg(
        f"outdir={tmp_path}", "quiet=true", f"mesh={mesh}", "ref_size=16", "refine.render_size=16",
        "refine.iters=2", "refine.steps=1", "render.mesh_backend=torch",
    )  # fmt: skip
    report = run_stage2(cfg, SphereDenoiser(16))
    assert report["optimiser_steps"] == 2 and len(spy.calls) == 2
    for c in spy.calls:
        assert (c["t1"], c["t2"], c["eta"], c["cfg_scale"], c["num_steps"]) == (181, 181, 0.0, 2.0, 50)
        assert c["from_noise"] is False and c["views"] == 8
        assert all(-30 <= e < 30 and e == int(e) for e in c["elevation"]) and len(set(c["elevation"])) > 1
        az = np.array(c["azimuth"])
        assert np.all(np.diff(az) == 45) and -180 <= az[0] < -135
    (kw,) = built
    # the authors' random supersampling, clip(2U, 0.125, 2), is the default
    assert kw["lr"] == 0.2 and kw["ref_weight"] == 1.0 and kw["ssaa"] == (0.125, 2.0)
    assert kw["bg"] == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- reference camera
@pytest.mark.parametrize(
    ("config", "elevation", "campos"),
    [
        ("configs/image.yaml", 0.0, [0.0, 0.0, 2.0]),  # azimuth 0 on +z
        ("configs/image.yaml", -30.0, [0.0, 1.0, 3**0.5]),  # negative elevation = from above
        ("configs/imagedream.yaml", 0.0, [2.5, 0.0, 0.0]),  # ImageDream: azimuth 90 on +x, radius 2.5
    ],
)
def test_reference_camera(toy, config, elevation, campos):
    cfg = _cfg(f"elevation={elevation}", "ref_size=16", config=config)
    st = setup_stage(cfg, SphereDenoiser(16), None)
    assert len(st.ref_cam) == 1 and st.ref_cam.height == 16
    torch.testing.assert_close(st.ref_cam.campos()[0], torch.tensor(campos), atol=1e-5, rtol=0)
    # The camera looks at the origin: its -z axis points from campos to the centre.
    fwd = -st.ref_cam.c2w[0, :3, 2]
    torch.testing.assert_close(fwd, -torch.tensor(campos) / torch.tensor(campos).norm(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- stage-1 loss
def _tiny_gaussians(n: int = 5) -> GaussianModel:
    g = torch.Generator().manual_seed(1)
    return GaussianModel(
        means=torch.rand(n, 3, generator=g) - 0.5,
        scales=torch.full((n, 3), -3.0),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        opacities=torch.zeros(n),
        sh0=torch.zeros(n, 1, 3),
    )


def test_stage1_loss_is_the_papers(toy):
    """``L1_sum(views, targets)/V + 0.3 L1_sum(ref rgb) + 0.01 MSE_sum(ref alpha)`` on the batched ref row."""
    g = torch.Generator().manual_seed(2)
    V, S = 3, 8
    ref_rgb, ref_mask = torch.rand(3, S, S, generator=g), (torch.rand(1, S, S, generator=g) > 0.5).float()
    ref_cam = orbit_cameras(0.0, 0.0, height=S)
    default = gaussian_settings(_cfg())
    paper = replace(default, bg_alpha_loss=0.0, fg_alpha_loss=0.0)
    rep = GaussianRepresentation(_tiny_gaussians(), paper, ref_rgb, ref_mask, ref_cam)
    cams = orbit_cameras([0.0] * V, [0.0, 120.0, 240.0], height=S)
    rep.begin_iteration(cams)
    out = RenderOutput(
        rgb=torch.rand(V + 1, 3, S, S, generator=g), alpha=torch.rand(V + 1, 1, S, S, generator=g)
    )
    target = torch.rand(V, 3, S, S, generator=g)
    target[:, :, :3] = 0.99  # some background rows (every channel within bg_threshold of white)
    want = (
        (out.rgb[:V] - target).abs().sum() / V
        + 0.3 * (out.rgb[V] - ref_rgb).abs().sum()
        + 0.01 * ((out.alpha[V] - ref_mask) ** 2).sum()
    )
    torch.testing.assert_close(rep.loss(out, target), want)
    # The defaults add alpha on background pixels and (1 - alpha) on inner object pixels, each / V.
    rep = GaussianRepresentation(_tiny_gaussians(), default, ref_rgb, ref_mask, ref_cam)
    rep.begin_iteration(cams)
    bg = torch.zeros(V, 1, S, S)
    bg[:, :, :3] = 1.0
    a = out.alpha[:V]
    fg = torch.zeros(V, 1, S, S)
    fg[:, :, 4:] = 1.0  # object pixels whose 3x3 neighbourhood is all object (row 3 touches background)
    extra = default.bg_alpha_loss * (a * bg).sum() / V + default.fg_alpha_loss * ((1 - a) * fg).sum() / V
    assert default.bg_alpha_loss == 1.0 and default.fg_alpha_loss == 1.0
    torch.testing.assert_close(rep.loss(out, target), want + extra)


# ----------------------------------------------------------------------------------- stage-2 loss
def _texture_rep(ref_weight: float, **kw) -> tuple[TextureRepresentation, torch.Tensor]:
    S = 16
    ref_rgb = torch.rand(3, S, S, generator=torch.Generator().manual_seed(3))
    cfg = _cfg()
    rep = TextureRepresentation(
        _cube(),
        ref_rgb,
        orbit_cameras(20.0, 30.0, height=S),
        lr=cfg.refine.texture_lr,
        ref_weight=ref_weight,
        backend="torch",
        **kw,
    )
    rep.begin_iteration(orbit_cameras([10.0, -20.0], [45.0, 200.0], height=S))
    return rep, ref_rgb


def test_stage2_loss_lr_and_reference_term(toy):
    """Mean MSE to the targets + ref_weight x masked mean MSE at the reference view; Adam at lr 0.2."""
    rep, ref_rgb = _texture_rep(ref_weight=_cfg().refine.ref_loss)
    out = rep.render(None)
    target = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(4))
    ref = TextureRepresentation(_cube(), ref_rgb, orbit_cameras(20.0, 30.0, height=16), ref_weight=0.0)
    ref.begin_iteration(orbit_cameras(20.0, 30.0, height=16))
    ref_out = ref.render(None)
    mask = ((ref.raster.alpha > 0) & (ref.raster.viewcos > 0.5)).float()
    assert 20 < mask.sum() < mask.numel()  # the reference term sees part of the cube
    want_views = ((out.rgb - target) ** 2).mean()
    want_ref = ((ref_out.rgb * mask - ref_rgb[None] * mask) ** 2).mean()
    loss = rep.loss(out, target)
    torch.testing.assert_close(loss, want_views + 1.0 * want_ref)
    # Adam's first step moves every texel with a gradient by the learning rate (|update| = lr).
    raw0 = rep.raw.detach().clone()
    rep.step(loss, out)
    moved = (rep.raw.detach() - raw0).abs()
    assert moved.max() == pytest.approx(0.2, rel=1e-3) and (moved > 0.19).sum() > 0


def test_stage2_paper_supersampling_draws_per_view_and_per_reference_render(toy):
    rng = np.random.default_rng(0)
    rep, _ = _texture_rep(ref_weight=1.0, ssaa=(0.125, 2.0), rng=rng)
    # One raster per view at ceil(16 * clip(2U, 0.125, 2) / 8) * 8 pixels, from the same draws.
    u = np.random.default_rng(0).random(2)
    sizes = [int(np.ceil(16 * min(2.0, max(0.125, 2 * x)) / 8) * 8) for x in u]
    assert [r.height for r in rep.raster] == sizes and sizes[0] != sizes[1]
    out = rep.render(orbit_cameras([0.0, 0.0], [0.0, 0.0], height=16))
    assert out.rgb.shape == (2, 3, 16, 16)
    state = rng.bit_generator.state
    rep.loss(out, out.rgb.detach())
    assert rng.bit_generator.state != state  # the reference render drew a fresh scale


# --------------------------------------------------------------------------------------- paper mode
def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


@pytest.mark.parametrize(
    ("paper", "base", "extra"),
    [
        ("configs/image_paper.yaml", "configs/image.yaml", {"sir.level_views": 0}),  # ImageDream's are 0
        ("configs/imagedream_paper.yaml", "configs/imagedream.yaml", {"sir.inv_ratio": 0.6}),
    ],
)
def test_paper_configs_differ_only_on_the_listed_points(toy, paper, base, extra):
    from omegaconf import OmegaConf

    p, b = (_flat(OmegaConf.to_container(_cfg(config=c))) for c in (paper, base))
    diff = {k: p[k] for k in p if p[k] != b.get(k)}
    # the defaults follow the authors everywhere else (measured: README "Paper mode"), except for
    # the geometry additions (README "geometry"): scale cap, screen-size prune, background- and
    # foreground-alpha losses and the coarse mesh's hidden-face drop (Stable Zero123: level views too)
    geometry = {
        "gaussians.init": "ball",
        "gaussians.max_scale": 0.0,
        "gaussians.max_screen_frac": 0.0,
        "sir.bg_alpha_loss": 0.0,
        "sir.fg_alpha_loss": 0.0,
        "export.visible_views": 0,
        "export.hull": [],
    }
    assert diff == {"export.remesh_size": 0.015, **geometry, **extra}


def test_isotropic_remesh_is_optional(monkeypatch):
    import sys

    from mesh_renderer.ops import isotropic_remesh

    m = _cube()
    v, f = isotropic_remesh(m.v, m.f, 0.2)
    if "pymeshlab" in sys.modules or _has_pymeshlab():
        assert len(f) > 12 and v.shape[1] == 3  # remeshed at edge 0.2: more, smaller triangles
    monkeypatch.setitem(sys.modules, "pymeshlab", None)  # import fails: the mesh comes back unchanged
    v2, f2 = isotropic_remesh(m.v, m.f, 0.2)
    assert torch.equal(v2, m.v.float()) and torch.equal(f2, m.f)


def _has_pymeshlab() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymeshlab") is not None
