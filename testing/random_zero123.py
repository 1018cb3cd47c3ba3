"""Stable Zero123 with random weights, saved in the real diffusers folder layout.

``tiny``: the same classes with a few channels (CPU seconds; GroupNorm channels are multiples of 32),
image 64 px -> latent 8x8. ``full``: the real configs of ``ashawkey/stable-zero123-diffusers`` (UNet 8 in-channels,
[320,640,1280,1280], cross-attention 768, 8 heads; SD VAE; CLIP ViT-L/14 vision with projection 768),
for speed measurements: a network's cost does not depend on its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from guidance.schedule import STABLE_DIFFUSION_DDIM_CONFIG
from testing.random_layout import (
    cached_folder,
    clip_processor_config,
    save_hub_layout,
    sd_vae_config,
    tiny_clip_config,
)

__all__ = ["zero123_configs", "build_zero123", "save_zero123"]

_TINY_VERSION = "3"  # bump when build_zero123 changes the tiny weights

#: UNet settings of both sizes: 8 input channels (noisy latent ++ reference latent), SD 1.x conventions.
_UNET_COMMON: dict[str, Any] = dict(
    in_channels=8,
    out_channels=4,
    attention_head_dim=8,
    use_linear_projection=False,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    act_fn="silu",
)


def zero123_configs(size: str = "tiny") -> dict[str, dict[str, Any]]:
    """Config dicts of every component: unet, vae, image_encoder, feature_extractor, scheduler, projection."""
    if size == "full":
        unet = dict(
            _UNET_COMMON,
            sample_size=32,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2,
            cross_attention_dim=768,
            downsample_padding=1,
            mid_block_scale_factor=1,
        )
        clip = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
        crop = 224
        emb = 768
    elif size == "tiny":
        unet = dict(
            _UNET_COMMON,
            sample_size=8,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[32, 64],
            layers_per_block=1,
            cross_attention_dim=32,
        )
        clip = tiny_clip_config("quick_gelu", image_size=32, patch_size=8)
        crop = 32
        emb = 32
    else:
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return {
        "unet": unet,
        "vae": sd_vae_config(size),
        "image_encoder": clip,
        "feature_extractor": clip_processor_config(crop),
        "scheduler": dict(STABLE_DIFFUSION_DDIM_CONFIG),
        "clip_camera_projection": dict(embedding_dim=emb, additional_embeddings=4),
    }


def build_zero123(size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """Instantiate the components with random weights (deterministic for ``seed``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from guidance.camera_projection import CLIPCameraProjection

    cfg = zero123_configs(size)
    torch.manual_seed(seed)
    comps: dict[str, Any] = {
        "unet": UNet2DConditionModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"])),
        "feature_extractor": CLIPImageProcessor(**cfg["feature_extractor"]),
        "clip_camera_projection": CLIPCameraProjection(**cfg["clip_camera_projection"]),
        "scheduler": cfg["scheduler"],
    }
    if size == "tiny":
        # Default inits leave a random UNet's output near zero and the VAE's near grey; scale the last
        # layers so eps and decoded images carry signal in tests. tests/data/fidelity_zero123.* were
        # recorded on these exact weights (fingerprints checked there): do not change this init.
        with torch.no_grad():
            comps["unet"].conv_out.weight.mul_(20.0)
    return comps


def save_zero123(
    folder: str | Path, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random Stable Zero123 in the Hub layout (model_index.json + component folders)."""
    comps = build_zero123(size, seed)
    index = {
        "_class_name": "Zero123Pipeline",
        "_diffusers_version": "0.24.0",
        "requires_safety_checker": False,
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    # The Hub files are fp16 (dtype=torch.float16 to match them).
    return save_hub_layout(
        folder, comps, ("unet", "vae", "clip_camera_projection", "image_encoder"), index, dtype
    )


def cached_tiny_zero123(seed: int = 0) -> Path:
    """A tiny random Stable Zero123 folder under the temp dir, written once and reused (tests)."""
    # The key covers the configs and the init tweaks of build_zero123 (bump _TINY_VERSION with them).
    key_text = json.dumps(zero123_configs("tiny"), sort_keys=True) + _TINY_VERSION
    return cached_folder("zero123", key_text, seed, lambda folder: save_zero123(folder, "tiny", seed))
