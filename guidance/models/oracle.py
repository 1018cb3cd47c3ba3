"""The oracle teacher (``guidance=oracle``): a reference mesh plays a perfect multi-view diffusion model.

For the requested cameras the oracle renders the reference object (its texture, or a fixed
procedural 3D colour field for geometry-only meshes) on white at ``image_size``; that render is the
model's x0 (:class:`guidance.render_teacher.RenderTeacher` gives the exact eps). SIR driven by it must
reconstruct the reference object: this is how the 3D pipeline is tested end to end without model
weights. It needs no input image: :meth:`~guidance.render_teacher.RenderTeacher.reference_image`
renders the input photo.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from core.cameras import DEFAULT_FOVY, Cameras
from core.errors import UserError
from guidance.options import cfg_get
from guidance.registry import get
from guidance.render_teacher import RenderTeacher
from guidance.schedule import DDIMSchedule

__all__ = ["OracleDenoiser", "color_field"]

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


class OracleDenoiser(RenderTeacher):
    """A reference mesh as a perfect denoiser (identity latents at ``image_size`` pixels)."""

    def __init__(
        self,
        mesh: str | Path,
        image_size: int = 256,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        schedule: DDIMSchedule | None = None,
        radius: float = 2.0,
        fovy: float = DEFAULT_FOVY,
    ):
        """``mesh``: .obj/.glb path, normalised (bbox centred at the origin, max extent 1.0)."""
        super().__init__(image_size, device, schedule, radius, fovy)
        from mesh_renderer import load_mesh

        path = Path(mesh)
        if not path.is_file():
            raise UserError(f"oracle mesh {str(path)!r} does not exist; set oracle.mesh=/path/to/mesh.obj")
        self.mesh = load_mesh(path).normalized(1.0).to(self.device)
        self.textured = self.mesh.has_uv and self.mesh.albedo is not None
        self.backend = backend

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


def load(cfg: Any, device: torch.device) -> OracleDenoiser:
    """``OracleDenoiser`` from ``oracle.mesh`` (+ ``oracle.image_size`` or ``sir.render_size``), ``render.mesh_backend``, ``cameras.{radius,fovy}``."""
    mesh = cfg_get(cfg, "oracle.mesh")
    if not mesh:
        raise UserError("guidance=oracle needs a reference mesh: set oracle.mesh=/path/to/mesh.obj")
    size = cfg_get(cfg, "oracle.image_size") or cfg_get(cfg, "sir.render_size", 256)
    return OracleDenoiser(
        mesh,
        image_size=int(size),
        device=device,
        backend=cfg_get(cfg, "render.mesh_backend", "auto"),
        radius=float(cfg_get(cfg, "cameras.radius", 2.0)),
        fovy=float(cfg_get(cfg, "cameras.fovy", DEFAULT_FOVY)),
    )


SPEC = get("oracle")  # declared in guidance/models/__init__.py (BUILTIN)
