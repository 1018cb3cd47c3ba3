"""Stage 1: image -> 3D Gaussians by score-based iterative reconstruction -> coarse textured mesh.

Writes ``<outdir>/<save_path>_model.ply``, ``_mesh.<mesh_format>``, ``_preview.png`` and
``_report.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

import gs_renderer
import guidance
import mesh_renderer
from core.cameras import Cameras
from core.outputs import OutputSet
from core.timing import PhaseTimer
from gs_renderer import GaussianModel, save_ply
from gs_renderer import render as render_gaussians
from gs_renderer.extract import carve_to_silhouettes, density_grid, grid_marching_cubes
from mesh_renderer import Mesh, save_mesh
from mesh_renderer.bake import bake_cameras, bake_texture
from mesh_renderer.ops import clean_mesh, decimate, isotropic_remesh
from mesh_renderer.uv import prestart_workers, start_unwrap
from mesh_renderer.visibility import drop_hidden_faces
from pipeline.gaussians import GaussianRepresentation, GaussianSettings
from pipeline.hull_views import RefinedSilhouettes
from pipeline.isolevel import calibrated_level
from pipeline.plans import stage1_plan
from pipeline.prefetch import EXPORT_MODULES, prefetch
from pipeline.previews import write_previews
from pipeline.progress import progress
from pipeline.reports import STAGE1_REPORT, STAGE2_REPORT, peak_memory_gb, write_stage_report
from pipeline.setup import setup_stage
from pipeline.sir import run_sir

__all__ = ["export_coarse_mesh", "gaussian_settings", "renderer_preloads", "run_stage1", "stage1_with_model"]

log = logging.getLogger("microdreamer")
WHITE = (1.0, 1.0, 1.0)


def gaussian_settings(cfg: DictConfig) -> GaussianSettings:
    """The Gaussian representation's settings from the ``gaussians``/``sir``/``render`` sections."""
    g, s = cfg.gaussians, cfg.sir
    return GaussianSettings(
        position_lr_init=g.position_lr_init,
        position_lr_final=g.position_lr_final,
        position_lr_max_steps=g.position_lr_max_steps,
        spatial_lr_scale=g.spatial_lr_scale,
        feature_lr=g.feature_lr,
        opacity_lr=g.opacity_lr,
        scaling_lr=g.scaling_lr,
        rotation_lr=g.rotation_lr,
        percent_dense=g.percent_dense,
        density_start_iter=g.density_start_iter,
        density_end_iter=g.density_end_iter,
        densification_interval=g.densification_interval,
        densify_grad_threshold=g.densify_grad_threshold,
        min_opacity=g.min_opacity,
        extent=g.extent,
        densify_stats=g.densify_stats,
        lambda_target=s.lambda_target,
        ref_loss=s.ref_loss,
        ref_mask_loss=s.ref_mask_loss,
        backend=cfg.render.gs_backend,
        bg_alpha_loss=s.bg_alpha_loss,
        fg_alpha_loss=s.fg_alpha_loss,
        bg_threshold=s.bg_threshold,
        max_scale=g.max_scale,
        max_screen_frac=g.max_screen_frac,
    )


def input_view_fitted(cfg: DictConfig) -> bool:
    """Whether stage 1's loss fits the Gaussians to the input view (``sir.ref_loss`` or ``sir.ref_mask_loss`` > 0).

    Only then is the input mask a silhouette of the Gaussians: without those terms (ImageDream, whose
    cameras are absolute and whose input image has none) their pose and scale are the diffusion
    model's, so the mask neither seeds them (``gaussians.init``) nor cuts them (``export.hull``).
    """
    return cfg.sir.ref_loss > 0 or cfg.sir.ref_mask_loss > 0


def initial_gaussians(
    cfg: DictConfig, ref_cam: Cameras | None, ref_mask: torch.Tensor | None, device: torch.device
) -> GaussianModel:
    """Stage 1's starting Gaussians (``gaussians.init``; docs/method.md#gaussian-init); the ball without a fitted input view."""
    g = cfg.gaussians
    if g.init == "silhouette" and ref_cam is not None and ref_mask is not None and input_view_fitted(cfg):
        return GaussianModel.init_silhouette(
            g.num_pts,
            g.init_radius,
            g.init_silhouette_radius,
            ref_cam,
            ref_mask,
            cfg.seed,
            device,
            g.sh_degree,
        )
    return GaussianModel.init_ball(
        g.num_pts, radius=g.init_radius, sh_degree=g.sh_degree, seed=cfg.seed, device=device
    )


def run_stage1(cfg: DictConfig, denoiser: Any = None, export: bool = True) -> dict:
    """Run stage 1 for one input; returns the report dict (also written as JSON).

    ``denoiser``: a loaded model to reuse (else ``guidance.load_denoiser`` loads one).
    ``export=False`` skips the coarse mesh (benchmarks of the SIR loop on random weights).
    """
    return stage1_with_model(cfg, denoiser, export)[0]


def renderer_preloads(cfg: DictConfig, export: bool = True) -> list[Callable[[torch.device], object]]:
    """The kernel loads of stage 1's renderers (the Gaussians', and the meshes' when ``export``), for
    a model load's warm-up thread (:func:`pipeline.setup.setup_stage`)."""
    preload = [lambda d: gs_renderer.preload_kernels(cfg.render.gs_backend, d)]
    if export:
        preload.append(lambda d: mesh_renderer.preload_kernels(cfg.render.mesh_backend, d))
    return preload


def stage1_with_model(
    cfg: DictConfig,
    denoiser: Any = None,
    export: bool = True,
    during_unwrap: Callable[[Any], None] | None = None,
) -> tuple[dict, Any]:
    """:func:`run_stage1`, also returning the denoiser it used (loaded here when ``None``).

    ``during_unwrap(denoiser)``: GPU work to run while the coarse mesh's UV unwrap runs on the CPU
    (the one-command run warms stage 2's networks there), timed as the ``during_unwrap`` phase.
    """
    st = setup_stage(cfg, denoiser, guidance.load_denoiser, renderer_preloads(cfg, export))
    device, timer, denoiser = st.device, st.timer, st.denoiser
    with timer.phase("prepare"):
        model = initial_gaussians(cfg, st.ref_cam, st.ref_mask, device)
        rep = GaussianRepresentation(
            model, gaussian_settings(cfg), st.ref_rgb, st.ref_mask, st.ref_cam, bg=WHITE
        )
        plan = stage1_plan(cfg, denoiser)

    # The SIR loop keeps the GPU busy and the main thread waiting: import the export's modules now
    # (pure imports: no CUDA call from another thread while the loop captures CUDA graphs).
    imports = prefetch(EXPORT_MODULES) if device.type == "cuda" and export else None
    if export:
        prestart_workers(cfg.export.uv_workers or None)  # xatlas processes import during the loop
    hull = (
        RefinedSilhouettes(plan.late_t2_max, cfg.sir.bg_threshold)
        if export and "refined" in cfg.export.hull
        else None
    )
    with progress(len(plan.t_pairs) + (plan.init_steps > 0), "stage 1 (Gaussians)", cfg.quiet) as on_iter:
        stats = run_sir(
            rep,
            denoiser,
            plan,
            st.rng,
            st.noise,
            timer,
            device,
            on_iter,
            hull.add if hull is not None else None,
        )
    if imports is not None:
        imports.join()  # normally long done; the export then never imports alongside it

    outputs = {}
    # Stage 1's files appear together; its commit also retires the final set built on an older mesh.
    with OutputSet(cfg.outdir, cfg.save_path, STAGE1_REPORT, replaces=(STAGE2_REPORT,)) as out:
        with timer.phase("save_ply"):
            rep.finish()
            save_ply(model, out.path("_model.ply"))
            outputs["ply"] = str(out.final_path("_model.ply"))
        ref = (st.ref_cam, st.ref_mask) if st.ref_cam is not None else None
        during = (lambda: during_unwrap(denoiser)) if during_unwrap is not None else None
        mesh_info = (
            export_coarse_mesh(cfg, model, timer, device, outputs, out, ref, during, hull) if export else {}
        )
        with timer.phase("preview"):
            write_previews(
                cfg, "gaussians", model, cfg.render.gs_backend, outputs, "_preview.png", "_gaussians.mp4", out
            )
        report = stage1_report(cfg, st, timer, denoiser, stats, model, mesh_info, outputs)
        out.commit(lambda path: write_stage_report(cfg, path, report))
    return report, denoiser


def stage1_report(
    cfg: DictConfig,
    st: Any,
    timer: PhaseTimer,
    denoiser: Any,
    stats: Any,
    model: GaussianModel,
    mesh_info: dict,
    outputs: dict,
) -> dict:
    """The stage-1 figures: seconds per phase, NFE, optimiser steps, Gaussians, mesh size, memory."""
    device = st.device
    return {
        "stage": 1,
        "seed": cfg.seed,
        "device": str(device),
        "seconds": timer.seconds(),
        "started_unix": timer.started_unix,
        "nfe": denoiser.nfe - st.nfe0,
        "optimiser_steps": stats.optimiser_steps,
        "num_gaussians": int(model.num_points),
        "mesh": mesh_info,
        "peak_gpu_memory_gb": peak_memory_gb(device),
        "outputs": outputs,
    }


def export_coarse_mesh(
    cfg: DictConfig,
    model: GaussianModel,
    timer: PhaseTimer,
    device: torch.device,
    outputs: dict,
    out: OutputSet,
    ref: tuple | None = None,
    during_unwrap: Callable[[], None] | None = None,
    refined: RefinedSilhouettes | None = None,
) -> dict:
    """Marching cubes on the Gaussian density (cut by the Gaussians' silhouettes), clean, drop hidden faces, UV-unwrap, bake colour, save (docs/method.md#coarse-mesh, #texture-bake).

    Stages the mesh in ``out`` and adds its final path as ``outputs["mesh"]``; returns
    ``{"vertices", "faces"}`` (``{"faces": 0}`` and no file when the Gaussians have no surface above
    ``export.density_thresh``). With ``export.iso_levels`` the level is calibrated per object
    (:mod:`pipeline.isolevel`) and reported as ``iso_level``; with ``export.visible_views`` the count
    of hidden faces dropped is ``hidden_faces_dropped``; with ``export.hull`` the density is first cut
    by the input mask (when :func:`input_view_fitted`) and/or the bake views' Gaussian alpha, ``> export.hull_alpha``
    (:func:`gs_renderer.extract.carve_to_silhouettes`). ``ref = (ref_cam, ref_mask [1,H,W])``
    is the input view, the calibration's ground truth. ``during_unwrap()`` runs on the main thread
    while xatlas works (after the bake views are rendered). ``refined``: the late SIR iterations'
    refined-view silhouettes (``export.hull_t_max``), a cut too when ``export.hull`` has ``refined``.
    """
    ex = cfg.export
    info: dict = {}
    cams = bake_cameras(ex.bake_size, radius=cfg.cameras.radius, fovy=cfg.cameras.fovy, device=device)

    def render_bake_views():
        with timer.phase("bake_render"), torch.no_grad():
            return render_gaussians(
                model, cams, torch.tensor(WHITE, device=device), backend=cfg.render.gs_backend
            )

    # With the Gaussians' hull the bake views are rendered before the mesh exists (their alpha cuts
    # the density); otherwise while xatlas runs.
    views = render_bake_views() if "gaussians" in ex.hull else None
    with timer.phase("extract"):
        occ, center, scale = density_grid(model, ex.grid_resolution, fit_opacity=ex.grid_fit_opacity)
        level = float(ex.density_thresh)
        if ex.iso_levels:
            level, scores = _calibrate(cfg, model, occ, center, scale, device, ref)
            info["iso_level"] = level
            info["iso_scores"] = {f"{k:g}": round(s, 4) for k, s in scores.items()}
        if "input" in ex.hull and ref is not None and input_view_fitted(cfg):
            occ = _carve(
                occ, center, scale, level, ref[0], ref[1][None], ex.hull_alpha, info, "input", ex.hull_ramp
            )
        if refined is not None and len(refined) and "refined" in ex.hull:
            r_cams, r_masks = refined.views()
            occ = _carve(occ, center, scale, level, r_cams, r_masks, 0.5, info, "refined", ex.hull_ramp)
        if views is not None:
            occ = _carve(
                occ, center, scale, level, cams, views.alpha, ex.hull_alpha, info, "gaussians", ex.hull_ramp
            )
        v, f = grid_marching_cubes(occ, center, scale, level)
        v, f = clean_mesh(v, f, merge_ratio=ex.merge_ratio)
        if ex.remesh_size > 0:  # paper mode (needs pymeshlab)
            v, f = isotropic_remesh(v, f, ex.remesh_size, ex.remesh_iters)
        if len(f) > ex.max_faces:
            v, f = decimate(v, f, ex.max_faces)
        if ex.visible_views > 0 and len(f):
            n = len(f)
            v, f = drop_hidden_faces(
                v,
                f,
                ex.visible_views,
                ex.visible_size,
                cfg.cameras.radius,
                cfg.cameras.fovy,
                cfg.render.mesh_backend,
            )
            info["hidden_faces_dropped"] = n - len(f)
    if len(f) == 0:
        log.warning("the Gaussians have no surface above density %.3g: no mesh written", level)
        return {"faces": 0}
    mesh = Mesh(v=torch.as_tensor(v, dtype=torch.float32), f=torch.as_tensor(f, dtype=torch.int64))
    # xatlas runs in child processes while the GPU renders the bake views (no Python thread: this
    # one stays the only thread making torch calls, as ``during_unwrap`` may capture CUDA graphs).
    with timer.phase("uv_unwrap"):
        job = start_unwrap(
            mesh,
            max_faces=ex.uv_max_faces,
            tex_size=ex.texture_size,
            time_budget=ex.uv_time_budget,
            workers=ex.uv_workers or None,
        )
    try:
        if views is None:
            views = render_bake_views()
        if during_unwrap is not None:
            with timer.phase("during_unwrap"):
                during_unwrap()
        with timer.phase("uv_unwrap_wait"):
            mesh = job.result().to(device)
    finally:
        job.close()
    with timer.phase("bake"):
        mesh.albedo = bake_texture(
            mesh, cams, views.rgb, views.alpha, tex_size=ex.texture_size, backend=cfg.render.mesh_backend
        )
    with timer.phase("save_mesh"):
        suffix = f"_mesh.{cfg.mesh_format}"
        save_mesh(mesh.to("cpu"), out.path(suffix))
        outputs["mesh"] = str(out.final_path(suffix))
    return {"vertices": int(mesh.v.shape[0]), "faces": int(mesh.f.shape[0]), **info}


#: Below this fraction of the surface's voxels kept, the Gaussians' silhouettes disagree with
#: their own density (too transparent, or not one object): the density is contoured uncut.
MIN_HULL_KEPT = 0.5


def _carve(
    occ: torch.Tensor,
    center: torch.Tensor,
    scale: float,
    level: float,
    cams: Cameras,
    alpha: torch.Tensor,
    threshold: float,
    info: dict,
    source: str,
    ramp: float = 0.0,
) -> torch.Tensor:
    """:func:`carve_to_silhouettes` (``ramp``: its signed-distance cut, ``export.hull_ramp``), unless it would keep under ``MIN_HULL_KEPT`` of the voxels at or above ``level``.

    Reports the kept fraction as ``info["hull_kept_<source>"]``.
    """
    inside = int((occ >= level).sum())
    if inside == 0:  # no surface to cut (export_coarse_mesh reports that itself)
        info[f"hull_kept_{source}"] = 1.0
        return occ
    # Points per chunk x views bounds the sampling grid's memory (~1 GB at 2^24 entries).
    chunk = max(1 << 14, (1 << 24) // max(1, len(cams)))
    carved = carve_to_silhouettes(
        occ, center, scale, level, cams, alpha, threshold, chunk=chunk, ramp=float(ramp)
    )
    kept = int((carved >= level).sum()) / inside
    info[f"hull_kept_{source}"] = round(kept, 4)
    if kept < MIN_HULL_KEPT:
        log.warning(
            "the %s silhouettes (alpha > %g) would keep only %.0f%% of the Gaussians' dense volume: "
            "the coarse mesh is not cut by them",
            source,
            threshold,
            100 * kept,
        )
        return occ
    return carved


def _calibrate(cfg: DictConfig, model: GaussianModel, occ, center, scale, device, ref) -> tuple[float, dict]:
    """Pick ``export.iso_levels``' best level against ``export.iso_target`` silhouettes."""
    ex = cfg.export
    if ex.iso_target == "input" and ref is not None:
        # The input mask is the one true silhouette we have (the Gaussians' own alpha is blurred
        # and under-opaque on thin parts, so matching it picks too high a level).
        cams, alpha = ref[0], ref[1][None].to(device)
    else:
        cams = bake_cameras(ex.iso_size, radius=cfg.cameras.radius, fovy=cfg.cameras.fovy, device=device)
        with torch.no_grad():
            alpha = render_gaussians(
                model, cams, torch.tensor(WHITE, device=device), backend=cfg.render.gs_backend
            ).alpha
    levels = [float(x) for x in ex.iso_levels]
    return calibrated_level(occ, center, scale, levels, cams, alpha, backend=cfg.render.mesh_backend)
