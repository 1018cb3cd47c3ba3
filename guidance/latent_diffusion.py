"""The shared base of the latent-diffusion denoisers (Stable Zero123, ImageDream, ...).

What they have in common: a diffusers pipeline folder (a local folder or a Hub id, checked for its
components), a UNet, the SD VAE (``vae/``), a CLIP image processor (``feature_extractor/``), a DDIM
scheduler config, one network dtype, optional CUDA graphs of the UNet and the VAE, and the reference
latent (VAE posterior mode or sample of the input image). A subclass loads its UNet and its encoders,
builds the conditioning and calls its UNet; everything else is here.

The VAE and the image processor are our pure-torch :mod:`guidance.nets` (imported by the constructor),
as are the subclasses' UNets and encoders: neither diffusers nor transformers is imported at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from guidance.components import clip_pixels, open_pipeline, reference_pixels, resolve_dtype
from guidance.cuda_graphs import GraphRunner
from guidance.denoiser import Denoiser, NoiseSource, TorchNoise
from guidance.nets.fused_norm import set_fused_norm, triton_available
from guidance.options import cfg_get
from guidance.schedule import DDIMSchedule

__all__ = ["LatentDiffusionDenoiser", "pipeline_options", "read_schedule"]

REF_LATENT_MODES = ("sample", "mode")


def pipeline_options(cfg: Any, default_id: str) -> dict[str, Any]:
    """Constructor keywords of a :class:`LatentDiffusionDenoiser` from ``model.*`` of the app config.

    Keys read: ``model.{path,id,dtype,cuda_graph,compile,fused_norm,cache_dir,ref_latent}``;
    ``model.path`` (a local folder) wins over ``model.id``, which defaults to ``default_id``.
    """
    return dict(
        model=cfg_get(cfg, "model.path") or cfg_get(cfg, "model.id") or default_id,
        dtype=cfg_get(cfg, "model.dtype", "fp16"),
        cuda_graph=bool(cfg_get(cfg, "model.cuda_graph", False)),
        compile=bool(cfg_get(cfg, "model.compile", False)),
        fused_norm=bool(cfg_get(cfg, "model.fused_norm", True)),
        ref_latent=cfg_get(cfg, "model.ref_latent", "sample"),
        config_key="model.path",
        cache_dir=cfg_get(cfg, "model.cache_dir"),
    )


def read_schedule(folder: Path) -> DDIMSchedule:
    """The DDIM schedule of a ``scheduler/`` folder; a one-line UserError for a missing, broken or
    unsupported ``scheduler_config.json`` (any diffusers version's keys are read; the class name is
    not: the authors build a DDIM scheduler from whatever config the folder holds)."""
    path = Path(folder) / "scheduler_config.json"
    try:
        schedule = DDIMSchedule.from_file(path)
        schedule.timesteps(1)  # the spacing is checked when a grid is built: refuse a bad one now
        return schedule
    except FileNotFoundError:
        raise UserError(f"{folder} has no scheduler_config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class LatentDiffusionDenoiser(Denoiser):
    """A denoiser whose latents are the SD VAE's (scaled by ``vae.config.scaling_factor``).

    Subclasses set the class attributes, implement :meth:`_load_unet`, :meth:`_load_encoders`,
    :meth:`_unet_call` (the network on prepared inputs, run through ``self._runner``) and the
    conditioning methods of :class:`Denoiser`. Attributes set here: ``device``, ``dtype``, ``root``
    (the pipeline folder), ``unet``, ``vae``, ``feature_extractor``, ``schedule``, ``scaling_factor``,
    ``latent_size``, ``latent_channels``, ``image_size``, ``ref_latent_mode``, ``ref_latent`` (None
    until :meth:`set_reference`) and ``ref_elevation``.
    """

    #: Name in messages and logs, e.g. ``Zero123``.
    pipeline_name: str = "latent diffusion"
    #: Component folders the pipeline folder must have.
    required_components: tuple[str, ...] = ("unet", "vae", "feature_extractor", "scheduler")
    #: Key of the UNet config that holds the latent height (= width).
    latent_size_key: str = "sample_size"

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "cuda",
        dtype: str | torch.dtype = "fp16",
        ref_latent: str = "sample",
        cuda_graph: bool = False,
        compile: bool = False,
        channels_last: bool = True,
        fused_norm: bool = True,
        config_key: str = "model.path",
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
    ) -> None:
        """Load from a folder or Hub id.

        ``ref_latent``: ``sample`` (the authors: posterior sample) or ``mode`` (posterior mean) for the
        reference latent. ``cuda_graph``: replay the UNet and VAE as CUDA graphs (CUDA only).
        ``compile``: ``torch.compile`` the UNet and the VAE coders (CUDA only, see :mod:`guidance.compiled`).
        ``channels_last``: NHWC convolutions on CUDA. ``fused_norm``: with ``channels_last`` (and without
        ``compile``, whose Inductor code fuses them itself), GroupNorm(+SiLU) of the UNet and the VAE by
        the Triton kernel of :mod:`guidance.nets.fused_norm`; False = torch's GroupNorm.
        ``config_key``/``cache_dir``/``local_files_only``: see :func:`guidance.components.open_pipeline`.
        """
        super().__init__()
        from guidance.nets.clip_vision import ClipImageProcessor
        from guidance.nets.vae import load_vae

        self.device = torch.device(device)
        self.dtype = dtype = resolve_dtype(dtype, self.device)
        if ref_latent not in REF_LATENT_MODES:
            raise UserError(f"model.ref_latent={ref_latent!r} must be 'sample' or 'mode'")
        self.ref_latent_mode = ref_latent
        self.root = root = open_pipeline(
            model,
            self.required_components,
            self.pipeline_name,
            config_key=config_key,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        # Load order as before the refactor (UNet, VAE, then the model's encoders).
        self.unet = self._load_unet(root / "unet")
        self.vae = load_vae(root / "vae", dtype, self.device)
        self._load_encoders(root)
        # Text-only pipelines (MVDream) ship no image processor.
        self.feature_extractor = (
            ClipImageProcessor.from_folder(root / "feature_extractor")
            if "feature_extractor" in self.required_components
            else None
        )
        self.schedule = read_schedule(root / "scheduler")

        self.channels_last = channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        #: True when the UNet's and the VAE's GroupNorms run the fused channels-last kernel.
        self.fused_norm = fused_norm and self.channels_last and not compile and triton_available()
        for net in (self.unet, self.vae):
            set_fused_norm(net, self.fused_norm)
        if compile and self.device.type == "cuda":
            from guidance.compiled import compile_networks

            compile_networks(self)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_size = int(getattr(self.unet.config, self.latent_size_key))
        self.latent_channels = int(self.unet.config.out_channels)
        self.image_size = self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        name = self.pipeline_name
        self._runner = GraphRunner(self._unet_call, self.device, cuda_graph, name=f"{name} UNet")
        self._vae_encoder = GraphRunner(
            self._vae_encode_call, self.device, cuda_graph, name=f"{name} VAE encoder"
        )
        self._vae_decoder = GraphRunner(
            self._vae_decode_call, self.device, cuda_graph, name=f"{name} VAE decoder"
        )
        self.ref_latent: torch.Tensor | None = None
        self.ref_elevation = 0.0

    @property
    def cuda_graphs(self) -> bool:
        """True while the UNet runs through CUDA graphs (False on CPU, or after a failed capture)."""
        return self._runner.enabled

    # ------------------------------------------------------------------ to implement
    def _load_unet(self, folder: Path) -> Any:
        """The UNet of ``folder`` in ``self.dtype``, frozen on ``self.device``."""
        raise NotImplementedError

    def _load_encoders(self, root: Path) -> None:
        """Load the model's conditioning networks (image/text encoders, tokenizer, ...) from ``root``."""
        raise NotImplementedError

    def _unet_call(self, **inputs: torch.Tensor) -> torch.Tensor:
        """One UNet evaluation on prepared inputs (what ``self._runner`` runs, maybe as a CUDA graph)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def _nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels-last memory format when the networks run that way (CUDA)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _timesteps(self, n: int, t: int) -> torch.Tensor:
        """``t`` repeated ``n`` times as float32 on the device."""
        # float32 timesteps: exact for every integer t (fp16 is too, bf16 is not: 901 -> 900), and
        # the UNet's sinusoidal embedding upcasts to float32 anyway.
        return torch.full((n,), float(t), device=self.device, dtype=torch.float32)

    def _reference_inputs(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference ``rgb`` float ``[3,H,W]`` in [0,1] -> (pixels float32 ``[1,3,S,S]``, CLIP pixel values in ``dtype``)."""
        x = reference_pixels(rgb, self.image_size, self.device)
        return x, clip_pixels(self.feature_extractor, x).to(self.device, self.dtype)

    @torch.no_grad()
    def _reference_latent(self, x: torch.Tensor, noise: NoiseSource | None) -> torch.Tensor:
        """Unscaled float32 VAE latent ``[1,C,h,w]`` of pixels ``x`` float32 ``[1,3,S,S]`` in [0,1].

        ``ref_latent_mode``: ``mode`` = posterior mean; ``sample`` = mean + std * one draw from
        ``noise`` (default: the global torch RNG).
        """
        post = self.vae.encode((2 * x - 1).to(self.dtype)).latent_dist
        lat = post.mean.float()
        if self.ref_latent_mode == "sample":
            lat = lat + post.std.float() * (noise or TorchNoise()).randn(lat.shape, self.device)
        return lat

    # ------------------------------------------------------------------ VAE
    def _vae_encode_call(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        return post.mean, post.std

    def _vae_decode_call(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        """Pixels float ``[B,3,S,S]`` in [0,1] -> scaled float32 latents ``[B,C,h,w]`` (sample if ``noise``)."""
        x = self._nhwc((2 * images.to(self.device, torch.float32) - 1).to(self.dtype))
        mean, std = self._vae_encoder(x=x)
        lat = mean
        if noise is not None:
            lat = lat + std * noise.randn(lat.shape, self.device)
        return lat * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled float32 latents ``[B,C,h,w]`` -> images float32 ``[B,3,S,S]`` in [0,1]."""
        z = (latents / self.scaling_factor).to(self.dtype)
        img = self._vae_decoder(z=z)
        return (img / 2 + 0.5).clamp(0, 1)
