"""3D Gaussian parameters, their activations, the paper's initialisation and the Adam set-up.

Parameters are plain leaf tensors (``requires_grad=True``) stored in their raw, unconstrained
form, as in 3DGS: ``means [N,3]`` world, ``scales [N,3]`` log, ``quats [N,4]`` (w,x,y,z, not
normalised), ``opacities [N]`` logit, ``sh0 [N,1,3]`` SH DC (3DGS ``f_dc``), ``shN [N,K,3]``
(``f_rest``, ``K = (sh_degree+1)^2 - 1``).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from core.adam import Adam
from core.cameras import Cameras, orbit_cameras

log = logging.getLogger(__name__)

__all__ = [
    "SH_C0",
    "GaussianModel",
    "rgb_to_sh",
    "sh_to_rgb",
    "quat_to_rotmat",
    "knn_mean_sq_dist",
    "xyz_lr",
    "update_learning_rate",
    "DEFAULT_LRS",
    "PARAM_GROUPS",
]

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))

# Spec 1.4: xyz lr = position_lr 1e-3 x spatial_lr_scale 10.
DEFAULT_LRS = {
    "xyz": 1e-2,
    "f_dc": 0.01,
    "f_rest": 0.0005,
    "opacity": 0.05,
    "scaling": 0.005,
    "rotation": 0.0005,
}
# Optimiser group name -> model attribute (group names are the authors', so logs compare).
PARAM_GROUPS = {
    "xyz": "means",
    "f_dc": "sh0",
    "f_rest": "shN",
    "opacity": "opacities",
    "scaling": "scales",
    "rotation": "quats",
}


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0,1] -> SH DC coefficient (same shape)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    """SH DC coefficient -> RGB (same shape, not clamped)."""
    return sh * SH_C0 + 0.5


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[...,4]`` (w,x,y,z, any norm) -> rotation matrices ``[...,3,3]``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def knn_mean_sq_dist(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean squared distance of each point ``[N,3]`` to its k nearest neighbours -> ``[N]``.

    Chunked ``cdist`` keeps memory at ``chunk x N`` (simple-knn's distCUDA2 does the same job).
    """
    n = points.shape[0]
    kk = min(k, max(n - 1, 0))
    if kk == 0:
        return torch.ones(n, device=points.device, dtype=points.dtype)
    out = []
    for s in range(0, n, chunk):
        d2 = torch.cdist(points[s : s + chunk], points).square()
        # The k+1 smallest include the point itself (distance 0); drop it.
        vals = d2.topk(kk + 1, dim=1, largest=False).values[:, 1:]
        out.append(vals.mean(dim=1))
    return torch.cat(out)


def _ball_points(n: int, radius: float, g: torch.Generator) -> torch.Tensor:
    """``n`` points ``[n,3]`` uniform in the volume of a ball (CPU, from ``g``)."""
    r = radius * torch.rand(n, generator=g).pow(1.0 / 3.0)  # cube root: uniform in volume, not on radius
    d = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return d * r[:, None]


def xyz_lr(step: int, lr_init: float = 1e-2, lr_final: float = 2e-4, max_steps: int = 500) -> float:
    """The authors' exponential xyz schedule (docs/method.md#learning-rates): log-linear ``lr_init -> lr_final``."""
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1.0 - t) + math.log(lr_final) * t)


def update_learning_rate(optimizer: Adam, step: int, **schedule) -> float:
    """Set the ``xyz`` group's lr for ``step``; returns it (other groups are constant)."""
    lr = xyz_lr(step, **schedule)
    for group in optimizer.param_groups:
        if group.get("name") == "xyz":
            group["lr"] = lr
    return lr


class GaussianModel:
    """A set of N 3D Gaussians (see the module docstring for the tensors and their spaces)."""

    def __init__(
        self,
        means: torch.Tensor,
        scales: torch.Tensor,
        quats: torch.Tensor,
        opacities: torch.Tensor,
        sh0: torch.Tensor,
        shN: torch.Tensor | None = None,
        sh_degree: int = 0,
    ) -> None:
        n = means.shape[0]
        k = (sh_degree + 1) ** 2 - 1
        if shN is None:
            shN = torch.zeros(n, k, 3, device=means.device, dtype=means.dtype)
        assert means.shape == (n, 3) and scales.shape == (n, 3) and quats.shape == (n, 4)
        assert opacities.shape == (n,) and sh0.shape == (n, 1, 3) and shN.shape == (n, k, 3), (
            opacities.shape,
            sh0.shape,
            shN.shape,
        )
        self.sh_degree = sh_degree
        self.means = self._leaf(means)
        self.scales = self._leaf(scales)
        self.quats = self._leaf(quats)
        self.opacities = self._leaf(opacities)
        self.sh0 = self._leaf(sh0)
        self.shN = self._leaf(shN)

    @staticmethod
    def _leaf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone().float().contiguous().requires_grad_(True)

    # ----------------------------------------------------------------- construction
    @classmethod
    def init_ball(
        cls,
        num_pts: int = 5000,
        radius: float = 0.5,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sh_degree: int = 0,
        generator: torch.Generator | None = None,
    ) -> "GaussianModel":
        """The paper's init (docs/method.md#gaussian-init): points uniform in the volume of a ball, grey, opacity 0.1.

        Draws on a CPU ``torch.Generator`` (seeded) so the init is the same on every device.
        """
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        means = _ball_points(num_pts, radius, g).to(device)
        return cls._grey_at(means, g, sh_degree)

    @classmethod
    def init_silhouette(
        cls,
        num_pts: int,
        radius: float,
        outer_radius: float,
        cams: Cameras,
        mask: torch.Tensor,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sh_degree: int = 0,
    ) -> "GaussianModel":
        """Points uniform in the silhouette's cone: within ``radius``, and out to ``outer_radius`` on the rays the ball misses.

        ``mask``: ``[1,H,W]`` at ``cams[0]``, the input view. A point is kept when it projects onto
        the mask and either lies in the ball of ``radius`` (the paper's) or on a ray from the camera
        that misses that ball. Why: the ball misses object parts towards the corners of the unit
        box (a small object beside a big one): no Gaussian starts there and none is ever cloned
        there; within the ball, points off the silhouette would only start as ghosts. Candidates
        are drawn in rounds from the seeded CPU generator; a mask covering nothing falls back to
        :meth:`init_ball`.
        """
        g = torch.Generator().manual_seed(seed)
        m = (mask.detach().float().cpu()[0] > 0.5).float()
        if not bool(m.any()):
            return cls.init_ball(num_pts, radius, device=device, sh_degree=sh_degree, generator=g)
        # The pose is rebuilt on the CPU, so the points do not depend on the device the cameras live on.
        cams = orbit_cameras(
            cams.elevation[:1].cpu(), cams.azimuth[:1].cpu(), cams.radius[:1].cpu(), cams.fovy, cams.height
        )
        eye = cams.campos()[0]
        H, W = m.shape
        kept: list[torch.Tensor] = []
        have = 0
        for _ in range(64):
            p = _ball_points(4 * num_pts, max(radius, outer_radius), g)
            xy, z = cams.project(p)
            u, v = xy[0].floor().long().unbind(-1)
            ray = F.normalize(p - eye, dim=-1)
            misses = (
                torch.linalg.cross(eye.expand_as(ray), ray).norm(dim=-1) > radius
            )  # ray's distance to the origin
            ok = (
                (z[0] > 1e-6)
                & (u >= 0)
                & (u < W)
                & (v >= 0)
                & (v < H)
                & ((p.norm(dim=-1) <= radius) | misses)
            )
            ok[ok.clone()] = m[v[ok], u[ok]] > 0
            kept.append(p[ok])
            have += int(ok.sum())
            if have >= num_pts:
                break
        means = torch.cat(kept)[:num_pts]
        if len(means) == 0:
            return cls.init_ball(num_pts, radius, device=device, sh_degree=sh_degree, generator=g)
        if len(means) < num_pts:
            log.warning(
                "the input mask's cone is small: %d initial Gaussians instead of %d", len(means), num_pts
            )
        return cls._grey_at(means.to(device), g, sh_degree)

    @classmethod
    def _grey_at(cls, means: torch.Tensor, g: torch.Generator, sh_degree: int) -> "GaussianModel":
        """The authors' initial attributes at ``means`` ``[N,3]``: grey, isotropic at the 3-NN distance, opacity 0.1."""
        num_pts, device = len(means), means.device
        # Authors: colours = SH2RGB(U/255), then f_dc = RGB2SH(colours) = U/255 (grey ~0.5).
        sh0 = (torch.rand(num_pts, 1, 3, generator=g) / 255.0).to(device)
        d2 = knn_mean_sq_dist(means).clamp_min(1e-7)
        scales = torch.log(torch.sqrt(d2))[:, None].repeat(1, 3)
        quats = torch.zeros(num_pts, 4, device=device)
        quats[:, 0] = 1.0
        opacities = torch.logit(torch.full((num_pts,), 0.1, device=device))
        return cls(means, scales, quats, opacities, sh0, None, sh_degree)

    # ----------------------------------------------------------------- accessors
    @property
    def num_points(self) -> int:
        """N, the number of Gaussians."""
        return self.means.shape[0]

    def __len__(self) -> int:
        return self.num_points

    @property
    def device(self) -> torch.device:
        return self.means.device

    def get_scales(self) -> torch.Tensor:
        """Activated scales ``[N,3]`` (exp), world units (standard deviations)."""
        return torch.exp(self.scales)

    def get_opacities(self) -> torch.Tensor:
        """Activated opacities ``[N]`` in (0,1) (sigmoid)."""
        return torch.sigmoid(self.opacities)

    def get_quats(self) -> torch.Tensor:
        """Unit quaternions ``[N,4]`` (w,x,y,z)."""
        return F.normalize(self.quats, dim=-1)

    def get_colors(self) -> torch.Tensor:
        """View-independent RGB ``[N,3]`` from the SH DC term: ``SH0*C0 + 0.5`` clamped at 0."""
        return torch.clamp_min(sh_to_rgb(self.sh0[:, 0]), 0.0)

    def get_sh(self) -> torch.Tensor:
        """All SH coefficients ``[N,(deg+1)^2,3]`` (DC first)."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def get_covariances(self) -> torch.Tensor:
        """World covariances ``[N,3,3]`` = (R S)(R S)^T."""
        M = quat_to_rotmat(self.quats) * self.get_scales()[:, None, :]
        return M @ M.transpose(1, 2)

    def parameters(self) -> dict[str, torch.Tensor]:
        """Optimiser group name -> leaf tensor."""
        return {name: getattr(self, attr) for name, attr in PARAM_GROUPS.items()}

    def to(self, device: torch.device | str) -> "GaussianModel":
        """A copy on ``device`` (new leaves: rebuild the optimiser afterwards)."""
        return GaussianModel(
            self.means.to(device),
            self.scales.to(device),
            self.quats.to(device),
            self.opacities.to(device),
            self.sh0.to(device),
            self.shN.to(device),
            self.sh_degree,
        )

    def clone(self) -> "GaussianModel":
        """A detached deep copy."""
        return self.to(self.device)

    # ----------------------------------------------------------------- optimiser
    def make_optimizer(self, lrs: dict[str, float] | None = None) -> Adam:
        """Adam with the authors' groups (docs/method.md#learning-rates), eps 1e-15 (fused kernel, core.adam).

        An empty ``f_rest`` (sh_degree 0) gets no group: nothing to optimise, and fused kernels
        need not see zero-size tensors.
        """
        lrs = {**DEFAULT_LRS, **(lrs or {})}
        groups = []
        for name, tensor in self.parameters().items():
            if tensor.numel() == 0:
                continue
            groups.append({"params": [tensor], "lr": lrs[name], "name": name})
        return Adam(groups, lr=0.0, eps=1e-15)
