"""CLIP's vision tower with projection (``CLIPVisionModelWithProjection`` layout) and its image processor.

The tower: patch embedding (conv, no bias) + class token + learned positions, ``pre_layrnorm``,
pre-LayerNorm transformer layers (quick_gelu or gelu MLP per ``hidden_act``), ``post_layernorm`` of
the class token, ``visual_projection`` -> ``image_embeds``. Built from ``image_encoder/config.json``;
parameter names are the checkpoint's.

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

from guidance.nets.weights import ModelFolderError, config_namespace, load_module, read_config

__all__ = ["ClipVisionWithProjection", "ClipVisionOutput", "ClipImageProcessor", "load_clip_vision"]

_ACTS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
}


@dataclass
class ClipVisionOutput:
    """``image_embeds`` ``[B,P]`` (projected, pooled) and ``last_hidden_state`` ``[B,1+N,D]``."""

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor


class Embeddings(nn.Module):
    """Patches + class token + positions: pixels ``[B,3,S,S]`` -> tokens ``[B,1+N,D]``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        d, p = a.hidden_size, a.patch_size
        self.class_embedding = nn.Parameter(torch.empty(d))
        self.patch_embedding = nn.Conv2d(a.num_channels, d, p, stride=p, bias=False)
        # A bare parameter holder, not nn.Embedding: its normal_ init on the meta device imports
        # torch._dynamo (~1 s of a cold start).
        self.position_embedding = nn.Module()
        self.position_embedding.weight = nn.Parameter(torch.empty((a.image_size // p) ** 2 + 1, d))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight[None]


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,N,D]`` -> ``[B,N,D]``."""
        b, n, d = x.shape
        q, k, v = (
            p(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm attention and MLP blocks, each residual."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        d = a.hidden_size
        self.self_attn = SelfAttention(d, a.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=a.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, a.intermediate_size)
        self.mlp.fc2 = nn.Linear(a.intermediate_size, d)
        self.layer_norm2 = nn.LayerNorm(d, eps=a.layer_norm_eps)
        self.act = _ACTS[a.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,N,D]`` -> ``[B,N,D]``."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class VisionTransformer(nn.Module):
    """Embeddings, ``pre_layrnorm`` (sic, the checkpoint's name), encoder layers, ``post_layernorm``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(a)
        self.pre_layrnorm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(a) for _ in range(a.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (last hidden state ``[B,1+N,D]``, pooled class token ``[B,D]`` after ``post_layernorm``)."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return x, self.post_layernorm(x[:, 0])


class ClipVisionWithProjection(nn.Module):
    """``model(pixel_values)`` -> :class:`ClipVisionOutput`; ``config`` as attributes."""

    def __init__(self, cfg: dict[str, Any], folder: Path = Path("image_encoder")) -> None:
        super().__init__()
        if cfg.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise ModelFolderError(
                f"{folder}/config.json: model_type={cfg['model_type']!r} is not supported (clip_vision_model)"
            )
        defaults = dict(num_channels=3, layer_norm_eps=1e-5, hidden_act="quick_gelu")
        a = self.config = config_namespace({**defaults, **cfg})
        if a.hidden_act not in _ACTS:
            raise ModelFolderError(
                f"{folder}/config.json: hidden_act={a.hidden_act!r} is not supported ({', '.join(_ACTS)})"
            )
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
            "projection_dim",
        ):
            if not isinstance(getattr(a, key, None), int):
                raise ModelFolderError(f"{folder}/config.json: {key} must be an integer")
        self.vision_model = VisionTransformer(a)
        self.visual_projection = nn.Linear(a.hidden_size, a.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> ClipVisionOutput:
        """CLIP pixel values ``[B,3,S,S]`` (see :class:`ClipImageProcessor`) -> embeddings."""
        hidden, pooled = self.vision_model(pixel_values)
        return ClipVisionOutput(image_embeds=self.visual_projection(pooled), last_hidden_state=hidden)


def load_clip_vision(
    folder: Path, dtype: torch.dtype, device: str | torch.device
) -> ClipVisionWithProjection:
    """The CLIP vision tower of an ``image_encoder/`` folder in ``dtype`` on ``device``, frozen."""
    cfg = read_config(folder)
    return load_module(lambda: ClipVisionWithProjection(cfg, folder), folder, dtype, device)


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
