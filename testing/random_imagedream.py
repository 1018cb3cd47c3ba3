"""ImageDream with random weights, saved in the real diffusers folder layout of ``ashawkey/imagedream-ipmv-diffusers``.

``tiny``: the same classes with a few channels (CPU seconds): image 64 px -> latent 8x8, UNet 32/64
channels, context width 32, 4 image-prompt tokens, CLIP towers of width 32. ``full``: the real configs
(the Hub UNet config, SD VAE, SD 2.1 text encoder, OpenCLIP ViT-H/14 vision tower) for speed
measurements on the device: a network's cost does not depend on its weights.
The tokenizer is a CLIP BPE tokenizer over a small vocabulary written at run time (no download); the
full text encoder keeps the real 49408-row embedding, of which the tiny vocabulary uses the first rows.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

from guidance.schedule import STABLE_DIFFUSION_DDIM_CONFIG
from testing import random_layout
from testing.random_layout import (
    cached_folder,
    clip_processor_config,
    save_hub_layout,
    sd_vae_config,
    tiny_clip_config,
)

__all__ = [
    "imagedream_configs",
    "build_imagedream",
    "save_imagedream",
    "cached_tiny_imagedream",
    "write_tiny_tokenizer",
    "UNET_CONFIG",
]

#: ``unet/config.json`` of ``ashawkey/imagedream-ipmv-diffusers``, minus metadata.
UNET_CONFIG: dict[str, Any] = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=2,
    attention_resolutions=[4, 2, 1],
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    transformer_depth=1,
    context_dim=1024,
    camera_dim=16,
    ip_dim=16,
)
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A byte-level CLIP BPE vocabulary of printable ASCII (+ word-end forms) and a few merges."""
    # Punctuation first so that the SD 2.x pad token "!" gets id 0, as in the real vocabulary.
    chars = list(string.punctuation + string.digits + string.ascii_lowercase)
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "c a", "ca t</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    return vocab, merges


def write_tiny_tokenizer(folder: str | Path) -> int:
    """Write ``vocab.json``, ``merges.txt`` and the two JSON configs of an SD 2.1-style CLIPTokenizer; returns the vocab size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": _BOS, "eos_token": _EOS, "pad_token": "!", "unk_token": _EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tok_cfg = dict(
        special,
        tokenizer_class="CLIPTokenizer",
        model_max_length=77,
        do_lower_case=True,
        errors="replace",
        add_prefix_space=False,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return len(vocab)


def imagedream_configs(size: str = "tiny") -> dict[str, dict[str, Any]]:
    """Config dicts of every component: unet, vae, text_encoder, image_encoder, feature_extractor, scheduler."""
    vocab_size = len(_tiny_vocab()[0])
    if size == "full":
        unet = dict(UNET_CONFIG)
        text = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            vocab_size=49408,
            projection_dim=512,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
        vision = dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1024,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
        crop = 224
    elif size == "tiny":
        unet = dict(
            image_size=8,
            in_channels=4,
            out_channels=4,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=[2, 1],
            channel_mult=[1, 2],
            num_head_channels=16,
            transformer_depth=1,
            context_dim=32,
            camera_dim=16,
            ip_dim=4,
            ip_in_dim=32,
            resampler_heads=2,
            resampler_dim_head=16,
            resampler_depth=2,
        )
        text = tiny_clip_config("gelu", max_position_embeddings=77, vocab_size=vocab_size)
        vision = tiny_clip_config("gelu", image_size=32, patch_size=8)
        crop = 32
    else:
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    # Token ids of the generated vocabulary (bos, eos, pad "!"), so the text model's pooling finds eos.
    text.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=0)
    return {
        "unet": unet,
        "vae": sd_vae_config(size),
        "text_encoder": text,
        "image_encoder": vision,
        "feature_extractor": clip_processor_config(crop),
        "scheduler": dict(STABLE_DIFFUSION_DDIM_CONFIG),
    }


def build_imagedream(size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """Instantiate the components with random weights (deterministic for ``seed``); tokenizer excluded."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    from guidance.mv_unet import MultiViewUNetModel

    cfg = imagedream_configs(size)
    torch.manual_seed(seed)
    return {
        "unet": MultiViewUNetModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        "image_encoder": CLIPVisionModel(CLIPVisionConfig(**cfg["image_encoder"])),
        "feature_extractor": CLIPImageProcessor(**cfg["feature_extractor"]),
        "scheduler": cfg["scheduler"],
    }


def save_imagedream(
    folder: str | Path, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random ImageDream in the Hub layout (model_index.json + component folders); returns ``folder``."""
    comps = build_imagedream(size, seed)
    write_tiny_tokenizer(Path(folder) / "tokenizer")
    index = {
        "_class_name": "MVDreamPipeline",
        "_diffusers_version": "0.25.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["mv_unet", "MultiViewUNetModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    return save_hub_layout(
        folder,
        comps,
        ("unet", "vae", "text_encoder", "image_encoder"),
        index,
        dtype,
        scheduler_extra={"_diffusers_version": "0.25.0"},
    )


def cached_tiny_imagedream(seed: int = 0) -> Path:
    """A tiny random ImageDream folder under the temp dir, written once and reused (tests)."""
    from guidance import mv_unet

    # The key covers the configs and the code that defines the saved tensors and files.
    src = "".join(Path(f).read_text() for f in (__file__, mv_unet.__file__, random_layout.__file__))
    key_text = json.dumps(imagedream_configs("tiny"), sort_keys=True) + src
    return cached_folder("imagedream", key_text, seed, lambda folder: save_imagedream(folder, "tiny", seed))
