"""The triangle-mesh container shared by I/O, UV unwrapping, rendering and baking.

Conventions (the world is the one of ``core/cameras.py``: +Y up, reference view on +Z):

* ``v``: float32 ``[N,3]`` positions; ``f``: int64 ``[F,3]`` triangles, counter-clockwise seen from
  outside (right-handed), indices into ``v``.
* ``vn``: float32 ``[N,3]`` unit vertex normals. Computed (area-weighted face normals) when missing.
* ``vt``: float32 ``[T,2]`` texture coordinates, **u right, v up** (the OBJ convention; glTF stores
  ``1 - v`` and :mod:`mesh_renderer.io` converts at the file edge). ``ft``: int64 ``[F,3]`` indices
  into ``vt`` (may differ from ``f``, as in OBJ files; after :func:`mesh_renderer.uv.unwrap_uv`
  ``ft == f``).
* ``albedo``: float32 ``[Ht,Wt,3]`` in [0,1]; **row 0 is the top of the image file**, i.e. texels
  near ``v = 1``. Texel ``(r, c)`` has its centre at ``u = (c + 0.5) / Wt``, ``v = 1 - (r + 0.5) / Ht``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["Mesh", "vertex_normals", "face_normals"]


def _as_tensor(x, dtype: torch.dtype, device=None) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x, dtype=dtype, device=device)


def face_normals(v: torch.Tensor, f: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Face normals ``[F,3]`` of triangles ``f [F,3]`` over ``v [N,3]`` (length 2*area if not normalised)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)
    return torch.nn.functional.normalize(n, dim=-1) if normalize else n


def vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[N,3]``; isolated vertices get ``+Y``."""
    fn = face_normals(v, f, normalize=False)  # length = 2*area, so the sum is area-weighted
    vn = torch.zeros_like(v)
    vn.index_add_(0, f.reshape(-1), fn.repeat_interleave(3, dim=0))
    length = vn.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 1.0, 0.0], dtype=v.dtype, device=v.device).expand_as(vn)
    return torch.where(length > 1e-20, vn / length.clamp_min(1e-20), fallback)


@dataclass
class Mesh:
    """A triangle mesh with optional UVs and albedo texture (conventions: module docstring)."""

    v: torch.Tensor
    f: torch.Tensor
    vn: torch.Tensor | None = None
    vt: torch.Tensor | None = None
    ft: torch.Tensor | None = None
    albedo: torch.Tensor | None = None

    def __post_init__(self) -> None:
        device = self.v.device if isinstance(self.v, torch.Tensor) else None
        self.v = _as_tensor(self.v, torch.float32, device)
        self.f = _as_tensor(self.f, torch.int64, self.v.device)
        self.vt = _as_tensor(self.vt, torch.float32, self.v.device)
        self.ft = _as_tensor(self.ft, torch.int64, self.v.device)
        self.albedo = _as_tensor(self.albedo, torch.float32, self.v.device)
        self.vn = _as_tensor(self.vn, torch.float32, self.v.device)
        if self.vt is not None and self.ft is None:
            self.ft = self.f  # UVs indexed like the vertices (glTF layout)
        if self.vn is None or self.vn.shape != self.v.shape:
            self.vn = vertex_normals(self.v, self.f)
        if self.v.ndim != 2 or self.v.shape[1] != 3 or self.f.ndim != 2 or self.f.shape[1] != 3:
            raise ValueError(
                f"Mesh needs v [N,3] and f [F,3], got {tuple(self.v.shape)} and {tuple(self.f.shape)}"
            )
        if self.ft is not None and self.ft.shape != self.f.shape:
            raise ValueError(f"ft {tuple(self.ft.shape)} must match f {tuple(self.f.shape)}")

    @property
    def device(self) -> torch.device:
        return self.v.device

    @property
    def has_uv(self) -> bool:
        """True when the mesh has texture coordinates."""
        return self.vt is not None and self.ft is not None

    def __repr__(self) -> str:
        tex = None if self.albedo is None else tuple(self.albedo.shape)
        nvt = None if self.vt is None else len(self.vt)
        return f"Mesh(v={len(self.v)}, f={len(self.f)}, vt={nvt}, albedo={tex}, device={self.device})"

    def to(self, device: torch.device | str) -> "Mesh":
        """The same mesh with every tensor on ``device``."""
        mv = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(
            self,
            v=mv(self.v),
            f=mv(self.f),
            vn=mv(self.vn),
            vt=mv(self.vt),
            ft=mv(self.ft),
            albedo=mv(self.albedo),
        )

    def vertex_normals(self) -> torch.Tensor:
        """Area-weighted unit vertex normals ``[N,3]`` recomputed from ``v`` and ``f``."""
        return vertex_normals(self.v, self.f)

    def bbox(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-aligned bounds (min ``[3]``, max ``[3]``)."""
        return self.v.min(0).values, self.v.max(0).values

    def normalized(self, extent: float = 1.0) -> "Mesh":
        """A copy centred on its bounding-box centre and scaled so its largest side is ``extent``."""
        lo, hi = self.bbox()
        scale = extent / (hi - lo).max().clamp_min(1e-12)
        return replace(self, v=(self.v - (lo + hi) / 2) * scale)

    def with_albedo(self, albedo: torch.Tensor) -> "Mesh":
        """A copy with another albedo texture ``[Ht,Wt,3]`` in [0,1]."""
        return replace(self, albedo=albedo)
