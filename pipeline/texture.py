"""Stage 2's representation for the SIR loop: a logit UV texture on a fixed mesh (docs/method.md#stage2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.cameras import Cameras
from core.types import RenderOutput
from mesh_renderer.raster import rasterize
from mesh_renderer.shade import shade


class TextureRepresentation:
    """A texture-only optimisation target: ``raw [Ht,Wt,3]`` logits, sigmoid AFTER sampling.

    Geometry and cameras are fixed within an SIR iteration, so each iteration rasterises once and
    its reconstruction steps only re-sample the texture. The loss is the authors': mean MSE to the
    refined views plus ``ref_weight`` x masked MSE to the input image at the reference view, where
    the mask is covered pixels facing the camera (viewcos > 0.5).
    """

    def __init__(
        self,
        mesh,
        ref_rgb: torch.Tensor | None,
        ref_cam: Cameras | None,
        lr: float = 0.2,
        ref_weight: float = 1.0,
        bg: tuple[float, float, float] = (1.0, 1.0, 1.0),
        backend: str = "auto",
    ) -> None:
        self.mesh = mesh
        self.backend = backend
        self.bg = torch.tensor(bg, device=mesh.v.device)
        albedo = mesh.albedo.to(mesh.v.device).float().clamp(1e-6, 1 - 1e-6)
        self.raw = torch.logit(albedo).detach().requires_grad_(True)
        # Adam defaults as the authors (betas 0.9/0.999, eps 1e-8), texture only, no schedule.
        fused = mesh.v.device.type == "cuda"
        self.optimizer = torch.optim.Adam([self.raw], lr=lr, fused=fused)
        self.ref_weight = ref_weight
        # No reference view (text to 3D): no reference term.
        use_ref = ref_weight > 0 and ref_rgb is not None and ref_cam is not None
        self.ref_rgb = ref_rgb[None] if use_ref else None
        self.ref_raster = rasterize(mesh, ref_cam, backend=backend) if use_ref else None
        if self.ref_raster is not None:
            self.ref_mask = ((self.ref_raster.alpha > 0) & (self.ref_raster.viewcos > 0.5)).float()
        self.raster = None

    def begin_iteration(self, cams: Cameras) -> None:
        """Rasterise the iteration's views once (geometry is fixed)."""
        with torch.no_grad():
            self.raster = rasterize(self.mesh, cams, backend=self.backend)

    def render(self, cams: Cameras) -> RenderOutput:
        """Shade the cached raster with the current texture, rgb ``[V,3,H,W]`` in [0,1]."""
        return shade(self.raster, self.raw, self.bg, activation="sigmoid")

    def loss(self, out: RenderOutput, target: torch.Tensor) -> torch.Tensor:
        """Mean MSE to the targets + the masked reference-view MSE."""
        loss = F.mse_loss(out.rgb, target)
        if self.ref_raster is not None:
            ref = shade(self.ref_raster, self.raw, self.bg, activation="sigmoid").rgb
            m = self.ref_mask
            loss = loss + self.ref_weight * F.mse_loss(ref * m, self.ref_rgb * m)
        return loss

    def step(self, loss: torch.Tensor, out: RenderOutput) -> None:
        """Backward and one Adam step on the texture."""
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def export_mesh(self):
        """The mesh with the refined texture (sigmoid of the logits) as its albedo."""
        return self.mesh.with_albedo(torch.sigmoid(self.raw.detach()))
