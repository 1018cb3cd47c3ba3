"""Calibrated iso-level for the coarse mesh: the marching-cubes level whose silhouettes match the Gaussians.

The density ``sum_i alpha_i G_i(x)`` has no fixed relation to the rendered opacity: thin parts made
of small, half-transparent Gaussians never reach the paper's fixed level 0.2 (the mesh loses them),
while many overlapping transparent Gaussians exceed it around a dense core (a shell). The rendered
alpha is what the reconstruction loss constrained, so the level is chosen per object as the one
whose mesh silhouettes best match the Gaussians' own ``alpha > 0.5`` over several views.
"""

from __future__ import annotations

import torch

from core.cameras import Cameras
from gs_renderer.extract import grid_marching_cubes
from mesh_renderer import Mesh
from mesh_renderer.raster import rasterize

__all__ = ["calibrated_level", "silhouette_iou"]


@torch.no_grad()
def silhouette_iou(
    v: torch.Tensor, f: torch.Tensor, cams: Cameras, target: torch.Tensor, backend: str
) -> float:
    """Mean over views of the IoU between the mesh's coverage and ``target`` (bool ``[V,1,H,W]``)."""
    if len(f) == 0:
        return 0.0
    mesh = Mesh(v=v.float(), f=f.long())
    cover = rasterize(mesh, cams, backend=backend).alpha > 0.5
    inter = (cover & target).sum((1, 2, 3)).float()
    union = (cover | target).sum((1, 2, 3)).float().clamp_min(1)
    return float((inter / union).mean())


@torch.no_grad()
def calibrated_level(
    occ: torch.Tensor,
    center: torch.Tensor,
    scale: float,
    levels: list[float],
    cams: Cameras,
    alpha: torch.Tensor,
    backend: str = "auto",
) -> tuple[float, dict[float, float]]:
    """The level of ``levels`` whose mesh best matches ``alpha > 0.5`` (``[V,1,H,W]`` at ``cams``).

    Returns ``(level, {level: mean IoU})``; ties go to the first listed level.
    """
    target = alpha > 0.5
    scores = {}
    for level in levels:
        v, f = grid_marching_cubes(occ, center, scale, level)
        scores[float(level)] = silhouette_iou(v.to(alpha.device), f.to(alpha.device), cams, target, backend)
    best = max(scores, key=lambda k: scores[k])
    return best, scores
