"""Texture lookup and compositing on a cached :class:`~mesh_renderer.raster.Raster`.

Stage 2 rasterises once per SIR iteration and shades every reconstruction step, so everything
that depends only on geometry (pixel indices, sampling grids) is cached on the Raster and a
:func:`shade` call is one texture lookup (+ antialiasing on CUDA) with gradients to the texture.

Texture convention (``mesh.py``): ``[Ht,Wt,3]``, row 0 = top of the image = ``v`` near 1, texel
centres at ``u = (c+0.5)/Wt``, ``v = 1-(r+0.5)/Ht``; lookups clamp at the border.

* torch backend: ``grid_sample`` (bilinear, ``align_corners=False``, border padding) at covered
  pixels only; no mip-mapping and no antialiasing.
* nvdiffrast backend: ``dr.texture`` with ``linear-mipmap-linear`` (using the UV derivatives from
  the rasteriser) and clamp boundary, then ``dr.antialias`` on the composited colour and alpha.
  nvdiffrast's texture row 0 sits at ``v = 0``, so the texture is flipped vertically first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.cameras import Cameras
from core.types import RenderOutput

from .mesh import Mesh
from .raster import Raster, _load_nvdiffrast, rasterize

__all__ = ["shade", "render", "composite", "sample_texture"]

_ACTIVATIONS = {None: None, "none": None, "sigmoid": torch.sigmoid}


def _bg_tensor(bg, device) -> torch.Tensor:
    if bg is None:
        bg = 1.0
    bg = torch.as_tensor(bg, dtype=torch.float32, device=device).reshape(-1)
    return bg.expand(3) if bg.numel() == 1 else bg


def _torch_lookup(raster: Raster) -> tuple[torch.Tensor, torch.Tensor]:
    """(covered pixel flat indices [P], grid_sample grid [1,1,P,2]) cached on the raster."""
    if "torch_lookup" not in raster.cache:
        idx = raster.mask.reshape(-1).nonzero().squeeze(1)
        uv = raster.uv.reshape(-1, 2)[idx]
        # grid x = -1 at the left edge (u=0); grid y = -1 at the top row (v=1).
        grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], dim=-1).view(1, 1, -1, 2)
        raster.cache["torch_lookup"] = (idx, grid)
    return raster.cache["torch_lookup"]


def sample_texture(raster: Raster, texture: torch.Tensor, filter: str = "auto") -> torch.Tensor:
    """Texture colour at every pixel, ``[V,H,W,C]`` (0 off-mesh on torch; anything off-mesh on CUDA).

    ``texture``: float ``[Ht,Wt,C]``; ``filter``: ``"auto"`` (mip-mapped on nvdiffrast, bilinear on
    torch), ``"linear"`` (bilinear on both) or ``"mipmap"`` (nvdiffrast only).
    """
    if raster.uv is None:
        raise ValueError("the mesh has no UVs: unwrap it (mesh_renderer.uv.unwrap_uv) before texturing")
    V, H, W = raster.tri_id.shape
    C = texture.shape[-1]
    if raster.backend == "nvdiffrast":
        dr = _load_nvdiffrast()
        tex = texture.flip(0)[None].contiguous()
        if filter in ("auto", "mipmap"):
            return dr.texture(
                tex, raster.uv, raster.uv_da, filter_mode="linear-mipmap-linear", boundary_mode="clamp"
            )
        return dr.texture(tex, raster.uv, filter_mode="linear", boundary_mode="clamp")
    if filter == "mipmap":
        raise ValueError("mip-mapped texturing needs the nvdiffrast backend")
    idx, grid = _torch_lookup(raster)
    col = F.grid_sample(
        texture.permute(2, 0, 1)[None],
        grid.to(texture.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0, :, 0].t()  # [P,C]
    out = torch.zeros(V * H * W, C, dtype=col.dtype, device=col.device).index_put((idx,), col)
    return out.view(V, H, W, C)


def composite(raster: Raster, colors: torch.Tensor, bg=None, antialias: bool = True) -> RenderOutput:
    """Composite per-pixel surface colours ``[V,H,W,3]`` over ``bg`` (float or ``[3]``) into a RenderOutput.

    On nvdiffrast, colour and alpha are antialiased at silhouettes (against the background,
    unlike the authors who antialias before compositing and so blend edges with texel (0,0)).
    """
    bgc = _bg_tensor(bg, colors.device).to(colors.dtype)
    mask = raster.mask[..., None]
    rgb = torch.where(mask, colors, bgc)
    alpha = raster.alpha.permute(0, 2, 3, 1).to(colors.dtype)
    if raster.backend == "nvdiffrast" and antialias:
        dr = _load_nvdiffrast()
        rgba = dr.antialias(
            torch.cat([rgb, alpha], -1).contiguous(),
            raster.rast,
            raster.pos_clip,
            raster.tri,
            topology_hash=raster.topology_hash,
        )
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return RenderOutput(
        rgb=rgb.permute(0, 3, 1, 2),
        alpha=alpha.permute(0, 3, 1, 2),
        depth=raster.depth,
        normal=raster.normal,
        viewcos=raster.viewcos,
    )


def shade(
    raster: Raster,
    texture: torch.Tensor,
    bg=None,
    activation: str | None = None,
    filter: str = "auto",
    antialias: bool = True,
) -> RenderOutput:
    """Textured colour of a rasterised batch, differentiable w.r.t. ``texture``.

    ``texture``: float ``[Ht,Wt,3]``, in [0,1] or raw logits with ``activation="sigmoid"``, applied
    *after* sampling (the authors' stage-2 parameterisation). ``bg``: float or ``[3]`` in [0,1]
    (default white). ``antialias=False`` skips nvdiffrast's edge antialiasing (the torch backend has
    none), e.g. to compare the two backends pixel for pixel. Returns ``RenderOutput`` with ``rgb [V,3,H,W]`` in [0,1], ``alpha``, ``depth``,
    ``normal`` and ``viewcos`` from the raster.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use None or 'sigmoid'")
    col = sample_texture(raster, texture, filter)
    act = _ACTIVATIONS[activation]
    if act is not None:
        col = act(col)
    return composite(raster, col, bg, antialias)


def render(
    mesh: Mesh,
    cams: Cameras,
    bg=None,
    texture: torch.Tensor | None = None,
    backend: str = "auto",
    activation: str | None = None,
    filter: str = "auto",
) -> RenderOutput:
    """Rasterise and shade ``mesh`` for V cameras; ``texture`` defaults to ``mesh.albedo``.

    A mesh without UVs or texture renders in flat grey 0.7 (geometry previews).
    """
    raster = rasterize(mesh, cams, backend=backend)
    if texture is None:
        texture = mesh.albedo
    if texture is None or not mesh.has_uv:
        V, H, W = raster.tri_id.shape
        return composite(raster, torch.full((V, H, W, 3), 0.7, device=mesh.device), bg)
    return shade(raster, texture.to(mesh.device), bg, activation=activation, filter=filter)
