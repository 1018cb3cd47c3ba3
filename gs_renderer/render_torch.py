"""Pure-PyTorch reference rasteriser with gsplat 1.5.3's classic-mode conventions.

Rules taken from gsplat (facts only, our own code): means are projected with OpenCV ``viewmats``
and pixel ``Ks`` (pixel (i,j) centre at (j+0.5, i+0.5)); EWA covariance ``J W S W^T J^T`` with
the Jacobian's x/y clamped to 1.3x the field of view, plus ``eps2d = 0.3`` px^2 on the diagonal;
culled when ``z`` is outside [near, far], ``det <= 0``, opacity < 1/255 or the footprint box is
off screen; footprint half-size per axis ``ceil(extend * sqrt(cov_ii))`` with
``extend = min(3.33, sqrt(2 ln(255 opacity)))``; per pixel, Gaussians in depth order,
``alpha = min(0.999, o exp(-0.5 d^T conic d))``, skipped if ``< 1/255``; a pixel stops *before*
the Gaussian that would bring its transmittance to ``<= 1e-4``.

Speed on CPU: a dense (every Gaussian x every pixel) evaluation is ~10x too slow, so pixels are
grouped in square tiles and each tile only sees the Gaussians whose footprint box overlaps it. The
(tile, Gaussian) pairs are built vectorised, sorted by (tile, depth), and laid out as padded
``[tiles, K]`` index tables. Tiles are sorted by K and processed in chunks padded to their own
K, so a crowded centre tile does not pad the empty border ones. Per chunk, the exponent is one
matmul of pixel monomials with per-Gaussian quadratic coefficients, transmittance is a cumulative
product, and the backward is written by hand (see ``_Composite``). Chunks are small (~2^18
pixel-Gaussian pairs) so each pass stays in cache (2.5x faster than 4M-element chunks); above
``save_limit`` pairs in total, chunks save only their inputs and recompute in backward, so memory
stays bounded at large image sizes.
"""

from __future__ import annotations

import math

import torch

from .model import SH_C0, quat_to_rotmat

__all__ = ["project_gaussians", "rasterize_torch", "eval_sh", "render_torch"]

ALPHA_THRESHOLD = 1.0 / 255.0
T_THRESHOLD = 1e-4
EPS2D = 0.3


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = EPS2D,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of N Gaussians into V cameras (gsplat classic rules).

    ``means [N,3]`` world, ``quats [N,4]`` (any norm), ``scales [N,3]`` activated (std devs),
    ``opacities [N]`` activated, ``viewmats [V,4,4]`` world->camera OpenCV, ``Ks [V,3,3]`` pixels.
    Returns ``means2d [V,N,2]`` pixels, ``conics [V,N,3]`` (inverse 2D covariance a,b,c),
    ``depths [V,N]`` camera z, ``radii [V,N,2]`` int32 pixels (0 = culled).
    """
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    mean_c = torch.einsum("vij,nj->vni", R, means) + t[:, None, :]  # [V,N,3]
    x, y, z = mean_c.unbind(-1)
    in_range = (z >= near) & (z <= far)
    # Divide by a safe z so culled points never produce inf/NaN, even in backward.
    z_s = torch.where(in_range, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    rz = 1.0 / z_s
    # gsplat clamps the Jacobian's x/z, y/z to the frustum widened by 30% (stable for far-off
    # points near the screen edge).
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z_s * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = z_s * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    zero = torch.zeros_like(z_s)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(
        *z.shape, 2, 3
    )  # [V,N,2,3]
    Rq = quat_to_rotmat(quats)
    M = Rq * scales[:, None, :]
    cov = M @ M.transpose(1, 2)  # [N,3,3]
    JW = J @ R[:, None]  # [V,N,2,3]
    cov2d = JW @ cov[None] @ JW.transpose(-1, -2)  # [V,N,2,2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det_s = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach()[None].expand_as(z)
        op_ok = op >= ALPHA_THRESHOLD
        extend = torch.clamp(
            torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=3.33
        )
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m = means2d.detach()
        on_screen = (
            (m[..., 0] + rx > 0) & (m[..., 0] - rx < width) & (m[..., 1] + ry > 0) & (m[..., 1] - ry < height)
        )
        valid = in_range & det_ok & op_ok & on_screen & ((rx > 0) | (ry > 0))
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
        radii = radii.to(torch.int32)
    return means2d, conics, z, radii


class _Composite(torch.autograd.Function):
    """Alpha compositing of one chunk of tiles with a hand-written backward.

    ``s = Pm @ coef`` is each pixel's Mahalanobis term minus log-opacity (a quadratic in the
    tile-local pixel position, so one matmul replaces ~10 elementwise ops and its backward is a
    matmul too); ``alpha = min(0.999, exp(-s))``, zero below 1/255; front-to-back weights
    ``w_i = alpha_i T_i``; out = ``w @ feats``. Backward uses the closed form
    ``dL/dalpha_i = T_i S_i - (sum_{j>i} S_j w_j) / (1 - alpha_i)`` with ``S = dL/dout . feats``.
    With ``recompute`` only the inputs are saved (memory of one chunk, not of the whole image).
    """

    @staticmethod
    def _forward(Pm, coef):
        s = torch.matmul(Pm, coef)  # [nt,P,K]
        # Clamp the exponent: far pixels would otherwise give denormal floats, which are ~100x
        # slower on x86; anything below exp(-20) is skipped (< 1/255) anyway.
        alpha = torch.exp(s.neg_().clamp_min_(-20.0))
        alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0).clamp_max_(0.999)
        one_minus = 1.0 - alpha
        T = torch.cumprod(one_minus, dim=-1)  # transmittance after each Gaussian
        # gsplat stops *before* the Gaussian that takes T to <= 1e-4; T is non-increasing, so
        # the kept set is a prefix of the depth order.
        stop = T <= T_THRESHOLD
        T_excl = T.div_(one_minus)  # in place: transmittance before each (1 - alpha >= 0.001)
        w = (alpha * T_excl).masked_fill_(stop, 0.0)
        return alpha, T_excl, stop, one_minus, w

    @staticmethod
    def forward(ctx, Pm, coef, feats, recompute):
        alpha, T_excl, stop, one_minus, w = _Composite._forward(Pm, coef)
        out = torch.bmm(w, feats)
        ctx.recompute = recompute
        if recompute:
            ctx.save_for_backward(Pm, coef, feats)
        else:
            ctx.save_for_backward(Pm, coef, feats, alpha, T_excl, stop, one_minus, w)
        return out

    @staticmethod
    def backward(ctx, gout):
        if ctx.recompute:
            Pm, coef, feats = ctx.saved_tensors
            alpha, T_excl, stop, one_minus, w = _Composite._forward(Pm, coef)
        else:
            Pm, coef, feats, alpha, T_excl, stop, one_minus, w = ctx.saved_tensors
        gout = gout.contiguous()
        gfeats = torch.bmm(w.transpose(1, 2), gout)
        S = torch.bmm(gout, feats.transpose(1, 2))  # [nt,P,K]: dL/dout . feats_i
        cs = torch.cumsum(S * w, dim=-1)
        after = cs[..., -1:] - cs  # sum over j > i of S_j w_j
        ga = (T_excl * S).sub_(after.div_(one_minus))
        # d alpha / d s = -alpha where alpha = exp(-s) is neither clamped nor skipped (skipped
        # ones have alpha = 0 already); stopped pixels pass no gradient, as in gsplat.
        ga.mul_(alpha).masked_fill_(stop | (alpha >= 0.999), 0.0)
        gcoef = torch.matmul(Pm.transpose(-1, -2), ga.neg_())
        return None, gcoef, gfeats, None


def _pixel_moments(ts: int, device) -> torch.Tensor:
    """``[P,6]`` monomials (1, x, y, x^2, xy, y^2) of tile-local pixel centres (tile centre = 0)."""
    ii, jj = torch.meshgrid(torch.arange(ts, device=device), torch.arange(ts, device=device), indexing="ij")
    x = jj.reshape(-1).float() + 0.5 - ts / 2.0
    y = ii.reshape(-1).float() + 0.5 - ts / 2.0
    return torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], dim=-1)


def _quad_coefs(m: torch.Tensor, cn: torch.Tensor, log_op: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[...,6]`` of ``0.5 d^T conic d - log(opacity)`` in the monomials above.

    ``m [...,2]`` Gaussian centre relative to the tile centre (small numbers: keeps float32
    cancellation negligible), ``cn [...,3]`` conic (a, b, c), ``log_op [...]``.
    """
    mx, my = m.unbind(-1)
    a, b, c = cn.unbind(-1)
    const = 0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my - log_op
    return torch.stack([const, -a * mx - b * my, -b * mx - c * my, 0.5 * a, b, 0.5 * c], dim=-1)


def rasterize_torch(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    opacities: torch.Tensor,
    feats: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 8,
    chunk_elems: int | None = None,
    save_limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile-based alpha compositing of projected Gaussians (see the module docstring).

    ``means2d [V,N,2]``, ``conics [V,N,3]``, ``depths [V,N]``, ``radii [V,N,2]`` (0 = culled),
    ``opacities [N]`` in (0,1), ``feats [V,N,D]`` (colours etc.). Returns the premultiplied
    features ``[V,D,H,W]`` (no background) and alpha ``[V,1,H,W]``. ``chunk_elems`` /
    ``save_limit`` (pixel-Gaussian pairs) default to cache-sized chunks on CPU and larger ones on
    GPU, where kernel-launch overhead dominates instead.
    """
    on_gpu = means2d.device.type != "cpu"
    if chunk_elems is None:
        chunk_elems = (1 << 22) if on_gpu else (1 << 18)
    if save_limit is None:
        save_limit = (1 << 26) if on_gpu else (1 << 24)
    V, N = depths.shape
    D = feats.shape[-1]
    dev = means2d.device
    ts = tile_size
    tw, th = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles = V * th * tw
    P = ts * ts

    with torch.no_grad():
        # ---- (view, Gaussian) -> covered tile rectangle [x0,x1) x [y0,y1), as gsplat's isect.
        vis = (radii > 0).any(-1)
        v_id, g_id = vis.nonzero(as_tuple=True)
        m = means2d.detach()[v_id, g_id] / ts
        r = radii[v_id, g_id].float() / ts
        x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tw).long()
        x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tw).long()
        y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, th).long()
        y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, th).long()
        wx = x1 - x0
        counts = wx * (y1 - y0)
        owner = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(owner), device=dev) - starts[owner]
        ptx = x0[owner] + local % wx[owner]
        pty = y0[owner] + local // wx[owner]
        tile = (v_id[owner] * th + pty) * tw + ptx
        # ---- sort by (tile, depth): depth rank inside each view, then one integer key.
        rank = torch.empty_like(depths, dtype=torch.long)
        order_d = torch.argsort(depths.detach(), dim=1)
        rank.scatter_(1, order_d, torch.arange(N, device=dev).expand(V, N).contiguous())
        key = tile * N + rank[v_id[owner], g_id[owner]]
        key, order = torch.sort(key)
        tile = tile[order]
        flat = (v_id * N + g_id)[owner[order]]
        # ---- padded per-tile index table; row V*N is a dummy with opacity 0.
        per_tile = torch.bincount(tile, minlength=n_tiles)
        tstart = torch.cumsum(per_tile, 0) - per_tile
        pos = torch.arange(len(tile), device=dev) - tstart[tile]
        kmax = int(per_tile.max()) if len(tile) else 0
        table = torch.full((n_tiles, max(kmax, 1)), V * N, dtype=torch.long, device=dev)
        table[tile, pos] = flat
        # ---- chunks of tiles with similar K.
        tile_order = torch.argsort(per_tile, descending=True)
        sorted_counts = per_tile[tile_order].tolist()
        chunks: list[tuple[int, int, int]] = []  # (start, end, K) over tile_order
        n_busy = sum(1 for c in sorted_counts if c > 0)  # descending: empty tiles come last
        i = 0
        while i < n_busy:
            k = sorted_counts[i]
            j = min(i + max(1, chunk_elems // (P * k)), n_busy)
            chunks.append((i, j, k))
            i = j

    # Flat per-(view, Gaussian) tables with a dummy row (index V*N) that is never visible.
    m2 = torch.cat([means2d.reshape(V * N, 2), torch.zeros(1, 2, device=dev)])
    cn = torch.cat([conics.reshape(V * N, 3), torch.zeros(1, 3, device=dev)])
    log_op = torch.log(opacities.clamp_min(1e-30))
    lo = torch.cat([log_op[None].expand(V, N).reshape(V * N), torch.full((1,), -1e4, device=dev)])
    # A column of ones makes the alpha channel come out of the same matmul as the colours.
    ft = torch.cat([feats.reshape(V * N, D), torch.ones(V * N, 1, device=dev)], dim=1)
    ft = torch.cat([ft, torch.zeros(1, D + 1, device=dev)])
    Pm = _pixel_moments(ts, dev)
    total = sum((e - s_) * k for s_, e, k in chunks) * P
    # Small chunks keep each pass in cache; above save_limit (pixel, Gaussian) pairs, chunks
    # keep only their inputs for backward and recompute, bounding memory.
    recompute = total > save_limit
    tcx = (torch.arange(th * tw, device=dev) % tw).float() * ts + ts / 2.0
    tcy = (torch.arange(th * tw, device=dev) // tw).float() * ts + ts / 2.0
    outs, tids = [], []
    for s_, e, k in chunks:
        t_ids = tile_order[s_:e]
        idx = table[t_ids, :k]  # [nt,K]
        tl = t_ids % (th * tw)
        centre = torch.stack([tcx[tl], tcy[tl]], dim=-1)[:, None, :]  # [nt,1,2]
        coef = _quad_coefs(m2[idx] - centre, cn[idx], lo[idx]).transpose(1, 2)  # [nt,6,K]
        outs.append(_Composite.apply(Pm, coef.contiguous(), ft[idx], recompute))
        tids.append(t_ids)
    full = torch.zeros(n_tiles, P, D + 1, device=dev, dtype=means2d.dtype)
    if outs:
        full = full.index_copy(0, torch.cat(tids), torch.cat(outs))
    img = full.reshape(V, th, tw, ts, ts, D + 1).permute(0, 5, 1, 3, 2, 4).reshape(V, D + 1, th * ts, tw * ts)
    img = img[:, :, :height, :width]
    return img[:, :D], img[:, D:]


# Real SH basis constants (degree 1..3), the standard ones used by every 3DGS code.
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate real SH ``sh [...,K,3]`` (K >= (degree+1)^2) along unit ``dirs [...,3]`` -> ``[...,3]``."""
    out = SH_C0 * sh[..., 0, :]
    if degree < 1:
        return out
    x, y, z = (d[..., None] for d in dirs.unbind(-1))
    out = out - _C1 * y * sh[..., 1, :] + _C1 * z * sh[..., 2, :] - _C1 * x * sh[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + _C2[0] * xy * sh[..., 4, :]
        + _C2[1] * yz * sh[..., 5, :]
        + _C2[2] * (2 * zz - xx - yy) * sh[..., 6, :]
        + _C2[3] * xz * sh[..., 7, :]
        + _C2[4] * (xx - yy) * sh[..., 8, :]
    )
    if degree < 3:
        return out
    return (
        out
        + _C3[0] * y * (3 * xx - yy) * sh[..., 9, :]
        + _C3[1] * xy * z * sh[..., 10, :]
        + _C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
        + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
        + _C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :]
        + _C3[5] * z * (xx - yy) * sh[..., 14, :]
        + _C3[6] * x * (xx - 3 * yy) * sh[..., 15, :]
    )


def view_colors(model, campos: torch.Tensor) -> torch.Tensor:
    """Per-view RGB ``[V,N,3]`` (>= 0): DC only at degree 0, else SH along camera->Gaussian."""
    V = campos.shape[0]
    if model.sh_degree == 0:
        return model.get_colors()[None].expand(V, -1, -1)
    dirs = torch.nn.functional.normalize(model.means[None] - campos[:, None], dim=-1)
    sh = model.get_sh()[None].expand(V, -1, -1, -1)
    return torch.clamp_min(eval_sh(model.sh_degree, sh, dirs) + 0.5, 0.0)


def render_torch(
    model,
    cams,
    bg: torch.Tensor,
    need_means2d: bool = False,
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = 8,
):
    """Render ``model`` from all V cameras with the reference backend -> ``RenderOutput``."""
    from core.types import RenderOutput

    W, H = cams.width, cams.height
    viewmats, Ks = cams.viewmats(), cams.Ks()
    opac = model.get_opacities()
    means2d, conics, depths, radii = project_gaussians(
        model.means, model.quats, model.get_scales(), opac, viewmats, Ks, W, H, near, far
    )
    if need_means2d and torch.is_grad_enabled() and means2d.requires_grad:
        means2d.retain_grad()
    colors = view_colors(model, cams.campos())
    feats = torch.cat([colors, depths[..., None]], dim=-1)  # depth rides along as a 4th channel
    out, alpha = rasterize_torch(means2d, conics, depths, radii, opac, feats, W, H, tile_size)
    bg = bg.to(out.dtype).reshape(-1, 3)
    bg = bg.expand(len(cams), 3) if bg.shape[0] == 1 else bg
    rgb = out[:, :3] + (1.0 - alpha) * bg[:, :, None, None]
    depth = out[:, 3:4] / alpha.clamp_min(1e-10)  # expected depth, as gsplat's "ED"
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii.max(dim=-1).values)
