"""Stage 2: refine the coarse mesh's UV texture by score-based iterative reconstruction -> .glb.

Reads ``mesh=`` or ``<outdir>/<save_path>_mesh.<glb|obj>`` (stage 1's output) and writes
``<outdir>/<save_path>.glb`` (plus ``.obj/.mtl/_albedo.png`` with ``mesh_format=obj``),
``_final_preview.png``, ``_final_report.json`` and, with ``video=true``, ``.mp4``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import guidance
import mesh_renderer
from core.cameras import orbit_cameras
from core.errors import UserError
from core.outputs import OutputSet
from guidance.cuda_graphs import WARMUP_CALLS
from mesh_renderer import load_mesh, save_mesh
from pipeline.plans import stage2_plan
from pipeline.previews import write_previews
from pipeline.progress import progress
from pipeline.reports import STAGE2_REPORT, output_path, peak_memory_gb, write_stage_report
from pipeline.setup import setup_stage
from pipeline.sir import run_sir
from pipeline.texture import TextureRepresentation

__all__ = ["find_stage1_mesh", "run_stage2", "warm_stage2_networks"]

WHITE = (1.0, 1.0, 1.0)


def find_stage1_mesh(cfg: DictConfig) -> Path:
    """``mesh=`` when given, else stage 1's ``<outdir>/<save_path>_mesh.<fmt>`` (glb or obj)."""
    if cfg.mesh:
        path = Path(cfg.mesh)
        if not path.is_file():
            raise UserError(f"mesh file not found: {path}")
        return path
    tried = [output_path(cfg, f"_mesh.{ext}") for ext in dict.fromkeys([cfg.mesh_format, "glb", "obj"])]
    for path in tried:
        if path.is_file():
            return path
    raise UserError(
        f"no stage-1 mesh found (looked for {', '.join(str(p) for p in tried)}); "
        "run main_gs.py with the same input/save_path/outdir first, or pass mesh=path/to/mesh"
    )


@torch.no_grad()
def warm_stage2_networks(cfg: DictConfig, denoiser: Any, calls: int = WARMUP_CALLS + 1) -> None:
    """Call the networks at stage 2's shapes ``calls`` times on throwaway inputs (default: until captured).

    With ``model.cuda_graph`` the first calls of a new shape run eagerly and then capture a graph
    (:class:`guidance.cuda_graphs.GraphRunner`); doing that while stage 1 waits for its UV unwrap
    takes it off the one-command run's critical path. Nothing a run reports or draws changes: the
    NFE counters are restored and no random number is drawn.
    """
    plan = stage2_plan(cfg, denoiser)
    device, S = denoiser.device, denoiser.image_size
    azimuths = np.linspace(0.0, 360.0, plan.views, endpoint=False)
    cams = orbit_cameras(
        [plan.ref_elevation] * plan.views, azimuths, plan.radius, plan.fovy, S, device=device
    )
    counters = (denoiser.nfe, denoiser.nfe_cfg, denoiser.nfe_uncond, denoiser.nfe_rows)
    try:
        cond = denoiser.prepare(cams)
        images = torch.full((plan.views, 3, S, S), 0.5, device=device)
        t1, t2 = plan.t_pairs[0]
        for _ in range(calls):
            latents = denoiser.encode(images)
            denoiser.eps_cfg(latents, t2, cond, plan.cfg)
            if t1 < t2:
                denoiser.eps_uncond(latents, t1, cond)
            denoiser.decode(latents)
    finally:
        denoiser.nfe, denoiser.nfe_cfg, denoiser.nfe_uncond, denoiser.nfe_rows = counters


def run_stage2(cfg: DictConfig, denoiser: Any = None) -> dict:
    """Run stage 2 for one input; returns the report dict (also written as JSON).

    ``denoiser``: a loaded model to reuse (else ``guidance.load_denoiser`` loads one).
    """
    mesh_path = find_stage1_mesh(cfg)
    preload = [lambda d: mesh_renderer.preload_kernels(cfg.render.mesh_backend, d)]
    st = setup_stage(cfg, denoiser, guidance.load_denoiser, preload)
    device, timer, denoiser = st.device, st.timer, st.denoiser
    with timer.phase("prepare"):
        mesh = load_mesh(mesh_path).to(device)
        if not mesh.has_uv or mesh.albedo is None:
            raise UserError(f"{mesh_path} has no UV texture to refine (stage 1 writes one)")
        rep = TextureRepresentation(
            mesh,
            st.ref_rgb,
            st.ref_cam,
            lr=cfg.refine.texture_lr,
            ref_weight=cfg.refine.ref_loss,
            bg=WHITE,
            backend=cfg.render.mesh_backend,
            ssaa=None
            if cfg.refine.ssaa_max == cfg.refine.ssaa_min == 1
            else (cfg.refine.ssaa_min, cfg.refine.ssaa_max),
            rng=st.rng,
        )
        plan = stage2_plan(cfg, denoiser)

    with progress(len(plan.t_pairs), "stage 2 (texture)", cfg.quiet) as on_iter:
        stats = run_sir(rep, denoiser, plan, st.rng, st.noise, timer, device, on_iter)

    outputs = {}
    with OutputSet(cfg.outdir, cfg.save_path, STAGE2_REPORT) as out:
        with timer.phase("export"):
            final = rep.export_mesh().to("cpu")
            save_mesh(final, out.path(".glb"))
            outputs["glb"] = str(out.final_path(".glb"))
            if cfg.mesh_format == "obj":
                save_mesh(final, out.path(".obj"))
                outputs["obj"] = str(out.final_path(".obj"))
        with timer.phase("preview"):
            write_previews(
                cfg,
                "mesh",
                final.to(device),
                cfg.render.mesh_backend,
                outputs,
                "_final_preview.png",
                ".mp4",
                out,
            )
        report = {
            "stage": 2,
            "seed": cfg.seed,
            "device": str(device),
            "input_mesh": str(mesh_path),
            "seconds": timer.seconds(),
            "started_unix": timer.started_unix,
            "nfe": denoiser.nfe - st.nfe0,
            "optimiser_steps": stats.optimiser_steps,
            "peak_gpu_memory_gb": peak_memory_gb(device),
            "outputs": outputs,
        }
        out.commit(lambda path: write_stage_report(cfg, path, report))
    return report
