"""Issue 15: stage 1 on unseen shapes: scale cap, screen-size prune, background-alpha loss,
calibrated iso-level, and the ghost case end to end (a long thin flat object with the oracle).

The ghost-case thresholds were measured (quoted beside them): the paper's settings (every new key
off) give a shell around the body and fail them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.cameras import orbit_cameras
from core.types import RenderOutput
from gs_renderer import GaussianModel
from gs_renderer.densify import Densifier
from gs_renderer.extract import carve_to_silhouettes, grid_marching_cubes, signed_distance
from pipeline.gaussians import GaussianRepresentation, GaussianSettings
from pipeline.isolevel import calibrated_level, silhouette_iou
from testing.oracle_tiny import oracle_tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _model(scales: list[float], opacity: float = 0.5) -> GaussianModel:
    n = len(scales)
    means = torch.zeros(n, 3)
    means[:, 0] = torch.linspace(-0.3, 0.3, n)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    log_s = torch.log(torch.tensor(scales))[:, None].repeat(1, 3)
    op = torch.logit(torch.full((n,), opacity))
    return GaussianModel(means, log_s, quats, op, torch.zeros(n, 1, 3), None, 0)


def _rep(model: GaussianModel, **kw) -> GaussianRepresentation:
    cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 16)
    s = GaussianSettings(backend="torch", ref_loss=0.0, ref_mask_loss=0.0, **kw)
    return GaussianRepresentation(model, s, torch.ones(3, 16, 16), torch.zeros(1, 16, 16), cam)


def test_gaussian_grown_past_cap_is_clamped_then_split():
    m = _model([0.01, 0.2])  # the second one has grown far past the cap
    rep = _rep(m, max_scale=0.05, density_end_iter=-1)
    loss = (m.scales.sum() + m.means.sum()) * 0.0 + m.opacities.sum()
    rep.step(loss, RenderOutput(rgb=torch.zeros(1, 3, 4, 4), alpha=torch.zeros(1, 1, 4, 4)))
    s = m.get_scales().detach()
    assert torch.allclose(s[1], torch.full((3,), 0.05), rtol=1e-5)  # clamped to the cap
    assert torch.allclose(s[0], torch.full((3,), 0.01), rtol=1e-3)  # below the cap: untouched
    d = Densifier(m, rep.optimizer)
    counts = d.densify_and_prune(grad_thresh=1e9, max_scale=0.05, min_opacity=0.0)
    assert counts["split"] == 1 and counts["cloned"] == 0 and m.num_points == 3
    assert float(m.get_scales().max()) == pytest.approx(0.05 / 1.6, rel=1e-4)
    # Off (0, the paper): no clamp, no forced split.
    m2 = _model([0.01, 0.2])
    assert Densifier(m2, None).densify_and_prune(grad_thresh=1e9, min_opacity=0.0)["split"] == 0


def test_screen_size_prune():
    m = _model([0.01, 0.01, 0.01])
    d = Densifier(m, None)
    d.max_radii2d = torch.tensor([2.0, 30.0, 5.0])
    d.image_height = 64.0
    counts = d.densify_and_prune(grad_thresh=1e9, min_opacity=0.0, max_screen_frac=0.15)  # 9.6 px
    assert counts["pruned"] == 1 and m.num_points == 2
    assert torch.allclose(m.means[:, 0].detach(), torch.tensor([-0.3, 0.3]))
    d.max_radii2d = torch.tensor([2.0, 30.0])
    d.image_height = 64.0
    assert d.densify_and_prune(grad_thresh=1e9, min_opacity=0.0)["pruned"] == 0  # 0 = off


def test_background_alpha_loss_pushes_ghost_opacity_down():
    m = _model([0.05])
    cams = orbit_cameras(0.0, 0.0, 2.0, 49.1, 16)
    rep = _rep(m, bg_alpha_loss=1.0)
    rep.begin_iteration(cams)
    out = rep.render(cams)
    target = torch.ones_like(out.rgb)  # the refined view is all background
    rep_off = _rep(m, bg_alpha_loss=0.0)
    rep_off.begin_iteration(cams)
    l_on, l_off = rep.loss(out, target), rep_off.loss(out, target)
    assert float(l_on - l_off) == pytest.approx(float(out.alpha.sum()), rel=1e-5)
    (g,) = torch.autograd.grad(l_on - l_off, m.opacities)
    assert float(g[0]) > 0  # descent lowers the ghost's opacity
    # A target that covers the Gaussian (not background) adds nothing.
    dark = torch.zeros_like(out.rgb)
    assert float(rep.loss(out, dark) - rep_off.loss(out, dark)) == 0.0


def test_foreground_alpha_loss_pushes_pale_object_opacity_up():
    m = _model([0.05], opacity=0.3)
    cams = orbit_cameras(0.0, 0.0, 2.0, 49.1, 16)
    rep, rep_off = _rep(m, fg_alpha_loss=1.0), _rep(m, fg_alpha_loss=0.0)
    for r in (rep, rep_off):
        r.begin_iteration(cams)
    out = rep.render(cams)
    pale = torch.full_like(out.rgb, 245 / 255)  # the refined view shows a pale object everywhere
    l_on, l_off = rep.loss(out, pale), rep_off.loss(out, pale)
    assert float(l_on - l_off) == pytest.approx(float((1 - out.alpha).sum()), rel=1e-5)
    (g,) = torch.autograd.grad(l_on - l_off, m.opacities)
    assert float(g[0]) < 0  # descent raises the pale Gaussian's opacity
    # Background (within bg_threshold of white) adds nothing.
    white = torch.full_like(out.rgb, 0.99)
    assert float(rep.loss(out, white) - rep_off.loss(out, white)) == 0.0


def _sphere_grid(res: int = 48) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A radial density 1 at the centre falling linearly to 0 at normalised radius 1."""
    ax = torch.linspace(-1, 1, res)
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    occ = (1.0 - torch.sqrt(x**2 + y**2 + z**2)).clamp_min(0)
    return occ, torch.zeros(3), 1.0


def test_calibrated_level_matches_the_true_silhouette():
    occ, c, s = _sphere_grid()
    cams = orbit_cameras(torch.tensor([0.0, -30.0]), torch.tensor([0.0, 90.0]), 3.0, 49.1, 48)
    # The truth: the level-0.6 surface, i.e. a sphere of radius 0.4.
    v, f = grid_marching_cubes(occ, c, s, 0.6)
    from mesh_renderer import Mesh
    from mesh_renderer.raster import rasterize

    alpha = rasterize(Mesh(v=v, f=f), cams, backend="torch").alpha
    level, scores = calibrated_level(occ, c, s, [0.2, 0.4, 0.6, 0.8], cams, alpha, backend="torch")
    assert level == 0.6 and scores[0.6] > 0.97
    assert scores[0.2] < scores[0.4] < scores[0.6] and scores[0.8] < scores[0.6]
    assert math.isclose(float(v.norm(dim=1).mean()), 0.4, abs_tol=0.02)
    assert silhouette_iou(v[:0], f[:0], cams, alpha > 0.5, "torch") == 0.0


def test_carving_cuts_the_surface_to_the_views_silhouettes():
    from mesh_renderer import Mesh
    from mesh_renderer.bake import bake_cameras
    from mesh_renderer.raster import rasterize

    occ, c, s = _sphere_grid(64)  # the level-0.2 surface: a sphere of radius 0.8
    cams = bake_cameras(64, radius=3.0)  # 26 views all round

    def silhouettes(radius: float) -> torch.Tensor:
        v, f = grid_marching_cubes(occ, c, s, 1.0 - radius)  # a sphere of that radius
        return rasterize(Mesh(v=v, f=f), cams, backend="torch").alpha

    carved = carve_to_silhouettes(occ, c, s, 0.2, cams, silhouettes(0.5), 0.5)
    v, _ = grid_marching_cubes(carved, c, s, 0.2)
    r = v.norm(dim=1)
    assert float(r.max()) < 0.53 and float(r.mean()) == pytest.approx(0.5, abs=0.02)  # cut to the hull
    assert torch.equal(occ, _sphere_grid(64)[0])  # the input grid is not modified
    # Silhouettes wider than the surface change nothing; an empty view set changes nothing.
    wide = carve_to_silhouettes(occ, c, s, 0.2, cams, silhouettes(0.9), 0.5)
    v2, _ = grid_marching_cubes(wide, c, s, 0.2)
    assert float(v2.norm(dim=1).mean()) == pytest.approx(0.8, abs=0.01)
    # A point no view sees (projecting outside every image) is kept: views say nothing there.
    narrow = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 3.0, 5.0, 64)  # 5 degree field of view
    kept = carve_to_silhouettes(occ, c, s, 0.2, narrow, torch.ones(1, 1, 64, 64) * 0.0, 0.5)
    v3, _ = grid_marching_cubes(kept, c, s, 0.2)
    r3 = v3.norm(dim=1)
    # Only the narrow cone around the view axis is cut.
    assert float(r3.max()) > 0.79 and float(r3.min()) < 0.2
    # The export's guard: silhouettes that would remove most of the dense volume are not used.
    from pipeline.stage1 import _carve

    info: dict = {}
    assert _carve(occ, c, s, 0.2, cams, torch.zeros(26, 1, 64, 64), 0.5, info, "gaussians") is occ
    assert info["hull_kept_gaussians"] == 0.0
    assert (
        _carve(occ, c, s, 0.2, cams, silhouettes(0.5), 0.5, info, "gaussians") is occ
    )  # keeps (0.5 / 0.8)^3 = 24 %
    cut = _carve(occ, c, s, 0.2, cams, silhouettes(0.7), 0.5, info, "gaussians")
    want = carve_to_silhouettes(occ, c, s, 0.2, cams, silhouettes(0.7), 0.5)
    assert torch.equal(cut, want) and 0.6 < info["hull_kept_gaussians"] < 0.75  # (0.7 / 0.8)^3 = 67 %


def test_signed_distance_is_half_a_pixel_either_side_of_the_edge():
    m = torch.zeros(2, 1, 4, 8, dtype=torch.bool)
    m[0, :, :, :3] = True  # columns 0-2 object: the edge is the border between columns 2 and 3
    sd = signed_distance(m)
    assert sd[0, 0, 1].tolist() == [2.5, 1.5, 0.5, -0.5, -1.5, -2.5, -3.5, -4.5]
    assert bool((sd[1] == -12).all())  # an empty view: everything outside by more than the image
    assert bool((signed_distance(~m[1:])[0] == 12).all())


def test_ramp_carving_puts_a_thin_band_exactly_on_its_silhouette():
    """A 6-pixel band seen by one view on a coarse grid (a voxel ~2.5 px): the alpha cut comes out
    over a pixel fat, the signed-distance cut (``ramp``) within a fraction of a pixel."""
    from mesh_renderer import Mesh
    from mesh_renderer.raster import rasterize

    occ, c, s = _sphere_grid(32)
    # A dense slab a bit thicker than the band (|y| < 0.1, the band is |y| < 0.064 at the centre)
    # and just under the level outside (a Gaussian tail): the cut must also cap the voxels next to
    # the surface, or marching cubes interpolates the crossing towards their uncut 0.19.
    y = torch.linspace(-1, 1, 32)[None, :, None].expand_as(occ)
    occ = torch.where((y.abs() < 0.1) & (occ > 0.2), torch.ones_like(occ), torch.full_like(occ, 0.19))
    cam = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 3.0, 49.1, 128)
    band = torch.zeros(1, 1, 128, 128)
    band[..., 61:67, :] = 1.0  # rows 61-66: 6 pixels
    thick = {}
    for ramp in (0.0, 1.0):
        carved = carve_to_silhouettes(occ, c, s, 0.2, cam, band, 0.5, ramp=ramp)
        v, f = grid_marching_cubes(carved, c, s, 0.2)
        cover = rasterize(Mesh(v=v, f=f), cam, backend="torch").alpha[0, 0] > 0.5
        thick[ramp] = float(cover[:, 54:74].sum(0).float().mean())  # columns near the centre
    assert thick[1.0] == pytest.approx(6.0, abs=0.3), thick
    assert thick[0.0] > 7.0, thick


# ---------------------------------------------------------------------------------- ghost case
GHOST_OVERRIDES = ["sir.iters=6", "export.grid_resolution=48", "gaussians.num_pts=1500"]
#: Issue 15's settings (image.yaml keeps the paper's until the full-size GPU run decides).
GEOMETRY_KEYS = [
    "gaussians.max_scale=0.02",
    "gaussians.max_screen_frac=0.15",
    "sir.bg_alpha_loss=1.0",
    "export.iso_levels=[0.05,0.1,0.15,0.2]",
]
PAPER_KEYS = [
    "gaussians.max_scale=0",
    "gaussians.max_screen_frac=0",
    "sir.bg_alpha_loss=0",
    "export.iso_levels=[]",
]


def _ghost_iou(
    tmp_path: Path, extra: list[str], name: str = "lizard", small: tuple[str, ...] = tuple(GHOST_OVERRIDES)
) -> dict[str, float]:
    """Stage 1 on a procedural stress object with the oracle (small); silhouette IoU of its mesh."""
    from bench.stress_meshes import write_stress_set
    from guidance import load_denoiser
    from mesh_renderer import load_mesh, render
    from pipeline import load_config, run_stage1

    (obj,) = write_stress_set(tmp_path / "meshes", [name])
    cfg = load_config(
        [
            "--config",
            str(ROOT / "configs" / "oracle_cpu.yaml"),
            f"oracle.mesh={obj}",
            f"outdir={tmp_path / 'out'}",
            "quiet=true",
            *small,
            *extra,
        ]
    )
    oracle = load_denoiser(cfg, torch.device("cpu"))
    r1 = run_stage1(cfg, oracle)
    mesh = load_mesh(r1["outputs"]["mesh"])
    az = torch.arange(8) * 45.0
    out = {}
    for name, elev in (("e0", 0.0), ("e30", -30.0)):
        cams = orbit_cameras(torch.full_like(az, elev), az, 2.0, 49.1, 96)
        a = render(mesh, cams, torch.ones(3), backend="torch").alpha > 0.5
        b = oracle.render(cams, 96)[1] > 0.5
        out[name] = float((a & b).sum() / (a | b).sum())
    return out


@pytest.mark.slow
def test_ghost_case_thin_flat_object_has_no_shell(tmp_path):
    iou = _ghost_iou(tmp_path, GEOMETRY_KEYS)
    # Measured: e0 0.594, e30 0.567 (max_scale 0.015: 0.679, 0.622); the paper's settings (PAPER_KEYS): e0 0.214, e30 0.292
    # (a ball-shaped shell of transparent Gaussians around the body's middle).
    assert iou["e0"] >= 0.55 and iou["e30"] >= 0.5, iou


@pytest.mark.slow
def test_pale_object_is_opaque_and_whole(tmp_path):
    # The almost-white vase (96 % white on the white background; bench/stress_meshes.py) at
    # oracle_cpu.yaml's sizes with the defaults' losses: half-transparent pale Gaussians match it as
    # well as an opaque surface, and marching cubes then leaves holes, unless the foreground-alpha
    # loss reads the refined views' object pixels as a mask.
    # Measured: e0 0.749, e30 0.740; sir.fg_alpha_loss=0: e0 0.224, e30 0.310.
    iou = _ghost_iou(tmp_path, ["export.iso_levels=[]"], "white_vase", small=())
    assert iou["e0"] >= 0.6 and iou["e30"] >= 0.6, iou


def test_silhouette_init_starts_on_every_part_the_input_shows():
    cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:44, 8:20] = 1.0  # a big part left of centre
    mask[:, 50:54, 56:60] = 1.0  # a small one near the image corner, outside the ball of radius 0.5
    m = GaussianModel.init_silhouette(4000, 0.5, 0.87, cam, mask, seed=1)
    means = m.means.detach()
    assert m.num_points == 4000 and float(means.norm(dim=1).max()) <= 0.87
    K, w2c = cam.Ks()[0], cam.viewmats()[0]
    pc = means @ w2c[:3, :3].T + w2c[:3, 3]
    u = (K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]).floor().long()
    v = (K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]).floor().long()
    assert bool((mask[0, v, u] > 0).all())  # every point projects onto the mask
    small = (u >= 56) & (v >= 50)
    assert int(small.sum()) >= 10  # the small far part has Gaussians
    assert float(means[small].norm(dim=1).min()) > 0.5  # where the paper's ball has none
    out = means.norm(dim=1) > 0.5  # beyond the paper's ball: only on rays that miss it
    eye = cam.campos()[0]
    ray = torch.nn.functional.normalize(means[out] - eye, dim=-1)
    assert bool((torch.linalg.cross(eye.expand_as(ray), ray).norm(dim=-1) > 0.5).all())
    again = GaussianModel.init_silhouette(4000, 0.5, 0.87, cam, mask, seed=1)
    assert torch.equal(again.means, m.means)  # seeded
    # No mask: the paper's ball.
    ball = GaussianModel.init_silhouette(100, 0.5, 0.87, cam, torch.zeros(1, 64, 64), seed=1)
    assert ball.num_points == 100 and float(ball.means.detach().norm(dim=1).max()) <= 0.5


def _opaque_ball() -> GaussianModel:
    """3000 opaque Gaussians (scale 0.03) filling a ball of radius 0.35 (surface ~0.4), seeded."""
    g = torch.Generator().manual_seed(0)
    n = 3000
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * (0.35 * torch.rand(n, 1, generator=g).pow(1 / 3))
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return GaussianModel(
        means, torch.full((n, 3), math.log(0.03)), quats, torch.full((n,), 4.0), torch.zeros(n, 1, 3), None, 0
    )


NO_REF_LOSS = ("sir.ref_loss=0", "sir.ref_mask_loss=0")  # ImageDream's stage 1: the input view is not fitted


@pytest.mark.parametrize(
    "hull, extra, cut", [([], (), False), (["input"], (), True), (["input"], NO_REF_LOSS, False)]
)
def test_export_cuts_the_coarse_mesh_by_the_input_mask(tmp_path, hull, extra, cut):
    """A ball of opaque Gaussians (radius ~0.4) whose input mask shows a disk of radius 0.3: with
    ``export.hull=[input]`` the coarse mesh fits inside the mask's cone, without it keeps the ball.
    Without a reference-view loss (ImageDream) nothing ties the Gaussians to the input view's pose
    and scale, so its mask does not cut them."""
    from core.outputs import OutputSet
    from core.timing import PhaseTimer
    from mesh_renderer import load_mesh
    from mesh_renderer.raster import rasterize
    from pipeline import load_config
    from pipeline.stage1 import export_coarse_mesh

    cfg = load_config(
        [
            "--config",
            str(ROOT / "configs" / "oracle_cpu.yaml"),
            f"outdir={tmp_path}",
            "save_path=ball",
            "quiet=true",
            f"export.hull=[{','.join(hull)}]",
            "export.visible_views=0",
            "export.grid_resolution=48",
            *extra,
        ]
    )
    model = _opaque_ball()
    ref_cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 64)
    disk = torch.zeros(1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    f = ref_cam.focal
    disk[0][(xx - 32) ** 2 + (yy - 32) ** 2 < (0.3 * f / 2.0) ** 2] = 1.0  # radius 0.3 at depth 2
    outputs: dict = {}
    with OutputSet(tmp_path, "ball", "_report.json") as out:
        info = export_coarse_mesh(
            cfg, model, PhaseTimer(), torch.device("cpu"), outputs, out, (ref_cam, disk)
        )
        out.commit(lambda p: p.write_text("{}"))
    mesh = load_mesh(outputs["mesh"])
    cover = rasterize(mesh, ref_cam, backend="torch").alpha[0, 0] > 0.5
    outside = int((cover & (disk[0] == 0)).sum())
    if cut:
        assert 0.5 < info["hull_kept_input"] < 0.95 and outside <= 8, (info, outside)
    else:
        assert "hull_kept_input" not in info and outside > 100, outside


def _init_cfg(*extra: str):
    from pipeline import load_config

    return load_config(
        ["--config", str(ROOT / "configs" / "oracle_cpu.yaml"), "gaussians.num_pts=500", *extra]
    )


def test_initial_gaussians_use_the_input_mask_only_when_stage1_fits_the_input_view():
    from pipeline.stage1 import initial_gaussians

    cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 24:40, 4:12] = 1.0  # a part left of the ball: the silhouette init puts points there
    cpu = torch.device("cpu")
    sil = initial_gaussians(_init_cfg(), cam, mask, cpu).means.detach()
    assert float(sil.norm(dim=1).max()) > 0.5 and float(sil[:, 0].max()) < 0.0
    ball = GaussianModel.init_ball(500, 0.5, seed=0).means.detach()
    # No reference loss (ImageDream): the input view's pose and scale are not the Gaussians', the ball.
    assert torch.equal(initial_gaussians(_init_cfg(*NO_REF_LOSS), cam, mask, cpu).means.detach(), ball)
    assert torch.equal(initial_gaussians(_init_cfg(), None, None, cpu).means.detach(), ball)  # text
    assert torch.equal(
        initial_gaussians(_init_cfg("gaussians.init=ball"), cam, mask, cpu).means.detach(), ball
    )


def test_carving_follows_the_cameras_axes_and_grid_layout():
    """An off-centre box's silhouettes cut a big sphere's density down to about the box: any swap of
    the grid's axes or flip of the image's would move the surface elsewhere (a non-square view too)."""
    import itertools

    from mesh_renderer import Mesh
    from mesh_renderer.bake import bake_cameras
    from mesh_renderer.raster import rasterize

    occ, c, s = _sphere_grid(64)
    lo, hi = torch.tensor([0.1, 0.2, -0.3]), torch.tensor([0.5, 0.6, 0.1])
    v = lo + torch.tensor(list(itertools.product([0, 1], repeat=3))).float() * (hi - lo)
    f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1]]
    f += [[2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    box = Mesh(v=v, f=torch.tensor(f))
    cams = bake_cameras(64, radius=3.0)
    carved = carve_to_silhouettes(occ, c, s, 0.2, cams, rasterize(box, cams, backend="torch").alpha, 0.5)
    vc, _ = grid_marching_cubes(carved, c, s, 0.2)
    torch.testing.assert_close(vc.amin(0), lo, atol=0.02, rtol=0)
    torch.testing.assert_close(vc.amax(0), hi, atol=0.04, rtol=0)  # the 26-view hull is a bit wider
    # One coarse non-square view (24 x 16 px), mask edges at column 14 and row 6: at depth 2 the cut
    # lies at x = y = 2 / focal * 2 (bilinear alpha 0.5 between the pixel centres 13.5 and 14.5;
    # half a pixel is 0.057 here).
    cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 16, 24)
    a = torch.zeros(1, 1, 16, 24)
    a[..., 6:, :14] = 1.0
    small = (occ - 0.5).clamp_min(0) * 2  # a sphere of radius 0.4 (world), inside the view
    vs, _ = grid_marching_cubes(carve_to_silhouettes(small, c, s, 0.2, cam, a, 0.5), c, s, 0.2)
    mid = vs[vs[:, 2].abs() < 0.02]
    want = 2 / cam.focal * 2
    assert float(mid[:, 0].max()) == pytest.approx(want, abs=0.01)  # measured 0.2302 for 0.2284
    assert float(mid[:, 1].max()) == pytest.approx(want, abs=0.01)


def test_hull_guard_on_an_empty_density_says_nothing(caplog):
    from pipeline.stage1 import _carve

    occ = torch.zeros(16, 16, 16)
    cams = orbit_cameras(0.0, 0.0, 2.0, 49.1, 16)
    info: dict = {}
    with caplog.at_level("WARNING"):
        assert torch.equal(
            _carve(occ, torch.zeros(3), 1.0, 0.2, cams, torch.zeros(1, 1, 16, 16), 0.5, info, "input"), occ
        )
    assert info["hull_kept_input"] == 1.0 and "silhouettes" not in caplog.text  # nothing to cut


def test_silhouette_init_depends_on_the_pose_not_its_device_rounding(caplog):
    from dataclasses import replace

    cam = orbit_cameras(0.0, 0.0, 2.0, 49.1, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:44, 8:20] = 1.0
    a = GaussianModel.init_silhouette(500, 0.5, 0.87, cam, mask, seed=3)
    # The points come from (elevation, azimuth, radius) alone, rebuilt on the CPU: a c2w that differs
    # (a GPU's rounding of the same pose; here exaggerated) gives the same init.
    nudged = replace(cam, c2w=cam.c2w + 1e-2)
    b = GaussianModel.init_silhouette(500, 0.5, 0.87, nudged, mask, seed=3)
    assert torch.equal(a.means, b.means)
    tiny = torch.zeros(1, 64, 64)
    tiny[:, 31:33, 31:33] = 1.0  # a 2x2 px mask: its cone holds fewer points than asked for
    with caplog.at_level("WARNING"):
        c = GaussianModel.init_silhouette(5000, 0.5, 0.87, cam, tiny, seed=3)
    assert 0 < c.num_points < 5000 and "initial Gaussians instead of 5000" in caplog.text


def test_export_cuts_by_the_last_refined_views_silhouettes(tmp_path):
    """``export.hull=[refined]``: the coarse mesh of a ball of Gaussians (radius ~0.4) fits the object
    masks of the refined views (photos on white) of the SIR iterations refined from little noise
    (``t2 <= export.hull_t_max * T``); a noisier iteration and the init pass (smaller disks) are not
    kept, and without ``refined`` nothing is cut."""
    from core.outputs import OutputSet
    from core.timing import PhaseTimer
    from mesh_renderer import load_mesh
    from mesh_renderer.raster import rasterize
    from pipeline import load_config
    from pipeline.hull_views import RefinedSilhouettes
    from pipeline.stage1 import export_coarse_mesh

    side = orbit_cameras([0.0, 0.0], [90.0, -90.0], 2.0, 49.1, 64)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")

    def photo(radius: float) -> torch.Tensor:
        """Two refined views [2,3,64,64]: a grey disk of ``radius`` (world units at depth 2) on white."""
        img = torch.ones(2, 3, 64, 64)
        img[:, :, (xx - 32) ** 2 + (yy - 32) ** 2 < (radius * side.focal / 2.0) ** 2] = 0.6
        return img

    def export(hull: str) -> tuple[dict, int]:
        cfg = load_config(
            [
                "--config",
                str(ROOT / "configs" / "oracle_cpu.yaml"),
                f"outdir={tmp_path / hull}",
                "save_path=ball",
                "quiet=true",
                f"export.hull=[{hull}]",
                "export.hull_t_max=0.5",
                "export.visible_views=0",
                "export.grid_resolution=48",
            ]
        )
        kept = RefinedSilhouettes(cfg.export.hull_t_max * 1000, cfg.sir.bg_threshold)
        kept.add(None, side, photo(0.1))  # the init pass: from pure noise
        kept.add(501, side, photo(0.1))  # refined from more noise than hull_t_max
        kept.add(500, side, photo(0.3))
        assert len(kept) == 2
        model = _opaque_ball()
        outputs: dict = {}
        with OutputSet(tmp_path / hull, "ball", "_report.json") as out:
            info = export_coarse_mesh(
                cfg, model, PhaseTimer(), torch.device("cpu"), outputs, out, None, None, kept
            )
            out.commit(lambda p: p.write_text("{}"))
        cover = rasterize(load_mesh(outputs["mesh"]), side, backend="torch").alpha[:, 0] > 0.5
        disk = (xx - 32) ** 2 + (yy - 32) ** 2 < (0.3 * side.focal / 2.0) ** 2
        return info, int((cover & ~disk).sum())

    info, outside = export("refined")
    assert 0.2 < info["hull_kept_refined"] < 0.8 and outside <= 16, (info, outside)
    info, outside = export("")
    assert "hull_kept_refined" not in info and outside > 200, outside


def test_signed_distance_equals_the_exact_transform_within_its_reach():
    """Against scipy's exact Euclidean distance transform on random blobs: equal wherever the exact
    distance is within the reach; farther, the right side at +-(H+W)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from gs_renderer.extract import SD_REACH

    g = torch.Generator().manual_seed(3)
    noise = torch.rand(3, 1, 5, 4, generator=g)
    m = torch.nn.functional.interpolate(noise, size=(60, 48), mode="bilinear") > 0.5
    sd = signed_distance(m)
    for v in range(3):
        mv = m[v, 0].numpy()
        exact = np.where(mv, distance_transform_edt(mv) - 0.5, 0.5 - distance_transform_edt(~mv))
        near = np.abs(exact) <= SD_REACH - 0.5
        assert near.sum() > 500 and (~near).sum() > 50
        np.testing.assert_allclose(sd[v, 0].numpy()[near], exact[near], atol=1e-5)
        assert bool((sd[v, 0].numpy()[~near] == np.sign(exact[~near]) * 108).all())


def test_stage1_hands_the_refined_hull_each_iteration_with_its_t2_and_none_for_the_init_pass(
    tmp_path, monkeypatch
):
    """run_sir reports every iteration's refined views: the init pass (from pure noise) as ``None``,
    the others with their ``t2`` in schedule order; only ``t2 <= hull_t_max * T`` are kept."""
    from guidance import load_denoiser
    from pipeline import load_config, run_stage1
    from pipeline.hull_views import RefinedSilhouettes

    seen: list = []
    real_add = RefinedSilhouettes.add

    def spy(self, t2, cams, target):
        seen.append((t2, len(cams), tuple(target.shape), cams.elevation.clone()))
        real_add(self, t2, cams, target)

    monkeypatch.setattr(RefinedSilhouettes, "add", spy)
    cfg = load_config(
        oracle_tiny_args(
            f"outdir={tmp_path}",
            "quiet=true",
            "export.hull=[input,refined]",
            "sir.level_views=1",
            "elevation=-5",
        )
    )
    r1 = run_stage1(cfg, load_denoiser(cfg, torch.device("cpu")))
    t2s = [t2 for t2, _, _, _ in seen]
    assert t2s[0] is None and len(t2s) == cfg.sir.iters + 1
    assert all(isinstance(t, int) for t in t2s[1:]) and t2s[1:] == sorted(t2s[1:], reverse=True)
    V, S = cfg.sir.views, cfg.sir.render_size
    assert all(v == V and shape == (V, 3, S, S) for _, v, shape, _ in seen)
    is_late = [t is not None and t <= cfg.export.hull_t_max * 1000 for t in t2s]
    assert 0 < sum(is_late) < len(t2s) - 1
    assert "hull_kept_refined" in r1["mesh"]
    # sir.level_views=1: the late iterations' first view looks from the input's elevation
    assert all(float(e[0]) == -5.0 for (_, _, _, e), late in zip(seen, is_late) if late)
    assert any(float(e[0]) != -5.0 for (_, _, _, e), late in zip(seen, is_late) if not late)


def test_level_views_move_spread_views_to_the_input_elevation_in_late_iterations_only():
    """``sir.level_views``: in the iterations whose refined views make the hull, k views spread
    around the orbit look from the input's elevation (a thin flat part seen edge-on from all
    around); the random draws stay those of the authors' sampling."""
    import dataclasses

    import numpy as np

    from pipeline.sir import SirPlan, sample_cameras

    base = SirPlan(
        views=6, render_size=8, t_pairs=[], steps=[], grid_steps=10, eta=0.0, cfg=1.0, ref_elevation=-10.0
    )
    plan = dataclasses.replace(base, level_views=2, late_t2_max=500)
    dev = torch.device("cpu")

    def cams(p, t2, seed=3):
        return sample_cameras(p, np.random.default_rng(seed), dev, t2)

    for seed in range(5):
        plain, late = cams(base, 400, seed), cams(plan, 400, seed)
        assert torch.equal(plain.azimuth, late.azimuth)
        assert torch.all(late.elevation[[0, 3]] == -10.0)  # views 0 and 3: opposite sides
        keep = [1, 2, 4, 5]
        assert torch.equal(plain.elevation[keep], late.elevation[keep])
        for t2 in (600, None):  # an earlier iteration, the init pass: the authors' sampling
            assert torch.equal(cams(plan, t2, seed).elevation, cams(base, t2, seed).elevation)
    assert (cams(base, 400, 0).elevation != -10.0).any()  # the check above can fail


def test_hull_defaults_per_model():
    """Stable Zero123 cuts by the input mask and the late refined views, on the edge distance, and
    levels three late views; ImageDream and text to 3D keep the input cut and the authors' view
    sampling (both measured with Zero123's schedule only); paper mode levels no view."""
    from pipeline import load_config

    cfgs, cat = ROOT / "configs", str(ROOT.parent / "shared" / "data" / "images" / "cat_rgba.png")
    z = load_config(["--config", str(cfgs / "image.yaml"), f"input={cat}"])
    assert (
        list(z.export.hull) == ["input", "refined"]
        and z.export.hull_ramp == 0.5
        and z.export.hull_t_max == 0.5
    )
    assert z.sir.level_views == 3
    for name in ("imagedream.yaml", "text.yaml", "image_paper.yaml"):
        e = load_config(
            ["--config", str(cfgs / name), "prompt=a cat", *([f"input={cat}"] * (name != "text.yaml"))]
        )
        assert e.sir.level_views == 0
        if name != "image_paper.yaml":
            assert list(e.export.hull) == ["input"] and e.export.hull_ramp == 0.0
