"""Bake multi-view images into a UV texture (docs/method.md#texture-bake), all on the tensor's device.

Instead of the authors' splatting of pixels into texels (``mipmap_linear_grid_put_2d``), which
leaves holes wherever a view has fewer pixels than the texels it covers, we gather: every texel is
rasterised once in UV space (-> its 3D point and normal), projected into each view and, if it is
visible there (depth test against the view's z-buffer), faces the camera (``viewcos > 0.5``, as
the authors) and lies on the object in the image (``alpha > 0.5``), the image is sampled
bilinearly at that point. Unseen texels and the gutters between charts are then filled by
pull-push (mip-pyramid averaging of the seen texels), which replaces the authors' mip fill and
CPU KD-tree dilation and gives every texel a plausible colour for bilinear/mip lookups.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from core.cameras import Cameras, orbit_cameras
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS

from .mesh import Mesh
from .raster import barycentrics, rasterize, zbuffer

__all__ = ["bake_texture", "bake_cameras", "pull_push", "texel_surface"]

log = logging.getLogger(__name__)

BAKE_ELEVATIONS = [0.0] * 8 + [-45.0] * 8 + [45.0] * 8 + [-89.9, 89.9]
BAKE_AZIMUTHS = [0.0, 45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0] * 3 + [0.0, 0.0]


def bake_cameras(
    height: int = 512, radius: float = DEFAULT_RADIUS, fovy: float = DEFAULT_FOVY, device="cpu"
) -> Cameras:
    """The authors' 26 bake views (docs/method.md#texture-bake): 8 azimuths at elevations 0, -45 (above), 45, then top and bottom."""
    return orbit_cameras(BAKE_ELEVATIONS, BAKE_AZIMUTHS, radius, fovy, height, device=device)


def texel_surface(mesh: Mesh, tex_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texels covered by the UV atlas: (flat texel indices [P] into [T*T], world points [P,3], unit normals [P,3]).

    Texel (r, c) has its centre at u = (c+0.5)/T, v = 1-(r+0.5)/T (row 0 = top = v near 1).
    """
    T = tex_size
    xy = torch.stack([mesh.vt[:, 0] * T, (1.0 - mesh.vt[:, 1]) * T], dim=-1)[None]  # [1,Nt,2] texel coords
    z = torch.ones_like(xy[..., 0])  # flat: barycentrics in UV space are affine
    tri = zbuffer(xy, z, mesh.ft, T, T)
    bary = barycentrics(xy, None, mesh.ft, tri)
    idx = (tri >= 0).reshape(-1).nonzero().squeeze(1)
    t = tri.reshape(-1)[idx]
    b = bary.reshape(-1, 3)[idx][..., None]
    corners = mesh.f[t]
    pts = (mesh.v[corners] * b).sum(1)
    nrm = F.normalize((mesh.vn[corners] * b).sum(1), dim=-1)
    return idx, pts, nrm


def pull_push(color: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fill texels with ``weight == 0`` from a mip pyramid of the weighted ones.

    ``color``: float ``[T,T,C]``; ``weight``: float ``[T,T]`` >= 0. Texels with weight keep
    their colour; the rest get the weighted average of the nearest coarser level that has data,
    upsampled bilinearly (smooth fill across holes and chart gutters).
    """
    c = (color * weight[..., None]).permute(2, 0, 1)[None]
    w = weight[None, None]
    pyr = []
    while True:
        pyr.append((c, w))
        if min(c.shape[-2:]) <= 1:
            break
        # Averaging both premultiplied colour and weight keeps their ratio a weighted mean.
        c, w = F.avg_pool2d(c, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
    c, w = pyr[-1]
    cur = c / w.clamp_min(1e-12)
    for c, w in reversed(pyr[:-1]):
        up = F.interpolate(cur, size=c.shape[-2:], mode="bilinear", align_corners=False)
        cur = torch.where(w > 1e-8, c / w.clamp_min(1e-12), up)
    return cur[0].permute(1, 2, 0)


@torch.no_grad()
def bake_texture(
    mesh: Mesh,
    cams: Cameras,
    images: torch.Tensor,
    alphas: torch.Tensor | None = None,
    tex_size: int = 1024,
    viewcos_thresh: float = 0.5,
    mode: str = "first",
    backend: str = "auto",
) -> torch.Tensor:
    """Project V views into the mesh's UV texture: albedo float ``[T,T,3]`` in [0,1] (row 0 = top, v=1).

    ``mesh`` must have UVs (:func:`mesh_renderer.uv.unwrap_uv`). ``images``: float ``[V,3,H,W]`` in
    [0,1] seen from ``cams``; ``alphas``: float ``[V,1,H,W]`` (pixels with alpha <= 0.5 are not
    baked) or None. ``mode="first"``: a texel takes its colour from the first view (in ``cams``
    order) that sees it with ``viewcos > viewcos_thresh`` - the authors' rule, and why the bake
    views start with the front: the reference side stays exactly as rendered, without the blur
    that averaging slightly inconsistent views (Gaussians seen from different sides) would bring.
    ``mode="blend"``: a viewcos^4-weighted average of all such views (smoother seams between
    views, softer detail).
    """
    if not mesh.has_uv:
        raise ValueError("bake_texture needs a mesh with UVs (run mesh_renderer.uv.unwrap_uv first)")
    if mode not in ("first", "blend"):
        raise ValueError(f"unknown bake mode {mode!r}; use 'first' or 'blend'")
    t0 = time.perf_counter()
    dev = mesh.device
    cams = cams.to(dev)
    images = images.to(dev, torch.float32)
    V, _, H, W = images.shape
    T = tex_size
    idx, pts, nrm = texel_surface(mesh, T)
    raster = rasterize(mesh, cams, backend=backend)
    depth = raster.depth  # [V,1,H,W]; 0 = background
    # Pixels that may be baked: on the mesh and, when given, on the object in the image. Colours
    # are averaged bilinearly over these pixels only, so silhouettes never bleed background in.
    cover = raster.alpha.float()
    if alphas is not None:
        cover = cover * (alphas.to(dev, torch.float32) > 0.5)

    color = torch.zeros(len(idx), 3, device=dev)
    weight = torch.zeros(len(idx), device=dev)
    for i in range(V):  # one view at a time bounds memory at [P] per view (P ~ 1e6 texels at 1024^2)
        xy, z = cams[i].project(pts)
        x, y = xy[0].unbind(-1)
        z = z[0].clamp_min(1e-6)
        grid = torch.stack([x / W * 2 - 1, y / H * 2 - 1], -1).view(1, 1, -1, 2)
        zbuf = F.grid_sample(depth[i : i + 1], grid, mode="nearest", align_corners=False).view(-1)
        # A nearest-pixel depth differs from the texel's by up to half a pixel's footprint times the
        # slope (<= tan 60 deg at viewcos 0.5): allow 3 pixel footprints (z / focal each).
        tol = torch.clamp(3.0 * z / cams.focal, min=5e-3 * z)
        visible = (zbuf > 0) & ((zbuf - z).abs() < tol) & (grid.view(-1, 2).abs() < 1).all(-1)
        viewcos = (nrm * F.normalize(cams.campos()[i] - pts, dim=-1)).sum(-1)
        ok = visible & (viewcos > viewcos_thresh)
        cov = F.grid_sample(cover[i : i + 1], grid, mode="bilinear", align_corners=False).view(-1)
        ok &= cov > 0.5
        if mode == "first":
            ok &= weight == 0
            w = ok.float()
        else:
            w = ok.float() * viewcos.clamp_min(0) ** 4
        if not ok.any():
            continue
        col = (
            F.grid_sample(images[i : i + 1] * cover[i : i + 1], grid, mode="bilinear", align_corners=False)[
                0, :, 0
            ].T
            / cov.clamp_min(1e-6)[:, None]
        )  # [P,3]
        color += col * w[:, None]
        weight += w
    seen = weight > 0
    tex = torch.zeros(T * T, 3, device=dev)
    wt = torch.zeros(T * T, device=dev)
    tex[idx[seen]] = color[seen] / weight[seen, None]
    wt[idx[seen]] = 1.0
    albedo = pull_push(tex.view(T, T, 3), wt.view(T, T)).clamp(0, 1)
    log.info(
        "bake_texture: %d views -> %d^2 texels (%.1f%% of atlas texels seen) in %.2f s",
        V,
        T,
        100.0 * float(seen.float().mean()) if len(seen) else 0.0,
        time.perf_counter() - t0,
    )
    return albedo
