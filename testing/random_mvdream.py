"""MVDream with random weights, saved in the real diffusers folder layout of ``ashawkey/mvdream-sd2.1-diffusers``.

The same components as :mod:`testing.random_imagedream` minus the image side: the UNet config
without ``ip_dim`` (no Resampler, no image-prompt keys), no ``image_encoder``/``feature_extractor``
(``model_index.json`` lists them as ``[null, null]``, as the Hub repo does). ``tiny``: a few
channels (CPU seconds, 64 px -> latent 8x8); ``full``: the real configs, for speed measurements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from testing import random_layout
from testing.random_imagedream import imagedream_configs, write_tiny_tokenizer
from testing.random_layout import cached_folder

__all__ = [
    "mvdream_configs",
    "build_mvdream",
    "save_mvdream",
    "cached_tiny_mvdream",
    "MODEL_INDEX",
    "TINY_RUN",
]

_IMAGE_ONLY_UNET_KEYS = ("ip_dim", "ip_in_dim", "resampler_heads", "resampler_dim_head", "resampler_depth")

#: ``model_index.json`` of ``ashawkey/mvdream-sd2.1-diffusers`` (checkpoints.md 2.1).
MODEL_INDEX: dict[str, Any] = {
    "_class_name": "MVDreamPipeline",
    "_diffusers_version": "0.25.0",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["mv_unet", "MultiViewUNetModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def mvdream_configs(size: str = "tiny") -> dict[str, dict[str, Any]]:
    """Config dicts of every component: unet (no ``ip_dim``), vae, text_encoder, scheduler."""
    cfg = imagedream_configs(size)
    unet = {k: v for k, v in cfg["unet"].items() if k not in _IMAGE_ONLY_UNET_KEYS}
    return {
        "unet": unet,
        "vae": cfg["vae"],
        "text_encoder": cfg["text_encoder"],
        "scheduler": cfg["scheduler"],
    }


def build_mvdream(size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """Instantiate the components with random weights (deterministic for ``seed``); tokenizer excluded."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from guidance.mv_unet import MultiViewUNetModel

    cfg = mvdream_configs(size)
    torch.manual_seed(seed)
    return {
        "unet": MultiViewUNetModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        "scheduler": cfg["scheduler"],
    }


def save_mvdream(
    folder: str | Path, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random MVDream in the Hub layout (model_index.json + component folders); returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comps = build_mvdream(size, seed)
    write_tiny_tokenizer(folder / "tokenizer")
    for name in ("unet", "vae", "text_encoder"):
        model = comps.pop(name)  # freed once written (the full UNet is large)
        (model if dtype == torch.float32 else model.to(dtype)).save_pretrained(
            folder / name, safe_serialization=True
        )
    # The Hub's unet/config.json has no image-prompt fields at all (not ip_dim=0): drop them so
    # the loader meets the real file.
    unet_json = folder / "unet" / "config.json"
    unet_cfg = json.loads(unet_json.read_text())
    drop = (*_IMAGE_ONLY_UNET_KEYS, "ip_weight")
    unet_json.write_text(json.dumps({k: v for k, v in unet_cfg.items() if k not in drop}, indent=2))
    (folder / "scheduler").mkdir(exist_ok=True)
    sched = dict(comps["scheduler"], _diffusers_version="0.25.0")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder


def cached_tiny_mvdream(seed: int = 0) -> Path:
    """A tiny random MVDream folder under the temp dir, written once and reused (tests)."""
    from guidance import mv_unet
    from testing import random_imagedream

    # The key covers the configs and the code that defines the saved tensors and files.
    files = (__file__, mv_unet.__file__, random_layout.__file__, random_imagedream.__file__)
    key_text = json.dumps(mvdream_configs("tiny"), sort_keys=True) + "".join(
        Path(f).read_text() for f in files
    )
    return cached_folder("mvdream", key_text, seed, lambda folder: save_mvdream(folder, "tiny", seed))


#: Overrides that run both stages with the tiny MVDream on a CPU in seconds (with configs/text.yaml).
TINY_RUN = [
    "device=cpu",
    "quiet=true",
    "model.dtype=fp32",
    "model.cuda_graph=false",
    "gaussians.num_pts=300",
    "sir.iters=2",
    "sir.init_steps=1",
    "sir.steps_min=1",
    "sir.steps_max=1",
    "sir.render_size=64",
    "refine.iters=1",
    "refine.steps=2",
    "refine.render_size=64",
    "render.gs_backend=torch",
    "render.mesh_backend=torch",
    "export.grid_resolution=32",
    "export.texture_size=64",
    "export.bake_size=64",
    "export.density_thresh=0.01",
]
