"""Rasterisation of a fixed mesh for a batch of V cameras: which triangle covers each pixel, where.

Two backends with the same outputs and conventions (``core/cameras.py``):

* ``"torch"``: a vectorised z-buffer in plain PyTorch (CPU or GPU). Vertices are projected with
  ``Cameras.viewmats()``/``Ks()``; each triangle's pixel bounding box gives (triangle, pixel)
  candidate pairs (chunked to bound memory); edge functions at pixel centres ``(j+0.5, i+0.5)``
  decide coverage; ``scatter_reduce(amin)`` resolves depth. Triangles with a vertex closer than
  ``near`` are dropped (no near-plane clipping: our cameras orbit at radius ~2 around a unit object).
* ``"nvdiffrast"``: ``dr.rasterize`` on ``Cameras.mvp()`` clip coordinates (CUDA only), which also
  yields the screen-space UV derivatives that mip-mapped texturing needs.

Both report perspective-correct barycentrics, so :func:`interpolate` and :mod:`.shade` work on
either. Geometry is fixed in stage 2, so a :class:`Raster` is computed once per SIR iteration (no
gradients) and shaded many times.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core.cameras import Cameras

from .mesh import Mesh

__all__ = [
    "Raster",
    "rasterize",
    "interpolate",
    "nvdiffrast_available",
    "preload_kernels",
    "resolve_backend",
]

log = logging.getLogger(__name__)


@dataclass
class Raster:
    """Per-pixel geometry of V views (background pixels hold zeros / -1).

    ``tri_id``: int64 ``[V,H,W]`` index into ``mesh.f`` (-1 = background).
    ``bary``: float ``[V,H,W,3]`` perspective-correct barycentrics of the triangle's 3 corners.
    ``uv``: float ``[V,H,W,2]`` interpolated texture coordinates (u right, v up) or None without UVs.
    ``uv_da``: float ``[V,H,W,4]`` screen derivatives (du/dx, du/dy, dv/dx, dv/dy) per pixel,
    nvdiffrast backend only (for mip-mapping), else None.
    ``alpha``: float ``[V,1,H,W]`` coverage in {0,1}. ``depth``: ``[V,1,H,W]`` camera-space z
    (distance along the viewing axis, 0 on background). ``normal``: ``[V,3,H,W]`` unit world normal
    (interpolated vertex normals). ``position``: ``[V,3,H,W]`` world position of the surface point.
    ``viewcos``: ``[V,1,H,W]`` cosine between the normal and the direction to the camera.
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    uv: torch.Tensor | None
    uv_da: torch.Tensor | None
    alpha: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    position: torch.Tensor
    viewcos: torch.Tensor
    backend: str
    # nvdiffrast state kept for antialiasing in shade(); None on the torch backend.
    rast: torch.Tensor | None = None
    pos_clip: torch.Tensor | None = None
    tri: torch.Tensor | None = None
    topology_hash: torch.Tensor | None = None
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def height(self) -> int:
        return self.tri_id.shape[1]

    @property
    def width(self) -> int:
        return self.tri_id.shape[2]

    @property
    def mask(self) -> torch.Tensor:
        """Covered pixels, bool ``[V,H,W]``."""
        return self.tri_id >= 0


# ------------------------------------------------------------------------------------- nvdiffrast
_DR = None
_DR_ERROR: Exception | None = None
_CONTEXTS: dict = {}
_DR_LOAD_ERROR: Exception | None = None  # a failed import/build, raised again without retrying it
_DR_LOCK = threading.Lock()  # the plugin may first load on the GPU warm-up thread


def _load_nvdiffrast():
    """Import ``nvdiffrast.torch`` and build its CUDA plugin once.

    torch >= 2.11's ``cpp_extension.load()`` (and ``_import_module_from_library``) no longer put
    the built module into ``sys.modules``, and nvdiffrast 0.3.3 then fails with
    ``ModuleNotFoundError: nvdiffrast_plugin_...`` at its ``importlib.import_module``. Upstream
    0.3.4 registers the returned module itself; we do the same from outside by wrapping those two
    functions only while the plugin is built, so site-packages stays untouched.

    A failure is kept and raised again by later calls: a JIT build that cannot compile costs its
    attempt once (the GPU warm-up thread's preload, then the first render, would each pay it).
    """
    global _DR, _DR_LOAD_ERROR
    if _DR is not None:
        return _DR
    with _DR_LOCK:
        if _DR is not None:
            return _DR
        if _DR_LOAD_ERROR is not None:
            raise _DR_LOAD_ERROR
        try:
            _DR = _import_and_build()
        except Exception as e:
            _DR_LOAD_ERROR = e
            raise
        return _DR


def _import_and_build():
    """:func:`_load_nvdiffrast`'s work: import ``nvdiffrast.torch``, build its plugin -> the module."""
    import torch.utils.cpp_extension as cpp

    dr = importlib.import_module("nvdiffrast.torch")
    ops = importlib.import_module("nvdiffrast.torch.ops")
    orig_load, orig_import = cpp.load, cpp._import_module_from_library

    def _register(mod):
        if isinstance(mod, types.ModuleType):
            sys.modules.setdefault(mod.__name__, mod)
        return mod

    cpp.load = lambda *a, **k: _register(orig_load(*a, **k))
    cpp._import_module_from_library = lambda *a, **k: _register(orig_import(*a, **k))
    try:
        ops._get_plugin(gl=False)
    finally:
        cpp.load, cpp._import_module_from_library = orig_load, orig_import
    return dr


def _cuda_context(device: torch.device):
    dr = _load_nvdiffrast()
    key = (
        torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    )
    if key not in _CONTEXTS:
        _CONTEXTS[key] = dr.RasterizeCudaContext(device=torch.device("cuda", key))
    return _CONTEXTS[key]


def nvdiffrast_available(device: torch.device | str = "cuda") -> bool:
    """True when CUDA is present and the nvdiffrast plugin builds/loads (tried once, cached)."""
    global _DR_ERROR
    # The cached answers first: this runs at every rasterisation, and torch.cuda.is_available()
    # asks the driver each time (nvdiffrast only loads where CUDA is available).
    if _DR is not None:
        return True
    if _DR_ERROR is not None:
        return False
    if not torch.cuda.is_available():
        return False
    try:
        _cuda_context(torch.device(device))
        return True
    except Exception as e:
        _DR_ERROR = e
        log.warning(
            "nvdiffrast unavailable (%s: %s); mesh rendering falls back to the torch backend",
            type(e).__name__,
            e,
        )
        return False


def preload_kernels(backend: str, device: torch.device | str) -> None:
    """Load the nvdiffrast plugin now when ``backend`` would use it on ``device``; a failure is left
    for the first render to report (the GPU warm-up thread calls this while the weights load)."""
    if backend in ("auto", "nvdiffrast") and torch.device(device).type == "cuda":
        try:
            _load_nvdiffrast()
        except Exception as e:
            log.debug("nvdiffrast preload failed: %s", e)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to ``"nvdiffrast"`` on CUDA when it works, else ``"torch"``; validate names."""
    if backend not in ("auto", "nvdiffrast", "torch"):
        raise ValueError(f"unknown mesh backend {backend!r}; use auto, nvdiffrast or torch")
    if backend == "auto":
        return "nvdiffrast" if device.type == "cuda" and nvdiffrast_available(device) else "torch"
    if backend == "nvdiffrast" and device.type != "cuda":
        raise ValueError("the nvdiffrast backend needs the mesh and cameras on a CUDA device")
    return backend


# -------------------------------------------------------------------------------------- torch z-buffer
def _edge(a: torch.Tensor, b: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of (a, b, p); a, b: [...,2]."""
    return (b[..., 0] - a[..., 0]) * (py - a[..., 1]) - (b[..., 1] - a[..., 1]) * (px - a[..., 0])


def zbuffer(
    xy: torch.Tensor,
    z: torch.Tensor,
    f: torch.Tensor,
    height: int,
    width: int,
    near: float = 1e-3,
    max_pairs: int = 1 << 21,
) -> torch.Tensor:
    """Nearest triangle per pixel, int64 ``[V,H,W]`` (-1 = none).

    ``xy``: float ``[V,N,2]`` pixel coordinates (x right, y down; pixel (i,j) centre at (j+.5, i+.5)).
    ``z``: float ``[V,N]`` positive depth (smaller = closer); depth is interpolated as 1/z, which is
    linear in screen space. ``f``: int64 ``[F,3]``. Both orientations are rasterised (no culling).
    """
    V, nf, H, W = xy.shape[0], f.shape[0], height, width
    dev = xy.device
    txy = xy[:, f]  # [V,F,3,2]
    tz = z[:, f]  # [V,F,3]
    area = _edge(txy[..., 0, :], txy[..., 1, :], txy[..., 2, 0], txy[..., 2, 1])  # [V,F]
    lo, hi = txy.min(dim=2).values, txy.max(dim=2).values
    xmin = torch.ceil(lo[..., 0] - 0.5).clamp(min=0)
    xmax = torch.floor(hi[..., 0] - 0.5).clamp(max=W - 1)
    ymin = torch.ceil(lo[..., 1] - 0.5).clamp(min=0)
    ymax = torch.floor(hi[..., 1] - 0.5).clamp(max=H - 1)
    nx = (xmax - xmin + 1).clamp(min=0)
    ny = (ymax - ymin + 1).clamp(min=0)
    ok = (tz > near).all(-1) & (area.abs() > 1e-12) & torch.isfinite(area)
    count = torch.where(ok, nx * ny, torch.zeros_like(nx)).reshape(-1).long()
    ids = count.nonzero().squeeze(1)  # flat (view * F + tri) with candidate pixels
    cnt = count[ids]
    cum = cnt.cumsum(0)
    txy, tz, area = txy.reshape(-1, 3, 2), tz.reshape(-1, 3), area.reshape(-1)
    xmin, ymin, nx = xmin.reshape(-1).long(), ymin.reshape(-1).long(), nx.reshape(-1).long()

    zbuf = torch.full((V * H * W,), float("inf"), device=dev)
    keys, tris, zs = [], [], []
    start, n = 0, len(ids)
    while start < n:
        base = cum[start - 1] if start > 0 else torch.zeros((), dtype=cum.dtype, device=dev)
        end = int(torch.searchsorted(cum, base + max_pairs, right=True))
        end = max(end, start + 1)
        sel, c = ids[start:end], cnt[start:end]
        pid = torch.repeat_interleave(torch.arange(len(sel), device=dev), c)
        local = torch.arange(int(c.sum()), device=dev) - (c.cumsum(0) - c)[pid]
        vt = sel[pid]
        w = nx[vt]
        px = xmin[vt] + local % w
        py = ymin[vt] + local // w
        cx, cy = px.float() + 0.5, py.float() + 0.5
        t = txy[vt]
        a = area[vt]
        b0 = _edge(t[:, 1], t[:, 2], cx, cy) / a
        b1 = _edge(t[:, 2], t[:, 0], cx, cy) / a
        b2 = 1.0 - b0 - b1
        inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        tzv = tz[vt[inside]]
        zinv = b0[inside] / tzv[:, 0] + b1[inside] / tzv[:, 1] + b2[inside] / tzv[:, 2]
        key = (vt[inside] // nf) * (H * W) + py[inside] * W + px[inside]
        zpix = 1.0 / zinv
        zbuf.scatter_reduce_(0, key, zpix, reduce="amin")
        keys.append(key)
        tris.append(vt[inside] % nf)
        zs.append(zpix)
        start = end
    tri_buf = torch.full((V * H * W,), -1, dtype=torch.long, device=dev)
    if keys:
        key, tri, zpix = torch.cat(keys), torch.cat(tris), torch.cat(zs)
        win = zpix <= zbuf[key]
        # Exact depth ties (shared edges) go to the larger triangle id: deterministic.
        tri_buf.scatter_reduce_(0, key[win], tri[win], reduce="amax")
    return tri_buf.view(V, H, W)


def barycentrics(
    xy: torch.Tensor, z: torch.Tensor | None, f: torch.Tensor, tri_id: torch.Tensor
) -> torch.Tensor:
    """Barycentrics ``[V,H,W,3]`` at pixel centres for given triangle ids (perspective-correct with z)."""
    V, H, W = tri_id.shape
    dev = xy.device
    bary = torch.zeros(V, H, W, 3, device=dev)
    idx = (tri_id >= 0).reshape(-1).nonzero().squeeze(1)
    if len(idx) == 0:
        return bary
    view = idx // (H * W)
    py = (idx // W) % H
    px = idx % W
    corners = f[tri_id.reshape(-1)[idx]]  # [P,3]
    t = xy[view[:, None], corners]  # [P,3,2]
    cx, cy = px.float() + 0.5, py.float() + 0.5
    a = _edge(t[:, 0], t[:, 1], t[:, 2, 0], t[:, 2, 1])
    b = torch.stack([_edge(t[:, 1], t[:, 2], cx, cy) / a, _edge(t[:, 2], t[:, 0], cx, cy) / a], -1)
    b = torch.cat([b, 1.0 - b.sum(-1, keepdim=True)], -1)
    if z is not None:
        b = b / z[view[:, None], corners]
        b = b / b.sum(-1, keepdim=True)
    bary.view(-1, 3)[idx] = b
    return bary


def _rasterize_torch(mesh: Mesh, cams: Cameras, near: float) -> tuple[torch.Tensor, torch.Tensor]:
    w2c = cams.viewmats().to(mesh.v.device)
    K = cams.Ks().to(mesh.v.device)
    pc = torch.einsum("vij,nj->vni", w2c[:, :3, :3], mesh.v) + w2c[:, None, :3, 3]  # [V,N,3] OpenCV
    z = pc[..., 2]
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    xy = torch.stack(
        [
            K[:, None, 0, 0] * pc[..., 0] / zs + K[:, None, 0, 2],
            K[:, None, 1, 1] * pc[..., 1] / zs + K[:, None, 1, 2],
        ],
        dim=-1,
    )
    tri_id = zbuffer(xy, z, mesh.f, cams.height, cams.width, near=near)
    return tri_id, barycentrics(xy, z, mesh.f, tri_id)


# ------------------------------------------------------------------------------------------ common
def _covered(tri_id: torch.Tensor, bary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat indices [P] of covered pixels, their triangle ids [P], barycentrics [P,3])."""
    idx = (tri_id >= 0).reshape(-1).nonzero().squeeze(1)
    return idx, tri_id.reshape(-1)[idx], bary.reshape(-1, 3)[idx]


def _scatter_image(idx: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Pixel values ``vals [P,C]`` at flat indices into a zero image ``[V,H,W,C]``."""
    out = torch.zeros(shape[0] * shape[1] * shape[2], vals.shape[-1], dtype=vals.dtype, device=vals.device)
    return out.index_put((idx,), vals).view(*shape, vals.shape[-1])


def interpolate(raster: Raster, attr: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex ``attr [N,C]`` (indexed by ``faces [F,3]``) to pixels: ``[V,H,W,C]``, 0 off-mesh.

    Differentiable w.r.t. ``attr`` (e.g. per-vertex colours); only covered pixels are computed.
    """
    idx, tri, b = _covered(raster.tri_id, raster.bary)
    vals = (attr[faces[tri]] * b[..., None].to(attr.dtype)).sum(1)
    return _scatter_image(idx, vals, tuple(raster.tri_id.shape))


def _finish(
    mesh: Mesh, cams: Cameras, tri_id, bary, uv=None, uv_da=None, backend="torch", **dr_state
) -> Raster:
    """Attributes shared by both backends, from triangle ids and barycentrics."""
    shape = tuple(tri_id.shape)
    idx, tri, b = _covered(tri_id, bary)
    # Positions and normals share the face indices: one gather for both.
    pn = (torch.cat([mesh.v, mesh.vn], -1)[mesh.f[tri]] * b[..., None]).sum(1)  # [P,6]
    pos, nrm = pn[:, :3], F.normalize(pn[:, 3:], dim=-1)
    view = idx // (shape[1] * shape[2])
    campos = cams.campos().to(pos.device)[view]
    w2c = cams.viewmats().to(pos.device)[view]
    depth = (w2c[:, 2, :3] * pos).sum(-1, keepdim=True) + w2c[:, 2, 3:]
    viewcos = (nrm * F.normalize(campos - pos, dim=-1)).sum(-1, keepdim=True)
    if uv is None and mesh.has_uv:
        uv = _scatter_image(idx, (mesh.vt[mesh.ft[tri]] * b[..., None]).sum(1), shape)
    img = _scatter_image(idx, torch.cat([pos, nrm, depth, viewcos, torch.ones_like(depth)], -1), shape)
    img = img.permute(0, 3, 1, 2)
    return Raster(
        tri_id=tri_id,
        bary=bary,
        uv=uv,
        uv_da=uv_da,
        alpha=img[:, 8:9],
        depth=img[:, 6:7],
        normal=img[:, 3:6],
        position=img[:, 0:3],
        viewcos=img[:, 7:8],
        backend=backend,
        **dr_state,
    )


def _rasterize_nvdiffrast(mesh: Mesh, cams: Cameras) -> Raster:
    dr = _load_nvdiffrast()
    ctx = _cuda_context(mesh.v.device)
    mvp = cams.mvp().to(mesh.v.device)
    pos_clip = torch.einsum("vij,nj->vni", mvp[:, :, :3], mesh.v) + mvp[:, None, :, 3]
    pos_clip = pos_clip.contiguous()
    tri = mesh.f.to(torch.int32).contiguous()
    rast, rast_db = dr.rasterize(ctx, pos_clip, tri, (cams.height, cams.width))
    tri_id = rast[..., 3].long() - 1
    b01 = rast[..., :2]
    bary = torch.cat([b01, 1.0 - b01.sum(-1, keepdim=True)], -1) * (tri_id >= 0)[..., None]
    uv = uv_da = None
    if mesh.has_uv:
        uv, uv_da = dr.interpolate(
            mesh.vt[None].contiguous(),
            rast,
            mesh.ft.to(torch.int32).contiguous(),
            rast_db=rast_db,
            diff_attrs="all",
        )
    return _finish(
        mesh,
        cams,
        tri_id,
        bary,
        uv=uv,
        uv_da=uv_da,
        backend="nvdiffrast",
        rast=rast,
        pos_clip=pos_clip,
        tri=tri,
        topology_hash=dr.antialias_construct_topology_hash(tri),
    )


@torch.no_grad()
def rasterize(mesh: Mesh, cams: Cameras, backend: str = "auto", near: float = 1e-3) -> Raster:
    """Rasterise ``mesh`` for all V cameras in one call (no gradients: geometry is fixed).

    ``cams`` is moved to the mesh's device. ``backend``: ``"auto"`` (nvdiffrast on CUDA when it
    builds, else torch), ``"nvdiffrast"`` or ``"torch"``.
    """
    cams = cams.to(mesh.device)
    backend = resolve_backend(backend, mesh.device)
    if backend == "nvdiffrast":
        return _rasterize_nvdiffrast(mesh, cams)
    tri_id, bary = _rasterize_torch(mesh, cams, near)
    return _finish(mesh, cams, tri_id, bary, backend="torch")
