"""Drop the faces of a mesh that no outside view sees (the inner walls marching cubes leaves).

Marching cubes contours every level crossing of the Gaussian density, also inside the object:
sparse interior Gaussians become closed bubbles and sheets that no camera can see, cost faces in the
UV atlas and texture, and sit far from the true surface (half the faces of the oracle duck; F-score
at 1 % 0.59 -> 0.89 without them, docs/method.md#coarse-mesh). Here the mesh is rasterised from
``n`` directions spread evenly over the sphere (a Fibonacci lattice) at the stage's camera radius,
or farther where the mesh would not fit in every view (a radius inside or close to the object would
see only its inside or small caps of it, and drop the real surface); a face is kept when any view shows it, or when its three vertices all belong to shown faces (closes
the pinholes of faces too small to win a pixel). Open cavities (a mug's inside) stay: views from
above see into them.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from core.cameras import Cameras, orbit_cameras
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS

from .mesh import Mesh
from .ops import remove_unreferenced
from .raster import rasterize

__all__ = ["sphere_cameras", "view_distance", "views_per_chunk", "visible_faces", "drop_hidden_faces"]

log = logging.getLogger(__name__)

#: Below this fraction of faces seen, something is off (cameras inside the object?): keep them all.
MIN_VISIBLE_FRACTION = 0.02
#: Views per rasterisation call are limited so views x (pixels + faces) stays under this: the
#: per-chunk buffers (triangle ids, barycentrics, per-pixel attributes) stay bounded whatever
#: export.visible_size (16 views at the default 256 px and 1e5 faces).
CHUNK_ELEMENTS = 1 << 22


def sphere_cameras(
    n: int,
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
    size: int = 256,
    device: torch.device | str = "cpu",
) -> Cameras:
    """``n`` cameras looking at the origin from a Fibonacci lattice of directions (poles included)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    elevation = np.degrees(np.arcsin(1.0 - 2.0 * i / n))
    azimuth = (i * 180.0 * (3.0 - math.sqrt(5.0))) % 360.0  # the golden angle
    return orbit_cameras(
        elevation.astype(np.float32), azimuth.astype(np.float32), radius, fovy, size, device=device
    )


def view_distance(radius: float, fovy: float, extent: float) -> float:
    """Camera distance for the visibility views: ``radius``, or where a mesh reaching ``extent`` from
    the origin fits in the view (``extent / sin(fovy / 2)``) when that is farther."""
    return max(float(radius), float(extent) / math.sin(math.radians(fovy) / 2))


def views_per_chunk(pixels: int, faces: int, limit: int = 16) -> int:
    """Views rasterised per call for views of ``pixels`` pixels and ``faces`` faces: 1 to ``limit``."""
    return max(1, min(limit, CHUNK_ELEMENTS // (pixels + faces)))


def visible_faces(mesh: Mesh, cams: Cameras, backend: str = "auto", chunk: int | None = None) -> torch.Tensor:
    """Bool ``[F]``: faces that cover at least one pixel in some view of ``cams``, ``chunk`` views per
    rasterisation (default :func:`views_per_chunk`)."""
    seen = torch.zeros(mesh.f.shape[0], dtype=torch.bool, device=mesh.device)
    if chunk is None:
        chunk = views_per_chunk(cams.height * cams.width, mesh.f.shape[0])
    for k in range(0, len(cams), chunk):
        tri = rasterize(mesh, cams[k : k + chunk], backend=backend).tri_id
        seen[tri[tri >= 0]] = True
    return seen


def drop_hidden_faces(
    v: torch.Tensor,
    f: torch.Tensor,
    views: int = 64,
    size: int = 256,
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v [N,3] float, f [F,3] int64)`` -> the faces some outside view sees, unreferenced vertices dropped.

    Tensors stay on their device (rasterised there). The views look at the origin from ``radius``,
    backed off to :func:`view_distance` when the mesh would not fit in them. A mesh of which under 2 %
    would stay is returned unchanged, with a warning (a degenerate case, not a surface worth cutting down).
    """
    if f.shape[0] == 0 or views <= 0:
        return v, f
    mesh = Mesh(v=v.float(), f=f.long())
    distance = view_distance(radius, fovy, float(mesh.v.norm(dim=1).max()))
    seen = visible_faces(mesh, sphere_cameras(views, distance, fovy, size, device=mesh.device), backend)
    touched = torch.zeros(v.shape[0], dtype=torch.bool, device=seen.device)
    touched[mesh.f[seen].reshape(-1)] = True
    keep = seen | touched[mesh.f].all(1)
    if keep.float().mean() < MIN_VISIBLE_FRACTION:
        log.warning(
            "only %d of %d faces visible from outside: the mesh is kept whole", int(keep.sum()), len(keep)
        )
        return v, f
    nv, nf = remove_unreferenced(v.detach().cpu().numpy(), mesh.f[keep].cpu().numpy())
    log.info("hidden faces: %d of %d dropped", int((~keep).sum()), len(keep))
    return (
        torch.as_tensor(nv, dtype=v.dtype, device=v.device),
        torch.as_tensor(nf, dtype=torch.int64, device=f.device),
    )
