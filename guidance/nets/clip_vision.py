"""CLIP's vision tower (``CLIPVisionModelWithProjection`` or ``CLIPVisionModel`` layout) and its image processor.

The tower: patch embedding (conv, no bias) + class token + learned positions, ``pre_layrnorm``,
pre-LayerNorm transformer layers (:mod:`guidance.nets.clip_layers`, quick_gelu or gelu MLP per
``hidden_act``), ``post_layernorm`` of the class token, ``visual_projection`` -> ``image_embeds``
(when the checkpoint has one); any intermediate hidden state on request. Built from
``image_encoder/config.json``; parameter names are the checkpoint's.

The processor reads ``feature_extractor/preprocessor_config.json`` and reproduces what the installed
``transformers.CLIPImageProcessor`` (torchvision backend) does to a uint8 image: shortest side to
``size`` with antialiased bicubic (torch's native uint8 kernel on the CPU, PIL's algorithm), centre
crop, rescale and normalise in float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.clip_layers import Encoder, param_table, tower_attributes, tower_config, with_prefix
from guidance.nets.weights import ModelFolderError, load_module, read_config

__all__ = ["ClipVisionWithProjection", "ClipVisionOutput", "ClipImageProcessor", "load_clip_vision"]


@dataclass
class ClipVisionOutput:
    """``image_embeds`` ``[B,P]`` (projected, pooled; None without a projection) and ``last_hidden_state`` ``[B,1+N,D]``."""

    image_embeds: torch.Tensor | None
    last_hidden_state: torch.Tensor


class Embeddings(nn.Module):
    """Patches + class token + positions: pixels ``[B,3,S,S]`` -> tokens ``[B,1+N,D]``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        d, p = a.hidden_size, a.patch_size
        self.class_embedding = nn.Parameter(torch.empty(d))
        self.patch_embedding = nn.Conv2d(a.num_channels, d, p, stride=p, bias=False)
        self.position_embedding = param_table((a.image_size // p) ** 2 + 1, d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight[None]


class VisionTransformer(nn.Module):
    """Embeddings, ``pre_layrnorm`` (sic, the checkpoint's name), encoder layers, ``post_layernorm``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(a)
        self.pre_layrnorm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)
        self.encoder = Encoder(a)
        self.post_layernorm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (last hidden state ``[B,1+N,D]``, pooled class token ``[B,D]`` after ``post_layernorm``)."""
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return x, self.post_layernorm(x[:, 0])

    def hidden_state(self, pixels: torch.Tensor, index: int) -> torch.Tensor:
        """transformers' ``hidden_states[index]`` ``[B,1+N,D]``: 0 = embeddings after ``pre_layrnorm``,
        i = after i layers, negative from the end (-1 = last layer; no ``post_layernorm``).

        Only the layers needed run (``-2``, ImageDream's features, skips the last one).
        """
        n = len(self.encoder.layers)
        depth = index + n + 1 if index < 0 else index
        if not 0 <= depth <= n:
            raise IndexError(f"hidden state {index} of a {n}-layer tower")
        return self.encoder(self.pre_layrnorm(self.embeddings(pixels)), depth=depth)


class ClipVisionWithProjection(nn.Module):
    """``model(pixel_values)`` -> :class:`ClipVisionOutput`; ``config`` as attributes.

    ``projection=False``: the ``CLIPVisionModel`` layout (no ``visual_projection``; ImageDream's
    encoder, whose features are :meth:`hidden_state`).
    """

    def __init__(
        self, cfg: dict[str, Any], folder: Path = Path("image_encoder"), projection: bool = True
    ) -> None:
        super().__init__()
        keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        keys += ["image_size", "patch_size"] + (["projection_dim"] if projection else [])
        defaults = dict(num_channels=3, layer_norm_eps=1e-5, hidden_act="quick_gelu")
        a = self.config = tower_attributes(cfg, folder, "vision", defaults, keys)
        self.vision_model = VisionTransformer(a)
        self.visual_projection = (
            nn.Linear(a.hidden_size, a.projection_dim, bias=False) if projection else None
        )

    def forward(self, pixel_values: torch.Tensor) -> ClipVisionOutput:
        """CLIP pixel values ``[B,3,S,S]`` (see :class:`ClipImageProcessor`) -> embeddings."""
        hidden, pooled = self.vision_model(pixel_values)
        embeds = None if self.visual_projection is None else self.visual_projection(pooled)
        return ClipVisionOutput(image_embeds=embeds, last_hidden_state=hidden)

    def hidden_state(self, pixel_values: torch.Tensor, index: int = -2) -> torch.Tensor:
        """transformers' ``hidden_states[index]`` ``[B,1+N,D]`` (see :meth:`VisionTransformer.hidden_state`)."""
        return self.vision_model.hidden_state(pixel_values, index)


def load_clip_vision(
    folder: Path, dtype: torch.dtype, device: str | torch.device, projection: bool = True
) -> ClipVisionWithProjection:
    """The CLIP vision tower of an ``image_encoder/`` folder in ``dtype`` on ``device``, frozen.

    ``projection``: the folder holds a ``CLIPVisionModelWithProjection`` (Zero123) or, when False, a
    ``CLIPVisionModel`` (ImageDream); either transformers key layout loads, and so does a full
    ``CLIPModel`` folder (its vision tower and projection are used, the text tower is not read).
    """
    cfg = read_config(folder)
    _, nested = tower_config(cfg, folder, "vision")
    only = ("vision_model.", "visual_projection.") if projection else ("vision_model.",)
    return load_module(
        lambda: ClipVisionWithProjection(cfg, folder, projection),
        folder,
        dtype,
        device,
        adapt=with_prefix("vision_model", only if nested else None),
    )


def _hw(value: Any, key: str, path: Path) -> tuple[int, int] | int:
    """``{"height", "width"}`` -> (h, w); ``{"shortest_edge"}`` or an int -> the int."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return int(value["height"]), int(value["width"])
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return int(value["shortest_edge"])
    raise ModelFolderError(f"{path}: {key}={value!r} is not supported")


def _resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 ``[1,3,H,W]``, as torchvision (the processor's backend) does it.

    On the CPU torch has a native uint8 kernel (PIL's algorithm); elsewhere float32, clamped and rounded.
    """
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    y = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return y.clamp_(0, 255).round_().to(torch.uint8)


class ClipImageProcessor:
    """uint8 image ``[3,H,W]`` -> CLIP pixel values float32 ``[1,3,S,S]`` (resize, crop, normalise)."""

    def __init__(self, cfg: dict[str, Any], path: Path = Path("preprocessor_config.json")) -> None:
        """``cfg``: the keys of ``preprocessor_config.json``."""
        if cfg.get("resample", 3) != 3:
            raise ModelFolderError(f"{path}: resample={cfg['resample']!r} is not supported (3, bicubic)")
        for key in ("do_pad", "do_reduce_labels"):
            if cfg.get(key):
                raise ModelFolderError(f"{path}: {key}=true is not supported")
        self.do_resize = bool(cfg.get("do_resize", True))
        size = _hw(cfg.get("size", {"shortest_edge": 224}), "size", path)
        # A plain int means the shortest edge (CLIP keeps the aspect ratio).
        self.size = size
        self.do_center_crop = bool(cfg.get("do_center_crop", True))
        crop = _hw(cfg.get("crop_size", 224), "crop_size", path)
        self.crop = (crop, crop) if isinstance(crop, int) else crop
        self.do_rescale = bool(cfg.get("do_rescale", True))
        self.rescale_factor = float(cfg.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(cfg.get("do_normalize", True))
        self.mean = [float(v) for v in cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073])]
        self.std = [float(v) for v in cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711])]
        for key, values in (("image_mean", self.mean), ("image_std", self.std)):
            if len(values) != 3:
                raise ModelFolderError(f"{path}: {key} must hold 3 values (RGB), got {len(values)}")

    @classmethod
    def from_folder(cls, folder: Path) -> ClipImageProcessor:
        """From ``folder/preprocessor_config.json``."""
        path = Path(folder) / "preprocessor_config.json"
        try:
            return cls(json.loads(path.read_text()), path)
        except FileNotFoundError:
            raise ModelFolderError(f"{folder} has no preprocessor_config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFolderError(f"{path} is not valid JSON ({exc})") from None

    def _resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (height, width) of the resize step."""
        if isinstance(self.size, tuple):
            return self.size
        if h <= w:
            return self.size, int(self.size * w / h)
        return int(self.size * h / w), self.size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` uint8 ``[3,H,W]`` (RGB) -> float32 ``[1,3,S,S]`` on the image's device."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 [3,H,W] image, got {image.dtype} {list(image.shape)}")
        x = image[None]
        if self.do_resize:
            new = self._resized_size(*x.shape[-2:])
            if new != tuple(x.shape[-2:]):
                x = _resize_uint8(x, new)
        if self.do_center_crop:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            if ch > h or cw > w:
                pad = [
                    (cw - w) // 2 if cw > w else 0,
                    (cw - w + 1) // 2 if cw > w else 0,
                    (ch - h) // 2 if ch > h else 0,
                    (ch - h + 1) // 2 if ch > h else 0,
                ]
                x = F.pad(x, pad)
                h, w = x.shape[-2:]
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
            x = x[..., top : top + ch, left : left + cw]
        x = x.float()
        if self.do_normalize:
            # Rescale folded into mean and std (x/255 - m)/s = (x - 255m)/(255s), in float32 like transformers.
            k = 1.0 / self.rescale_factor if self.do_rescale else 1.0
            mean = torch.tensor(self.mean, device=x.device) * k
            std = torch.tensor(self.std, device=x.device) * k
            x = (x - mean[:, None, None]) / std[:, None, None]
        elif self.do_rescale:
            x = x * self.rescale_factor
        return x.contiguous()
