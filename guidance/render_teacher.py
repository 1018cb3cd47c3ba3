"""A denoiser whose clean image at any camera is a render of a known object: the exact teacher.

Its "latent space" is the identity at pixel resolution (``x = 2 img - 1``) and its noise prediction
is the exact ``eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)`` for x0 = the render on white, so CFG
changes nothing. SIR driven by such a teacher must reconstruct its object. Subclasses implement
:meth:`RenderTeacher.render` (the oracle renders a mesh; tests use an analytic sphere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.cameras import DEFAULT_FOVY, Cameras, orbit_cameras
from guidance.denoiser import Denoiser, NoiseSource
from guidance.schedule import DDIMSchedule

__all__ = ["RenderTeacher", "RenderCond"]


@dataclass
class RenderCond:
    """Per-iteration conditioning of a render teacher: ``x0`` float32 [B,3,S,S] in [-1,1] (its renders)."""

    x0: torch.Tensor


class RenderTeacher(Denoiser):
    """Base of the exact teachers: identity latents at ``image_size`` pixels, eps from the renders."""

    def __init__(
        self,
        image_size: int,
        device: str | torch.device = "cpu",
        schedule: DDIMSchedule | None = None,
        radius: float = 2.0,
        fovy: float = DEFAULT_FOVY,
    ) -> None:
        """``radius``/``fovy``: the orbit camera of :meth:`reference_image`."""
        super().__init__()
        self.device = torch.device(device)
        self.image_size = int(image_size)
        self.latent_size = self.image_size
        self.latent_channels = 3
        self.views_per_group = 1
        self.schedule = schedule or DDIMSchedule()
        self.radius, self.fovy = float(radius), float(fovy)
        self.ref_elevation = 0.0

    def render(self, cams: Cameras, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The object at ``cams`` on white: (rgb float32 [B,3,S,S] in [0,1], alpha [B,1,S,S]); S = ``size`` or ``image_size``."""
        raise NotImplementedError

    def reference_image(
        self, elevation: float, size: int, azimuth: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input photo: (rgb [3,S,S] on white, mask [1,S,S]) rendered at (elevation, azimuth)."""
        cams = orbit_cameras(elevation, azimuth, self.radius, self.fovy, size, device=self.device)
        rgb, alpha = self.render(cams, size)
        return rgb[0], alpha[0]

    # ------------------------------------------------------------------ Denoiser
    def set_reference(self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None) -> None:
        """Nothing to compute: the teacher knows the object. Stores the elevation only."""
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

    def prepare(self, cams: Cameras) -> RenderCond:
        """Render x0 at the B cameras once per iteration."""
        rgb, _ = self.render(cams)
        return RenderCond(x0=rgb * 2 - 1)

    def _eps(self, x: torch.Tensor, t: int, cond: RenderCond) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t)
        return (x - cond.x0 * math.sqrt(ab)) / math.sqrt(1.0 - ab)

    def eps_cfg(self, x: torch.Tensor, t: int, cond: RenderCond, scale: float) -> torch.Tensor:
        """Exact eps for x0 = the renders (CFG is a no-op: both branches agree)."""
        self._count("cfg", 2 * x.shape[0])
        return self._eps(x, t, cond)

    def eps_uncond(self, x: torch.Tensor, t: int, cond: RenderCond) -> torch.Tensor:
        """Exact eps for x0 = the renders."""
        self._count("uncond", x.shape[0])
        return self._eps(x, t, cond)
