"""Stage 2's representation for the SIR loop: a logit UV texture on a fixed mesh (docs/method.md#stage2)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.adam import Adam
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
        ssaa: tuple[float, float] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """``ssaa=(lo, hi)``: the authors' random supersampling (paper mode), scales drawn from ``rng``."""
        self.ssaa, self.rng = ssaa, rng
        self.mesh = mesh
        self.backend = backend
        self.bg = torch.tensor(bg, device=mesh.v.device)
        albedo = mesh.albedo.to(mesh.v.device).float().clamp(1e-6, 1 - 1e-6)
        self.raw = torch.logit(albedo).detach().requires_grad_(True)
        # Adam defaults as the authors (betas 0.9/0.999, eps 1e-8), texture only, no schedule.
        self.optimizer = Adam([self.raw], lr=lr)
        self.ref_weight = ref_weight
        # No reference view (text to 3D): no reference term.
        use_ref = ref_weight > 0 and ref_rgb is not None and ref_cam is not None
        self.ref_rgb = ref_rgb[None] if use_ref else None
        self.ref_cam = ref_cam if use_ref else None
        self.ref_raster = rasterize(mesh, ref_cam, backend=backend) if use_ref else None
        if self.ref_raster is not None:
            self.ref_mask = ((self.ref_raster.alpha > 0) & (self.ref_raster.viewcos > 0.5)).float()
        self.raster = None

    def begin_iteration(self, cams: Cameras) -> None:
        """Rasterise the iteration's views once (geometry is fixed)."""
        with torch.no_grad():
            if self.ssaa is None:
                self.raster = rasterize(self.mesh, cams, backend=self.backend)
            else:  # one random scale per view, kept for the iteration (MD-v1 main2.py)
                self.raster = [self._ss_raster(cams[i]) for i in range(len(cams))]

    def _ss_raster(self, cam: Cameras):
        """Rasterise at ``ceil(H*s/8)*8`` with ``s = clip(2U, lo, hi)`` (the authors' draw)."""
        s = min(self.ssaa[1], max(self.ssaa[0], 2 * float(self.rng.random())))
        return rasterize(self.mesh, cam.resized(int(math.ceil(cam.height * s / 8) * 8)), backend=self.backend)

    def _ss_shade(self, raster, size: int) -> RenderOutput:
        """Shade one supersampled raster and resize rgb/alpha/viewcos back to ``size`` (bilinear)."""
        out = shade(raster, self.raw, self.bg, activation="sigmoid")
        if raster.height == size:
            return out
        # The authors' scale_img: bilinear, align_corners only when magnifying.
        ac = True if raster.height < size else None
        rs = lambda x: F.interpolate(x, (size, size), mode="bilinear", align_corners=ac)  # noqa: E731
        return RenderOutput(rs(out.rgb), rs(out.alpha), viewcos=rs(raster.viewcos))

    def render(self, cams: Cameras) -> RenderOutput:
        """Shade the cached raster with the current texture, rgb ``[V,3,H,W]`` in [0,1]."""
        if self.ssaa is not None:
            outs = [self._ss_shade(r, cams.height) for r in self.raster]
            return RenderOutput(torch.cat([o.rgb for o in outs]), torch.cat([o.alpha for o in outs]))
        return shade(self.raster, self.raw, self.bg, activation="sigmoid")

    def loss(self, out: RenderOutput, target: torch.Tensor) -> torch.Tensor:
        """Mean MSE to the targets + the masked reference-view MSE."""
        loss = F.mse_loss(out.rgb, target)
        if self.ref_raster is not None and self.ssaa is not None:
            # A fresh random scale for every reference render; mask from the resized alpha/viewcos.
            with torch.no_grad():
                raster = self._ss_raster(self.ref_cam)
            ref = self._ss_shade(raster, self.ref_cam.height)
            m = ((ref.alpha > 0) & (ref.viewcos > 0.5)).float()
            loss = loss + self.ref_weight * F.mse_loss(ref.rgb * m, self.ref_rgb * m)
        elif self.ref_raster is not None:
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
