"""The Stable Diffusion VAE (diffusers' ``AutoencoderKL`` layout), built from ``vae/config.json``.

Encoder -> ``quant_conv`` -> diagonal Gaussian (mean, log-variance clamped to [-30, 20]);
``post_quant_conv`` -> decoder. The mid blocks hold one single-head self-attention over all pixels.
Parameter names are the checkpoint's (strict loading through :func:`guidance.nets.weights.load_module`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guidance.nets.blocks import Downsample, ResnetBlock, Upsample, multihead_attention
from guidance.nets.fused_norm import group_norm_act, uses_fused
from guidance.nets.weights import ModelFolderError, check_config, config_namespace, load_module, read_config

__all__ = ["AutoencoderKL", "DiagonalGaussian", "load_vae"]

_EPS = 1e-6  # every norm of the SD VAE

VAE_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "mid_block_add_attention": (True,),
    "shift_factor": (None,),
    "latents_mean": (None,),
    "latents_std": (None,),
}
_USED = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
)
# force_upcast: a hint to diffusers pipelines (run the VAE in fp32); the project runs it in model.dtype.
_IGNORED = ("force_upcast",)


@dataclass
class DiagonalGaussian:
    """The VAE posterior: ``mean`` and ``logvar`` ``[B,C,h,w]``; ``std`` = exp(logvar / 2)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation ``[B,C,h,w]``."""
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        """The posterior mean."""
        return self.mean


@dataclass
class EncoderOutput:
    """``latent_dist``: the posterior of the latents."""

    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    """``sample``: decoded images ``[B,3,H,W]`` in about [-1, 1]."""

    sample: torch.Tensor


class SelfAttention(nn.Module):
    """Single-head attention over the H*W pixels with a GroupNorm in front; residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=_EPS)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,C,H,W]`` -> ``[B,C,H,W]``."""
        b, c, h, w = x.shape
        if uses_fused(x, self.group_norm):
            # Channels-last: the normalised [B,H,W,C] memory is already the [B,HW,C] token layout.
            y = group_norm_act(x, self.group_norm, silu=False).permute(0, 2, 3, 1).reshape(b, h * w, c)
        else:
            y = self.group_norm(x.reshape(b, c, h * w)).transpose(1, 2)
        y = self.to_out[0](multihead_attention(self.to_q(y), self.to_k(y), self.to_v(y), heads=1))
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    """Resnet, self-attention, resnet (no time embedding)."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(ch, ch, groups, _EPS) for _ in range(2))
        self.attentions = nn.ModuleList([SelfAttention(ch, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,C,h,w]`` -> ``[B,C,h,w]``."""
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class CoderBlock(nn.Module):
    """Resnets then an optional Downsample (encoder) or Upsample (decoder)."""

    def __init__(self, cin: int, cout: int, n: int, groups: int, resample: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, groups, _EPS) for i in range(n)
        )
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout, padding=0)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,Cin,H,W]`` -> ``[B,Cout,H',W']``."""
        for resnet in self.resnets:
            x = resnet(x)
        if self.resample == "down":
            x = self.downsamplers[0](x)
        elif self.resample == "up":
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """Pixels ``[B,3,H,W]`` -> ``[B,2L,H/f,W/f]`` (mean and log-variance channels)."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        ch, g = list(a.block_out_channels), a.norm_num_groups
        self.conv_in = nn.Conv2d(a.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            CoderBlock(ch[max(i - 1, 0)], ch[i], a.layers_per_block, g, "down" if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.mid_block = MidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * a.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(group_norm_act(self.mid_block(x), self.conv_norm_out, silu=True))


class Decoder(nn.Module):
    """Latents ``[B,L,h,w]`` -> pixels ``[B,3,h*f,w*f]``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        ch, g = list(a.block_out_channels)[::-1], a.norm_num_groups
        self.conv_in = nn.Conv2d(a.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList(
            CoderBlock(ch[max(i - 1, 0)], ch[i], a.layers_per_block + 1, g, "up" if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], a.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(group_norm_act(x, self.conv_norm_out, silu=True))


class AutoencoderKL(nn.Module):
    """``encode(x).latent_dist`` (mean/std) and ``decode(z).sample``; ``config`` as attributes."""

    def __init__(self, cfg: dict[str, Any], folder: Path = Path("vae")) -> None:
        super().__init__()
        check_config(cfg, folder, VAE_FIXED, _USED, _IGNORED)
        defaults = dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32
        )
        a = self.config = config_namespace({**defaults, "scaling_factor": 0.18215, **cfg})
        if "block_out_channels" not in cfg:
            raise ModelFolderError(f"{folder}/config.json lacks 'block_out_channels'")
        n = len(a.block_out_channels)
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = list(cfg.get(key, [kind] * n))
            if types != [kind] * n:
                raise ModelFolderError(
                    f"{folder}/config.json: {key}={types!r} is not supported ({n} x {kind})"
                )
        self.encoder = Encoder(a)
        self.decoder = Decoder(a)
        self.quant_conv = nn.Conv2d(2 * a.latent_channels, 2 * a.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(a.latent_channels, a.latent_channels, 1)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Pixels ``[B,3,H,W]`` in [-1,1] -> the posterior of the (unscaled) latents ``[B,L,H/f,W/f]``."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return EncoderOutput(DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0)))

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Unscaled latents ``[B,L,h,w]`` -> pixels ``[B,3,h*f,w*f]`` in about [-1,1]."""
        x = self.decoder(self.post_quant_conv(z))
        return DecoderOutput(x) if return_dict else (x,)


def load_vae(folder: Path, dtype: torch.dtype, device: str | torch.device) -> AutoencoderKL:
    """The VAE of a diffusers ``vae/`` folder in ``dtype`` on ``device``, frozen."""
    cfg = read_config(folder)
    return load_module(lambda: AutoencoderKL(cfg, folder), folder, dtype, device)
