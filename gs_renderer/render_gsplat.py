"""gsplat 1.5.3 backend (CUDA). gsplat is imported inside the function, never at module import."""

from __future__ import annotations

import torch

from .render_torch import view_colors

__all__ = ["render_gsplat"]


def render_gsplat(
    model,
    cams,
    bg: torch.Tensor,
    need_means2d: bool = False,
    near: float = 0.01,
    far: float = 100.0,
    depth: bool = True,
):
    """Render all V cameras in one ``gsplat.rasterization`` call -> ``RenderOutput``.

    Classic (non-antialiased) mode, ``eps2d`` 0.3, unpacked so ``means2d``/``radii`` come back
    per camera as ``[V,N,2]``; colours are activated RGB (``sh_degree=None``) and depth is
    gsplat's expected depth ("RGB+ED"). ``depth=False`` renders "RGB" and returns no depth: the
    same colours and alpha with a 3-channel rasteriser and none of gsplat's depth concatenations
    (stage 1's steps, which never read depth, are bound by such host work).
    """
    import gsplat  # lazy: importing gs_renderer must not build/load CUDA extensions

    from core.types import RenderOutput

    V, W, H = len(cams), cams.width, cams.height
    viewmats, Ks = cams.viewmats(), cams.Ks()
    colors = view_colors(model, cams.campos())  # [V,N,3]
    if model.sh_degree == 0:
        colors = colors[0]  # [N,3]: gsplat broadcasts it to every camera
    bgs = bg.to(device=model.device, dtype=torch.float32).reshape(-1, 3).expand(V, 3).contiguous()
    img, alpha, meta = gsplat.rasterization(
        means=model.means,
        quats=model.quats,
        scales=model.get_scales(),
        opacities=model.get_opacities(),
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=W,
        height=H,
        near_plane=near,
        far_plane=far,
        eps2d=0.3,
        sh_degree=None,
        packed=False,
        tile_size=16,
        backgrounds=bgs,
        render_mode="RGB+ED" if depth else "RGB",
        rasterize_mode="classic",
    )
    means2d = meta["means2d"]  # [V,N,2] (unpacked)
    if need_means2d and torch.is_grad_enabled() and means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.dim() == 3:  # 1.5.x: per-axis radii [V,N,2]
        radii = radii.max(dim=-1).values
    img = img.permute(0, 3, 1, 2)  # [V,H,W,4] -> [V,4,H,W]
    return RenderOutput(
        rgb=img[:, :3],
        alpha=alpha.permute(0, 3, 1, 2),
        depth=img[:, 3:4] if depth else None,
        means2d=means2d,
        radii=radii,
    )
