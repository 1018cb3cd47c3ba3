"""Preview grid and turntable video of a stage's result (shared by both stage scripts)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from core.preview import preview_cameras, preview_grid, render_views, save_video, turntable_cameras
from core.run import output_path


def write_previews(
    cfg: DictConfig, kind: str, obj, backend: str, outputs: dict, grid: str, video: str
) -> None:
    """8-view preview grid (elevation 0, azimuths 0..315) and, with ``video=true``, a turntable.

    ``kind``: "gaussians" or "mesh"; ``obj`` the model on its device; ``grid``/``video`` are the
    file suffixes after ``save_path``. Paths are added to ``outputs``.
    """
    device = obj.device
    with torch.no_grad():
        cams = preview_cameras(8, 0.0, cfg.cameras.radius, cfg.cameras.fovy, 256, device=device)
        path = output_path(cfg, grid)
        preview_grid(render_views(kind, obj, cams, backend=backend), path, ncols=4)
        outputs["preview"] = str(path)
        if cfg.video:
            tcams = turntable_cameras(
                120, cfg.elevation, cfg.cameras.radius, cfg.cameras.fovy, 512, device=device
            )
            vpath = output_path(cfg, video)
            save_video(render_views(kind, obj, tcams, chunk=30, backend=backend), vpath, fps=30)
            outputs["video"] = str(vpath)
