"""Cameras: the ONE convention of this project, and converters to each library's.

Convention (the same as DreamGaussian / MicroDreamer / kiui, so user habits carry over):

* World: right-handed, +Y up. The object sits at the origin; the reference photo is taken
  from azimuth 0, which is on the +Z axis. Azimuth 90 looks from +X.
* ``elevation`` is in degrees with DreamGaussian's sign: **negative elevation puts the camera
  above the object** (``elevation=-30`` = looking down at 30 degrees). Camera position:
  ``(r cos(e) sin(a), -r sin(e), r cos(e) cos(a))``.
* Poses are **camera-to-world, OpenGL axes** (camera looks along its -Z, +Y up, +X right),
  ``c2w: float [V,4,4]``.
* Intrinsics are pinhole with square pixels: ``fx = fy = H / (2 tan(fovy/2))``, principal point at
  the image centre; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so its centre is ``j + 0.5``.
* Images are ``[V,C,H,W]``, row 0 at the top.

Converters (the only places other conventions appear):

* :meth:`Cameras.viewmats` -> world-to-camera **OpenCV** ``[V,4,4]`` and :meth:`Cameras.Ks`
  ``[V,3,3]``: what gsplat and our reference rasterisers take.
* :meth:`Cameras.mvp` -> OpenGL clip matrices ``[V,4,4]`` for nvdiffrast, with y flipped so that
  nvdiffrast's row 0 is the top of the image.

Each diffusion model's camera embedding lives with its model (``guidance.models``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from core.defaults import DEFAULT_FOVY

__all__ = [
    "Cameras",
    "orbit_poses",
    "orbit_cameras",
    "focal_from_fovy",
    "sample_orbit_views",
    "DEFAULT_FOVY",
]


def focal_from_fovy(fovy_deg: float, height: int) -> float:
    """Focal length in pixels for a vertical field of view (degrees) and an image height."""
    return height / (2.0 * math.tan(math.radians(fovy_deg) / 2.0))


def orbit_poses(elevation: torch.Tensor, azimuth: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Camera-to-world OpenGL poses ``[V,4,4]`` looking at the origin.

    ``elevation``/``azimuth``: float ``[V]`` degrees (DreamGaussian sign: negative = above).
    ``radius``: float or ``[V]``. Elevations of exactly +-90 are clamped to +-89.99 so that the
    look-at frame stays defined.
    """
    elevation = torch.as_tensor(elevation, dtype=torch.float32)
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32, device=elevation.device)
    radius = _radius_like(radius, elevation)
    e = torch.deg2rad(elevation.clamp(-89.99, 89.99))
    a = torch.deg2rad(azimuth)
    campos = torch.stack(
        [radius * torch.cos(e) * torch.sin(a), -radius * torch.sin(e), radius * torch.cos(e) * torch.cos(a)],
        dim=-1,
    )
    back = torch.nn.functional.normalize(campos, dim=-1)  # camera +Z (it looks along -Z)
    # Built on the device (a torch.tensor from a list would be a blocking host->device copy).
    up_world = torch.zeros_like(back)
    up_world[:, 1].fill_(1.0)
    right = torch.nn.functional.normalize(torch.cross(up_world, back, dim=-1), dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.eye(4, device=campos.device).repeat(len(campos), 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = campos
    return c2w


def _radius_like(radius: torch.Tensor | float, elevation: torch.Tensor) -> torch.Tensor:
    """``radius`` as float32 of ``elevation``'s shape and device; a Python number makes no host->device copy."""
    if isinstance(radius, (int, float)):
        return torch.full(elevation.shape, float(radius), dtype=torch.float32, device=elevation.device)
    return torch.as_tensor(radius, dtype=torch.float32, device=elevation.device).expand_as(elevation)


def _rigid_inverse(c2w: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[V,4,4]``: cheaper and exact compared with a general inverse."""
    R = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.eye(4, device=c2w.device).repeat(len(c2w), 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3:] = -R @ c2w[:, :3, 3:]
    return w2c


@dataclass(frozen=True)
class Cameras:
    """A batch of V pinhole cameras on an orbit around the origin (see the module docstring).

    ``c2w``: float ``[V,4,4]`` camera-to-world, OpenGL axes. ``elevation``, ``azimuth``,
    ``radius``: float ``[V]`` (degrees, degrees, world units) - kept because the diffusion models
    are conditioned on them. ``fovy`` in degrees; ``height``/``width`` in pixels.
    """

    c2w: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    radius: torch.Tensor
    fovy: float
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> "Cameras":
        """The same cameras with tensors on ``device``."""
        return replace(
            self,
            c2w=self.c2w.to(device),
            elevation=self.elevation.to(device),
            azimuth=self.azimuth.to(device),
            radius=self.radius.to(device),
        )

    def resized(self, height: int, width: int | None = None) -> "Cameras":
        """The same poses and field of view at another image size."""
        return replace(self, height=height, width=height if width is None else width)

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(
            self,
            c2w=self.c2w[idx],
            elevation=self.elevation[idx],
            azimuth=self.azimuth[idx],
            radius=self.radius[idx],
        )

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        """Concatenate batches that share fovy and image size."""
        c0 = cams[0]
        assert all(c.fovy == c0.fovy and c.height == c0.height and c.width == c0.width for c in cams)
        return replace(
            c0,
            c2w=torch.cat([c.c2w for c in cams]),
            elevation=torch.cat([c.elevation for c in cams]),
            azimuth=torch.cat([c.azimuth for c in cams]),
            radius=torch.cat([c.radius for c in cams]),
        )

    @property
    def focal(self) -> float:
        """Focal length in pixels (fx = fy)."""
        return focal_from_fovy(self.fovy, self.height)

    def campos(self) -> torch.Tensor:
        """Camera centres in world space, float ``[V,3]``."""
        return self.c2w[:, :3, 3]

    def _memo(self, name: str, build) -> torch.Tensor:
        """``build()``, computed once per cameras object while ``c2w`` is unchanged.

        Stage 1 renders the same cameras at every step of an SIR iteration; each converter is a
        handful of kernel launches, and its steps are bound by such host work. The result is
        shared between callers: never modify it in place.
        """
        if self.c2w.requires_grad:  # a differentiable pose: a shared graph would be backed twice
            return build()
        key = (name, self.c2w.data_ptr(), self.c2w._version)
        memo = self.__dict__.get("_memo_cache")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_memo_cache", memo)  # frozen dataclass: not a field
        hit = memo.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = build()
        memo[name] = (key, value)
        return value

    def viewmats(self) -> torch.Tensor:
        """World-to-camera matrices in OpenCV axes (x right, y down, z forward), ``[V,4,4]`` (shared: read only)."""
        return self._memo("viewmats", self._build_viewmats)

    def _build_viewmats(self) -> torch.Tensor:
        # The constants of these converters are filled in on the device: they run every render,
        # and a torch.tensor from a Python list would be a host->device copy that waits for the GPU.
        diag = torch.ones(4, device=self.device)
        diag[1:3].fill_(-1.0)
        return _rigid_inverse(self.c2w @ torch.diag(diag))

    def Ks(self) -> torch.Tensor:
        """Pixel intrinsics ``[V,3,3]`` (principal point at the image centre; shared: read only)."""
        return self._memo("Ks", self._build_Ks)

    def _build_Ks(self) -> torch.Tensor:
        f = self.focal
        K = torch.zeros(3, 3, device=self.device)
        K[0, 0].fill_(f)
        K[1, 1].fill_(f)
        K[0, 2].fill_(self.width / 2.0)
        K[1, 2].fill_(self.height / 2.0)
        K[2, 2].fill_(1.0)
        return K.expand(len(self), 3, 3).contiguous()

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points ``[P,3]`` -> (pixel coordinates ``[V,P,2]``, depth ``[V,P]``) in every view.

        Pixel coordinates are x right, y down, with pixel ``(i, j)``'s centre at ``(j + 0.5, i + 0.5)``;
        the depth is along the view axis (positive in front of the camera). Points at depth <= 1e-6
        are divided by 1e-6 instead: callers test the depth for behind-the-camera points.
        """
        w2c = self.viewmats().to(points.device)
        K = self.Ks().to(points.device)
        pc = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [V,P,3] OpenCV
        z = pc[..., 2]
        zs = z.clamp_min(1e-6)
        x = K[:, None, 0, 0] * pc[..., 0] / zs + K[:, None, 0, 2]
        y = K[:, None, 1, 1] * pc[..., 1] / zs + K[:, None, 1, 2]
        return torch.stack([x, y], -1), z

    def projection(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """OpenGL projection ``[4,4]`` with y flipped (row 0 of a rasterised image is the top)."""
        f = self.focal
        P = torch.zeros(4, 4, device=self.device)
        P[0, 0].fill_(2.0 * f / self.width)
        P[1, 1].fill_(-2.0 * f / self.height)
        P[2, 2].fill_(-(far + near) / (far - near))
        P[2, 3].fill_(-(2.0 * far * near) / (far - near))
        P[3, 2].fill_(-1.0)
        return P

    def mvp(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """World-to-clip matrices ``[V,4,4]`` for nvdiffrast (``clip = mvp @ [x,y,z,1]``)."""
        return self.projection(near, far) @ _rigid_inverse(self.c2w)


def orbit_cameras(
    elevation,
    azimuth,
    radius: float | torch.Tensor = 2.0,
    fovy: float = DEFAULT_FOVY,
    height: int = 256,
    width: int | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Build :class:`Cameras` from elevations/azimuths in degrees (scalars, lists or ``[V]``)."""
    elevation = torch.atleast_1d(torch.as_tensor(elevation, dtype=torch.float32, device=device))
    azimuth = torch.atleast_1d(torch.as_tensor(azimuth, dtype=torch.float32, device=device))
    elevation, azimuth = torch.broadcast_tensors(elevation, azimuth)
    radius = _radius_like(radius, elevation).clone()
    return Cameras(
        c2w=orbit_poses(elevation, azimuth, radius),
        elevation=elevation.clone(),
        azimuth=azimuth.clone(),
        radius=radius,
        fovy=float(fovy),
        height=int(height),
        width=int(height if width is None else width),
    )


def elevation_offset_range(ref_elevation: float, min_ver: float, max_ver: float) -> tuple[int, int]:
    """The [low, high) range of per-view elevation offsets for a reference elevation (docs/method.md#view-sampling)."""
    lo = max(min(min_ver, min_ver - ref_elevation), -80 - ref_elevation)
    hi = min(max(max_ver, max_ver - ref_elevation), 80 - ref_elevation)
    return int(lo), int(hi)


def sample_orbit_views(
    rng: np.random.Generator,
    n_views: int,
    ref_elevation: float = 0.0,
    min_ver: float = -30,
    max_ver: float = 30,
    even: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample V views as the authors do: returns (elevation offsets, azimuths), int degrees ``[V]``.

    Azimuths are ``base + (360//V)*i`` with ``base`` uniform in ``[-180, -180 + 360//V)``
    (``even=True``), else independent in ``[-180, 180)``. Each view draws its own integer elevation
    offset in the range of :func:`elevation_offset_range`; the absolute elevation of a view is
    ``ref_elevation + offset``.
    """
    lo, hi = elevation_offset_range(ref_elevation, min_ver, max_ver)
    step = 360 // n_views
    base = int(rng.integers(-180, -180 + step))
    offsets = np.empty(n_views, dtype=np.int64)
    azimuths = np.empty(n_views, dtype=np.int64)
    for i in range(n_views):
        offsets[i] = rng.integers(lo, hi) if hi > lo else lo
        azimuths[i] = base + step * i if even else rng.integers(-180, 180)
    return offsets, azimuths
