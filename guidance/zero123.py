"""Stable Zero123 / Zero123-XL behind the :class:`guidance.denoiser.Denoiser` interface.

Loads the diffusers folder layout of ``ashawkey/stable-zero123-diffusers`` (checkpoints.md 1.1-1.7)
without remote code: ``model_index.json`` is read only to check the components, and each folder is
loaded with its own stock class (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPVisionModelWithProjection``, ``CLIPImageProcessor``) plus our :class:`CLIPCameraProjection`.
The scheduler config is only read as JSON into :class:`guidance.schedule.DDIMSchedule`.

Conditioning (checkpoints.md 1.8, spec 2.1):
* reference: CLIP ``image_embeds`` [1,D] of the 256px reference through the feature extractor, and
  the **unscaled** VAE latent of the reference (posterior sample like the authors, or the mode);
* per view: ``proj(cat(clip_emb, cam4))`` -> one cross-attention token [B,1,D];
* CFG batch ``[cond; uncond]``; the uncond half has a zero token AND a zero concat latent, so the
  unconditional branch does not depend on the cameras at all (inversion runs it alone at batch B).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from core.cameras import Cameras, zero123_embedding
from core.errors import UserError
from guidance.components import (
    DTYPES,
    clip_pixels,
    load_diffusers,
    load_transformers,
    open_pipeline,
    reference_pixels,
    resolve_dtype,
)
from guidance.cuda_graphs import GraphRunner
from guidance.denoiser import Denoiser, NoiseSource, TorchNoise
from guidance.schedule import DDIMSchedule

try:  # diffusers is a hard dependency of this backend, but keep `import guidance` light elsewhere.
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config
except ImportError:  # pragma: no cover
    ModelMixin = nn.Module  # type: ignore[misc,assignment]
    ConfigMixin = object  # type: ignore[misc,assignment]

    def register_to_config(f):  # type: ignore[no-redef]
        return f


__all__ = ["CLIPCameraProjection", "Zero123Cond", "Zero123Denoiser", "DTYPES", "REQUIRED_COMPONENTS"]

log = logging.getLogger(__name__)

REQUIRED_COMPONENTS = (
    "unet",
    "vae",
    "image_encoder",
    "feature_extractor",
    "scheduler",
    "clip_camera_projection",
)


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """Linear(embedding_dim + additional_embeddings -> embedding_dim) named ``proj`` (keys proj.weight/bias)."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.additional_embeddings = additional_embeddings
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D+4]`` (CLIP embedding first, camera last) -> ``[..., D]``."""
        return self.proj(x)


@dataclass
class Zero123Cond:
    """Per-iteration conditioning: ``hidden`` [2B,1,D] and ``concat`` [2B,C,h,w], both ``[cond; uncond]``."""

    hidden: torch.Tensor
    concat: torch.Tensor
    batch: int


class Zero123Denoiser(Denoiser):
    """Stable Zero123 (or Zero123-XL) as a SIR denoiser; 1 view per group, CFG [cond; uncond]."""

    def __init__(
        self,
        model: str | Path = "ashawkey/stable-zero123-diffusers",
        device: str | torch.device = "cuda",
        dtype: str | torch.dtype = "fp16",
        variant: str = "auto",
        concat_latent: str = "sample",
        cuda_graph: bool = False,
        channels_last: bool = True,
        config_key: str = "model.path",
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
    ):
        """Load from a folder or Hub id.

        ``variant``: ``stable`` (4th camera entry = rad(90 + ref elevation)), ``xl`` (radius offset),
        or ``auto`` (``xl`` when the id/folder name contains "xl", else ``stable``).
        ``concat_latent``: ``sample`` (the authors) or ``mode`` (the diffusers pipeline / threestudio).
        """
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.device = torch.device(device)
        self.dtype = dtype = resolve_dtype(dtype, self.device, key="guidance.dtype")
        if concat_latent not in ("sample", "mode"):
            raise UserError(f"concat_latent={concat_latent!r} must be 'sample' or 'mode'")
        self.concat_latent = concat_latent
        root = open_pipeline(
            model,
            REQUIRED_COMPONENTS,
            "Zero123",
            config_key=config_key,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        if variant == "auto":
            variant = "xl" if "xl" in Path(str(model)).name.lower() else "stable"
        if variant not in ("stable", "xl"):
            raise UserError(f"zero123 variant {variant!r} must be 'stable', 'xl' or 'auto'")
        self.variant = variant
        self.root = root

        self.unet = load_diffusers(UNet2DConditionModel, root / "unet", dtype, self.device)
        self.vae = load_diffusers(AutoencoderKL, root / "vae", dtype, self.device)
        self.cam_proj = load_diffusers(
            CLIPCameraProjection, root / "clip_camera_projection", dtype, self.device
        )
        self.image_encoder = load_transformers(
            CLIPVisionModelWithProjection, root / "image_encoder", dtype, self.device
        )
        self.feature_extractor = CLIPImageProcessor.from_pretrained(root / "feature_extractor")
        sched_dir = root / "scheduler"
        self.schedule = DDIMSchedule.from_file(sched_dir / "scheduler_config.json")

        if channels_last and self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_size = int(self.unet.config.sample_size)
        self.latent_channels = int(self.unet.config.out_channels)
        self.image_size = self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.views_per_group = 1
        self._runner = GraphRunner(self._unet_call, self.device, cuda_graph, name="UNet")
        self._vae_encoder = GraphRunner(self._vae_encode_call, self.device, cuda_graph, name="VAE encoder")
        self._vae_decoder = GraphRunner(self._vae_decode_call, self.device, cuda_graph, name="VAE decoder")
        self.clip_emb: torch.Tensor | None = None
        self.ref_latent: torch.Tensor | None = None
        self.ref_elevation = 0.0
        self._zeros: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ network calls
    def _unet_call(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    def _vae_encode_call(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        return post.mean, post.std

    def _vae_decode_call(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]

    def _timesteps(self, n: int, t: int) -> torch.Tensor:
        # float32 timesteps: exact for every integer t (fp16 is too, bf16 is not: 901 -> 900), and
        # the UNet's sinusoidal embedding upcasts to float32 anyway.
        return torch.full((n,), float(t), device=self.device, dtype=torch.float32)

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def set_reference(self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None) -> None:
        """CLIP embedding [1,D] and unscaled concat latent [1,C,h,w] of ``rgb`` float [3,H,W] in [0,1].

        ``noise``: source of the posterior-sample draw of the concat latent (``concat_latent=sample``);
        default: the global torch RNG.
        """
        x = reference_pixels(rgb, self.image_size, self.device)
        pix = clip_pixels(self.feature_extractor, x)
        self.clip_emb = self.image_encoder(pix.to(self.device, self.dtype)).image_embeds.float()  # [1,D]
        post = self.vae.encode((2 * x - 1).to(self.dtype)).latent_dist
        if self.concat_latent == "mode":
            lat = post.mean.float()
        else:
            z = (noise or TorchNoise()).randn(post.mean.shape, self.device)
            lat = post.mean.float() + post.std.float() * z
        self.ref_latent = lat  # unscaled: zero123 was trained on raw VAE latents
        self.ref_elevation = float(elevation)

    # ------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode(self, images: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        """Pixels float [B,3,S,S] in [0,1] -> scaled float32 latents [B,C,h,w] (sample if ``noise``)."""
        x = (2 * images.to(self.device, torch.float32) - 1).to(self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        mean, std = self._vae_encoder(x=x)
        lat = mean
        if noise is not None:
            lat = lat + std * noise.randn(lat.shape, self.device)
        return lat * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled float32 latents [B,C,h,w] -> images float32 [B,3,S,S] in [0,1]."""
        z = (latents / self.scaling_factor).to(self.dtype)
        img = self._vae_decoder(z=z)
        return (img / 2 + 0.5).clamp(0, 1)

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
        inp = torch.cat([x.to(self.dtype), concat], dim=1)
        if self.device.type == "cuda":
            inp = inp.contiguous(memory_format=torch.channels_last)
        return inp

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
