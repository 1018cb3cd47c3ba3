"""Stage 1: image -> 3D Gaussians by score-based iterative reconstruction -> coarse textured mesh.

    python main_gs.py --config configs/image.yaml input=cat.png [key=value ...]

Writes ``<outdir>/<save_path>_model.ply``, ``_mesh.<mesh_format>``, ``_preview.png`` and
``_report.json``. :func:`run_stage1` is the library entry point (batch runs call it with a
denoiser loaded once).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from omegaconf import DictConfig

from core.run import (
    cli,
    log,
    output_path,
    peak_memory_gb,
    progress,
    write_report,
)
from core.stage_outputs import write_previews
from core.timing import PhaseTimer

WHITE = (1.0, 1.0, 1.0)


def run_stage1(cfg: DictConfig, denoiser=None, export: bool = True) -> dict:
    """Run stage 1 for one input; returns the report dict (also written as JSON).

    ``export=False`` skips the coarse mesh (benchmarks of the SIR loop on random weights).
    """
    from core.sir import run_sir
    from core.stage_plans import stage1_plan
    from core.stage_setup import setup_stage
    from gs_renderer import GaussianModel, save_ply
    from gs_renderer.representation import GaussianRepresentation
    from guidance import load_denoiser

    st = setup_stage(cfg, denoiser, load_denoiser)
    device, timer, denoiser = st.device, st.timer, st.denoiser
    with timer.phase("prepare"):
        model = GaussianModel.init_ball(
            cfg.gaussians.num_pts,
            radius=cfg.gaussians.init_radius,
            sh_degree=cfg.gaussians.sh_degree,
            seed=cfg.seed,
            device=device,
        )
        rep = GaussianRepresentation(model, cfg, st.ref_rgb, st.ref_mask, st.ref_cam, bg=WHITE)
        plan = stage1_plan(cfg, denoiser)

    with progress(len(plan.t_pairs) + (plan.init_steps > 0), "stage 1 (Gaussians)", cfg.quiet) as on_iter:
        stats = run_sir(rep, denoiser, plan, st.rng, st.noise, timer, device, on_iter)

    outputs = {}
    with timer.phase("save_ply"):
        rep.finish()
        ply = output_path(cfg, "_model.ply")
        save_ply(model, ply)
        outputs["ply"] = str(ply)
    mesh_info = export_coarse_mesh(cfg, model, timer, device, outputs) if export else {}
    with timer.phase("preview"):
        write_previews(
            cfg, "gaussians", model, cfg.render.gs_backend, outputs, "_preview.png", "_gaussians.mp4"
        )

    report = {
        "stage": 1,
        "seed": cfg.seed,
        "device": str(device),
        "seconds": timer.seconds(),
        "nfe": denoiser.nfe - st.nfe0,
        "optimiser_steps": stats.optimiser_steps,
        "num_gaussians": int(model.num_points),
        "mesh": mesh_info,
        "peak_gpu_memory_gb": peak_memory_gb(device),
        "outputs": outputs,
    }
    report_path = output_path(cfg, "_report.json")
    outputs["report"] = str(report_path)
    write_report(report_path, cfg, report)
    log.info("stage 1 done in %.1f s: %s", sum(report["seconds"].values()), outputs)
    return report


def export_coarse_mesh(
    cfg: DictConfig, model, timer: PhaseTimer, device: torch.device, outputs: dict
) -> dict:
    """Marching cubes on the Gaussian density, clean, UV-unwrap, bake colour, save (spec 3.1-3.2)."""
    from gs_renderer import extract_density_mesh
    from gs_renderer import render as render_gaussians
    from mesh_renderer import Mesh, save_mesh
    from mesh_renderer.bake import bake_cameras, bake_texture
    from mesh_renderer.ops import clean_mesh, decimate
    from mesh_renderer.uv import unwrap_uv

    ex = cfg.export
    with timer.phase("extract"):
        v, f = extract_density_mesh(model, resolution=ex.grid_resolution, density_thresh=ex.density_thresh)
        v, f = clean_mesh(v, f)
        if len(f) > ex.max_faces:
            v, f = decimate(v, f, ex.max_faces)
    if len(f) == 0:
        log.warning("the Gaussians have no surface above density %.3g: no mesh written", ex.density_thresh)
        return {"faces": 0}
    mesh = Mesh(v=torch.as_tensor(v, dtype=torch.float32), f=torch.as_tensor(f, dtype=torch.int64))
    cams = bake_cameras(ex.bake_size, radius=cfg.cameras.radius, fovy=cfg.cameras.fovy, device=device)
    # xatlas runs on the CPU while the GPU renders the bake views.
    with ThreadPoolExecutor(1) as pool:
        with timer.phase("uv_unwrap"):
            fut = pool.submit(unwrap_uv, mesh, max_faces=ex.uv_max_faces, tex_size=ex.texture_size)
        with timer.phase("bake_render"), torch.no_grad():
            out = render_gaussians(
                model, cams, torch.tensor(WHITE, device=device), backend=cfg.render.gs_backend
            )
        with timer.phase("uv_unwrap_wait"):
            mesh = fut.result().to(device)
    with timer.phase("bake"):
        mesh.albedo = bake_texture(
            mesh, cams, out.rgb, out.alpha, tex_size=ex.texture_size, backend=cfg.render.mesh_backend
        )
    with timer.phase("save_mesh"):
        path = output_path(cfg, f"_mesh.{cfg.mesh_format}")
        save_mesh(mesh.to("cpu"), path)
        outputs["mesh"] = str(path)
    return {"vertices": int(mesh.v.shape[0]), "faces": int(mesh.f.shape[0])}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return cli(run_stage1, argv)


if __name__ == "__main__":
    sys.exit(main())
