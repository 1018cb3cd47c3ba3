"""Shared by the random-weight models (:mod:`testing.random_zero123`, :mod:`testing.random_imagedream`).

Config dicts both use (the SD VAE, the CLIP image processor), writing components in the Hugging Face
Hub folder layout, and the cached tiny-model folder under the temp dir that tests reuse. Nothing here
creates weights: the callers build their models (seed and init order are theirs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["sd_vae_config", "tiny_clip_config", "clip_processor_config", "save_hub_layout", "cached_folder"]

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def sd_vae_config(size: str) -> dict[str, Any]:
    """``AutoencoderKL`` config: the Stable Diffusion VAE (``full``) or a 32-channel one (``tiny``, 64 px)."""
    full = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        sample_size=256,
        scaling_factor=0.18215,
        act_fn="silu",
        norm_num_groups=32,
    )
    if size == "full":
        return full
    if size == "tiny":
        return dict(full, block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
    raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")


def tiny_clip_config(hidden_act: str, **extra: Any) -> dict[str, Any]:
    """Config of a tiny CLIP tower (width 32, 2 layers, 4 heads); ``extra``: the tower's own keys (image or text)."""
    return dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        **extra,
    )


def clip_processor_config(crop: int) -> dict[str, Any]:
    """``CLIPImageProcessor`` config: resize the short edge to ``crop``, centre crop, OpenAI CLIP normalisation."""
    return dict(
        crop_size={"height": crop, "width": crop},
        do_center_crop=True,
        do_convert_rgb=True,
        do_normalize=True,
        do_rescale=True,
        do_resize=True,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        resample=3,
        rescale_factor=1 / 255,
        size={"shortest_edge": crop},
    )


def save_hub_layout(
    folder: str | Path,
    comps: dict[str, Any],
    models: Sequence[str],
    index: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    scheduler_extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``comps`` as a diffusers pipeline folder; returns ``folder``.

    ``models``: the names of the ``save_pretrained`` models in ``comps``, written as safetensors in
    ``dtype`` and popped from ``comps`` one by one (a full model is large: each part is freed once
    written). ``comps["feature_extractor"]`` is saved too, ``comps["scheduler"]`` (a dict, updated
    with ``scheduler_extra``) becomes ``scheduler/scheduler_config.json``, and ``index`` becomes
    ``model_index.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in models:
        model = comps.pop(name)
        (model if dtype == torch.float32 else model.to(dtype)).save_pretrained(
            folder / name, safe_serialization=True
        )
    comps["feature_extractor"].save_pretrained(folder / "feature_extractor")
    (folder / "scheduler").mkdir(exist_ok=True)
    sched = dict(comps["scheduler"], **(scheduler_extra or {}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def cached_folder(name: str, key_text: str, seed: int, write: Callable[[Path], Any]) -> Path:
    """``<tmp>/microdreamer_tiny_<name>_<hash of key_text>_<seed>``, made once by ``write(folder)`` and reused.

    ``key_text`` must cover everything that defines the written files (configs, init code), so that
    a change makes a new folder. The folder is written under a temporary name and renamed, so that
    concurrent test processes never see half a folder.
    """
    key = hashlib.sha1(key_text.encode()).hexdigest()[:10]
    final = Path(tempfile.gettempdir()) / f"microdreamer_tiny_{name}_{key}_{seed}"
    if (final / "model_index.json").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f"tiny_{name}_", dir=final.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, final)  # atomic: concurrent test processes never see half a folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return final
