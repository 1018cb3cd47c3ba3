"""Loading pieces shared by the diffusers-layout models (:mod:`guidance.latent_diffusion` and its subclasses).

No remote code: every network (UNets, VAE, CLIP towers, tokenizer, image processor) loads through
:mod:`guidance.nets` (pure torch), which reads the same folders; this module checks the pipeline
folder and holds the small helpers around it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import UserError
from guidance.loading import resolve_model

__all__ = [
    "DTYPES",
    "resolve_dtype",
    "use_safetensors",
    "open_pipeline",
    "frozen",
    "reference_pixels",
    "clip_pixels",
]

log = logging.getLogger(__name__)

DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, key: str = "model.dtype") -> torch.dtype:
    """A dtype name (``fp16``, ``bf16``, ``fp32``, ...) or dtype -> the dtype to run in on ``device``.

    fp16 on CPU becomes fp32 (fp16 convolutions are slow or missing there). ``key`` names the config
    entry in the error for an unknown name.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"{key}={dtype!r} is not one of fp16, bf16, fp32")
        dtype = DTYPES[dtype]
    if device.type == "cpu" and dtype == torch.float16:
        # fp16 convolutions are slow or missing on CPU; keep the CPU path usable.
        log.warning("fp16 on CPU: using fp32 instead")
        dtype = torch.float32
    return dtype


def use_safetensors(folder: Path) -> bool:
    """True when the folder has safetensors weights (else a .bin is loaded, weights_only)."""
    return any(folder.glob("*.safetensors"))


def open_pipeline(
    model: str | Path,
    required: Sequence[str],
    name: str,
    config_key: str = "model.path",
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Local folder of a diffusers pipeline (folder or Hub id) that has every ``required`` component.

    ``model_index.json`` is read only to check the components. ``name`` (e.g. ``Zero123``) appears in
    the one-line :class:`UserError` for a folder that is not such a pipeline.
    """
    root = resolve_model(
        model,
        config_key=config_key,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_patterns=["*.json", "*.safetensors", "*.txt"],
    )
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"{root} has no model_index.json; is it a diffusers {name} folder? ({config_key})")
    index = json.loads(index_path.read_text())
    missing = [c for c in required if c not in index or not (root / c).is_dir()]
    if missing:
        article = "an" if name[:1].upper() in "AEIOU" else "a"
        raise UserError(f"{root} lacks component folder(s) {', '.join(missing)} of {article} {name} pipeline")
    return root


def frozen(module: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``module`` on ``device`` (and cast to ``dtype`` if given), in eval mode, gradients off."""
    module = module.to(device) if dtype is None else module.to(device, dtype)
    return module.eval().requires_grad_(False)


def reference_pixels(rgb: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """Reference ``rgb`` float ``[3,H,W]`` in [0,1] -> float32 ``[1,3,size,size]`` on ``device`` (bilinear)."""
    x = rgb.to(device, torch.float32)[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    return x


def clip_pixels(feature_extractor: Any, x: torch.Tensor) -> torch.Tensor:
    """CLIP ``pixel_values`` of the first image of ``x`` float ``[B,3,H,W]`` in [0,1] (on the CPU).

    The authors go through PIL (``to_pil_image`` truncates ``x*255`` to uint8) before the processor;
    ``feature_extractor`` is a :class:`guidance.nets.clip_vision.ClipImageProcessor` (uint8 ``[3,H,W]`` in).
    """
    u8 = x[0].clamp(0, 1).mul(255).to(torch.uint8).cpu()
    return feature_extractor(u8)
