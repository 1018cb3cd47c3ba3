"""Stable Zero123 / Zero123-XL behind the :class:`guidance.denoiser.Denoiser` interface (``guidance=zero123``).

Loads the diffusers folder layout of ``ashawkey/stable-zero123-diffusers`` without remote code and
without diffusers or transformers: ``model_index.json`` is read only to check the components, and each
folder is built by our own pure-torch networks (:mod:`guidance.nets`: SD UNet, SD VAE, CLIP vision tower
and image processor) plus :class:`guidance.camera_projection.CLIPCameraProjection`, with strict loading
of the same parameter names. The scheduler config is only read as JSON into
:class:`guidance.schedule.DDIMSchedule`.

Conditioning:
* reference: CLIP ``image_embeds`` [1,D] of the 256px reference through the feature extractor, and
  the **unscaled** VAE latent of the reference (posterior sample like the authors, or the mode);
* per view: ``proj(cat(clip_emb, cam4))`` -> one cross-attention token [B,1,D], with the camera
  4-vector of :func:`zero123_embedding`;
* CFG batch ``[cond; uncond]``; the uncond half has a zero token AND a zero concat latent, so the
  unconditional branch does not depend on the cameras at all (inversion runs it alone at batch B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.cameras import Cameras
from core.errors import UserError
from guidance.denoiser import NoiseSource
from guidance.latent_diffusion import LatentDiffusionDenoiser, pipeline_options
from guidance.registry import get

__all__ = ["Zero123Cond", "Zero123Denoiser", "zero123_embedding", "DEFAULT_ID", "REQUIRED_COMPONENTS"]

DEFAULT_ID = "ashawkey/stable-zero123-diffusers"
REQUIRED_COMPONENTS = (
    "unet",
    "vae",
    "image_encoder",
    "feature_extractor",
    "scheduler",
    "clip_camera_projection",
)


def zero123_embedding(cams: Cameras, ref_elevation: float, stable: bool = True) -> torch.Tensor:
    """Camera 4-vectors ``[V,4]`` for (Stable) Zero123, relative to the reference view.

    Stable Zero123: ``[rad(d_elev), sin(rad(azim)), cos(rad(azim)), rad(90 + ref_elev)]``;
    Zero123-XL: the last entry is the radius offset (0 on our fixed-radius orbits). ``d_elev`` is
    the view's elevation minus the reference elevation, in our (DreamGaussian) sign, which is
    Zero123's polar-angle offset.
    """
    # float64 then float32, as the authors' numpy maths: the embedding matches theirs exactly.
    d_elev = torch.deg2rad(cams.elevation.double() - ref_elevation)
    az = torch.deg2rad(cams.azimuth.double())
    if stable:
        last = torch.full_like(d_elev, math.radians(90.0 + ref_elevation))
    else:
        last = torch.zeros_like(d_elev)
    return torch.stack([d_elev, torch.sin(az), torch.cos(az), last], dim=-1).float()


@dataclass
class Zero123Cond:
    """Per-iteration conditioning: ``hidden`` [2B,1,D] and ``concat`` [2B,C,h,w], both ``[cond; uncond]``."""

    hidden: torch.Tensor
    concat: torch.Tensor
    batch: int


class Zero123Denoiser(LatentDiffusionDenoiser):
    """Stable Zero123 (or Zero123-XL) as a SIR denoiser; 1 view per group, CFG [cond; uncond]."""

    pipeline_name = "Zero123"
    required_components = REQUIRED_COMPONENTS
    latent_size_key = "sample_size"
    views_per_group = 1

    def __init__(self, model: str | Path = DEFAULT_ID, variant: str = "auto", **kwargs: Any) -> None:
        """Load from a folder or Hub id; ``kwargs``: see :class:`LatentDiffusionDenoiser`.

        ``variant``: ``stable`` (4th camera entry = rad(90 + ref elevation)), ``xl`` (radius offset),
        or ``auto`` (``xl`` when the id/folder name contains "xl", else ``stable``). ``ref_latent``
        (``sample`` | ``mode``) is the latent concatenated to the UNet input.
        """
        if variant == "auto":
            variant = "xl" if "xl" in Path(str(model)).name.lower() else "stable"
        if variant not in ("stable", "xl"):
            raise UserError(f"zero123 variant {variant!r} must be 'stable', 'xl' or 'auto'")
        self.variant = variant
        super().__init__(model, **kwargs)
        self.clip_emb: torch.Tensor | None = None

    def _load_unet(self, folder: Path) -> Any:
        from guidance.nets.sd_unet import load_sd_unet

        return load_sd_unet(folder, self.dtype, self.device)

    def _load_encoders(self, root: Path) -> None:
        from guidance.camera_projection import load_camera_projection
        from guidance.nets.clip_vision import load_clip_vision

        self.cam_proj = load_camera_projection(root / "clip_camera_projection", self.dtype, self.device)
        self.image_encoder = load_clip_vision(root / "image_encoder", self.dtype, self.device)

    def _unet_call(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def set_reference(self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None) -> None:
        """CLIP embedding [1,D] and unscaled concat latent [1,C,h,w] of ``rgb`` float [3,H,W] in [0,1].

        ``noise``: source of the posterior-sample draw of the concat latent (``ref_latent=sample``);
        default: the global torch RNG.
        """
        x, pix = self._reference_inputs(rgb)
        self.clip_emb = self.image_encoder(pix).image_embeds.float()  # [1,D]
        self.ref_latent = self._reference_latent(x, noise)  # unscaled: zero123 was trained on raw VAE latents
        self.ref_elevation = float(elevation)

    # ------------------------------------------------------------------ conditioning
    def camera_vectors(self, cams: Cameras) -> torch.Tensor:
        """Camera 4-vectors float32 [B,4] relative to the reference (stable or xl variant)."""
        return zero123_embedding(cams, self.ref_elevation, stable=self.variant == "stable").to(self.device)

    @torch.no_grad()
    def prepare(self, cams: Cameras) -> Zero123Cond:
        """[cond; uncond] token [2B,1,D] and concat latents [2B,C,h,w] for the B cameras."""
        if self.clip_emb is None or self.ref_latent is None:
            raise RuntimeError("call set_reference before prepare")
        B = len(cams)
        cam = self.camera_vectors(cams)
        emb = torch.cat([self.clip_emb.expand(B, -1), cam], dim=-1).to(self.dtype)  # [B,D+4]
        tok = self.cam_proj(emb)[:, None]  # [B,1,D]
        hidden = torch.cat([tok, torch.zeros_like(tok)], dim=0)
        ref = self.ref_latent.to(self.dtype).expand(B, -1, -1, -1)
        concat = torch.cat([ref, torch.zeros_like(ref)], dim=0)
        return Zero123Cond(hidden=hidden, concat=concat, batch=B)

    def _unet_input(self, x: torch.Tensor, concat: torch.Tensor) -> torch.Tensor:
        return self._nhwc(torch.cat([x.to(self.dtype), concat], dim=1))

    @torch.no_grad()
    def eps_cfg(self, x: torch.Tensor, t: int, cond: Zero123Cond, scale: float) -> torch.Tensor:
        """``eps_u + scale (eps_c - eps_u)`` float32 [B,C,h,w]; one UNet call at batch 2B."""
        B = x.shape[0]
        inp = self._unet_input(torch.cat([x, x], dim=0), cond.concat)
        eps = self._runner(sample=inp, t=self._timesteps(inp.shape[0], t), hidden=cond.hidden)
        self._count("cfg", 2 * B)
        e_c, e_u = eps[:B], eps[B:]
        return torch.lerp(e_u, e_c, scale) if scale != 1.0 else e_c

    @torch.no_grad()
    def eps_uncond(self, x: torch.Tensor, t: int, cond: Zero123Cond) -> torch.Tensor:
        """Unconditional eps float32 [B,C,h,w] (zero token, zero concat latent); one call at batch B."""
        B = x.shape[0]
        inp = self._unet_input(x, cond.concat[B:])
        eps = self._runner(sample=inp, t=self._timesteps(inp.shape[0], t), hidden=cond.hidden[B:])
        self._count("uncond", B)
        return eps


def load(cfg: Any, device: torch.device) -> Zero123Denoiser:
    """``Zero123Denoiser`` from ``model.*`` (see :func:`guidance.latent_diffusion.pipeline_options`)."""
    return Zero123Denoiser(device=device, **pipeline_options(cfg, DEFAULT_ID))


SPEC = get("zero123")  # declared in guidance/models/__init__.py (BUILTIN)
