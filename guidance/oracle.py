"""The oracle teacher: a reference mesh plays a perfect multi-view diffusion model.

For the requested cameras the oracle renders the reference object (its texture, or a fixed
procedural 3D colour field for geometry-only meshes) on white at ``image_size``; that render is the
model's x0. Its "latent space" is the identity at pixel resolution (``x = 2 img - 1``) and its noise
prediction is the exact ``eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``, so CFG changes nothing.
SIR driven by it must reconstruct the reference object: this is how the 3D pipeline is tested end to
end without model weights (DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.cameras import Cameras, orbit_cameras
from core.errors import UserError
from guidance.denoiser import Denoiser, NoiseSource
from guidance.schedule import DDIMSchedule

__all__ = ["OracleDenoiser", "OracleCond", "color_field"]

# Frequencies (cycles per unit length of the normalised object) and phases of the smooth hue part.
_SMOOTH_FREQ = torch.tensor([[0.9, 0.4, -0.6], [-0.5, 1.0, 0.3], [0.4, -0.7, 0.8]])
_SMOOTH_PHASE = torch.tensor([0.3, 2.1, 4.2])
_FINE_FREQ = 6.0  # cycles per unit: a fine 3D pattern, so texture detail matters


def color_field(p: torch.Tensor) -> torch.Tensor:
    """Procedural colour of 3D points ``p`` float ``[...,3]`` (normalised object space) -> ``[...,3]`` in [0,1].

    A pure function of the point: smooth hues (low-frequency sinusoids per channel) times a finer
    3D sine pattern of contrast 0.25.
    """
    f = _SMOOTH_FREQ.to(p)
    ph = _SMOOTH_PHASE.to(p)
    smooth = 0.5 + 0.4 * torch.sin(2 * math.pi * (p @ f.T) + ph)
    w = 2 * math.pi * _FINE_FREQ
    fine = torch.sin(w * p[..., 0]) * torch.sin(w * p[..., 1]) * torch.sin(w * p[..., 2])
    return (smooth * (1.0 + 0.25 * fine[..., None])).clamp(0.0, 1.0)


@dataclass
class OracleCond:
    """Per-iteration conditioning of the oracle: ``x0`` float32 [B,3,S,S] in [-1,1] (its renders)."""

    x0: torch.Tensor


class OracleDenoiser(Denoiser):
    """A reference mesh as a perfect denoiser (identity latents at ``image_size`` pixels)."""

    def __init__(
        self,
        mesh: str | Path,
        image_size: int = 256,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        schedule: DDIMSchedule | None = None,
        radius: float = 2.0,
        fovy: float = 49.1,
    ):
        """``mesh``: .obj/.glb path, normalised (bbox centred at the origin, max extent 1.0)."""
        super().__init__()
        from mesh_renderer import load_mesh

        path = Path(mesh)
        if not path.is_file():
            raise UserError(f"oracle mesh {str(path)!r} does not exist; set oracle.mesh=/path/to/mesh.obj")
        self.device = torch.device(device)
        self.mesh = load_mesh(path).normalized(1.0).to(self.device)
        self.textured = self.mesh.has_uv and self.mesh.albedo is not None
        self.backend = backend
        self.image_size = int(image_size)
        self.latent_size = self.image_size
        self.latent_channels = 3
        self.views_per_group = 1
        self.schedule = schedule or DDIMSchedule()
        self.radius, self.fovy = float(radius), float(fovy)
        self.ref_elevation = 0.0

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, cams: Cameras, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference object at ``cams`` on white: (rgb float32 [B,3,S,S] in [0,1], alpha [B,1,S,S])."""
        from mesh_renderer import composite, rasterize, shade

        S = self.image_size if size is None else int(size)
        cams = cams.resized(S).to(self.device)
        raster = rasterize(self.mesh, cams, backend=self.backend)
        if self.textured:
            out = shade(raster, self.mesh.albedo, bg=1.0)
        else:
            # Colour from the 3D field at each pixel's surface point (exact, no UV atlas needed).
            col = color_field(raster.position.permute(0, 2, 3, 1))
            out = composite(raster, col, bg=1.0)
        return out.rgb.float().clamp(0, 1), out.alpha.float()

    def reference_image(
        self, elevation: float, size: int, azimuth: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input photo: (rgb [3,S,S] on white, mask [1,S,S]) rendered at (elevation, azimuth)."""
        cams = orbit_cameras(elevation, azimuth, self.radius, self.fovy, size, device=self.device)
        rgb, alpha = self.render(cams, size)
        return rgb[0], alpha[0]

    # ------------------------------------------------------------------ Denoiser
    def set_reference(self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None) -> None:
        """Nothing to compute: the oracle knows the object. Stores the elevation only."""
        self.ref_elevation = float(elevation)

    def encode(self, images: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        """``2 img - 1`` float32 [B,3,S,S]; consumes one draw when ``noise`` is given (zero-variance posterior)."""
        x = images.to(self.device, torch.float32) * 2 - 1
        if noise is not None:
            noise.randn(x.shape, self.device)  # keep the documented draw order of a real VAE
        return x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(x + 1) / 2`` clamped to [0,1]."""
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def prepare(self, cams: Cameras) -> OracleCond:
        """Render x0 at the B cameras once per iteration."""
        rgb, _ = self.render(cams)
        return OracleCond(x0=rgb * 2 - 1)

    def _eps(self, x: torch.Tensor, t: int, cond: OracleCond) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t)
        return (x - cond.x0 * math.sqrt(ab)) / math.sqrt(1.0 - ab)

    def eps_cfg(self, x: torch.Tensor, t: int, cond: OracleCond, scale: float) -> torch.Tensor:
        """Exact eps for x0 = the renders (CFG is a no-op: both branches agree)."""
        self._count("cfg", 2 * x.shape[0])
        return self._eps(x, t, cond)

    def eps_uncond(self, x: torch.Tensor, t: int, cond: OracleCond) -> torch.Tensor:
        """Exact eps for x0 = the renders."""
        self._count("uncond", x.shape[0])
        return self._eps(x, t, cond)
