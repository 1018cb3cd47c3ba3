"""The Stable Diffusion 1.x/2.x UNet (diffusers' ``UNet2DConditionModel`` layout), as Stable Zero123 uses it.

Built from the ``unet/config.json`` of a diffusers folder; parameter names are the checkpoint's, so
``diffusion_pytorch_model.safetensors`` loads strictly through :func:`guidance.nets.weights.load_module`.
Supported: down blocks ``CrossAttnDownBlock2D``/``DownBlock2D``, up blocks ``UpBlock2D``/
``CrossAttnUpBlock2D``, mid block ``UNetMidBlock2DCrossAttn``, conv or linear transformer projections,
positional (sinusoidal) time embedding. Any other config value is a UserError naming the key.

Heads: ``num_attention_heads`` must be null and ``attention_head_dim`` then holds the number of heads
per block (diffusers' legacy naming); the head width is the block width divided by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.blocks import Downsample, ResnetBlock, Upsample, multihead_attention
from guidance.nets.fused_geglu import geglu
from guidance.nets.fused_norm import group_norm_act, uses_fused
from guidance.nets.weights import ModelFolderError, check_config, config_namespace, load_module, read_config

__all__ = ["SDUNet", "UNetOutput", "load_sd_unet", "sinusoidal_embedding", "UNET_FIXED"]

#: Config keys whose value is fixed in this implementation (any of the listed values).
UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "attention_type": ("default",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "class_embeddings_concat": (False,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "cross_attention_norm": (None,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "mid_block_only_cross_attention": (None, False),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "num_attention_heads": (None,),
    "num_class_embeds": (None,),
    "only_cross_attention": (False,),
    "projection_class_embeddings_input_dim": (None,),
    "resnet_out_scale_factor": (1, 1.0),
    "resnet_skip_time_act": (False,),
    "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,),
    "time_embedding_dim": (None,),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
}
_USED = (
    "in_channels",
    "out_channels",
    "sample_size",
    "block_out_channels",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "down_block_types",
    "up_block_types",
    "use_linear_projection",
    "norm_num_groups",
    "norm_eps",
    "flip_sin_to_cos",
    "freq_shift",
    "downsample_padding",
    "upcast_attention",
    "mid_block_scale_factor",
    "transformer_layers_per_block",
)
# dropout: eval only; addition_embed_type_num_heads: unused without an addition embedding.
_IGNORED = ("dropout", "addition_embed_type_num_heads")
_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")


def sinusoidal_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Float32 ``[N,dim]`` timestep features ``[sin | cos]`` (``[cos | sin]`` if flipped) of ``t`` ``[N]``.

    Frequencies ``exp(-ln(10000) * i / (dim/2 - shift))``, i < dim/2.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift)
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat(
        [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], -1
    )
    return F.pad(emb, (0, 1)) if dim % 2 else emb


@dataclass
class UNetOutput:
    """``sample``: the predicted noise ``[B,C,h,w]``."""

    sample: torch.Tensor


class CrossAttention(nn.Module):
    """Attention of ``x`` over ``context`` (itself when None); q/k/v without bias, ``to_out.0`` with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, upcast: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.upcast = heads, upcast
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B,N,dim]``, ``context`` ``[B,M,ctx]`` -> ``[B,N,dim]``."""
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        if self.upcast and q.dtype != torch.float32:
            # upcast_attention: scores in float32 (SD 2.1's fp16 overflow fix).
            out = multihead_attention(q.float(), k.float(), v.float(), self.heads).to(q.dtype)
        else:
            out = multihead_attention(q, k, v, self.heads)
        return self.to_out[0](out)


class GEGLUFeedForward(nn.Module):
    """``net.0.proj`` (dim -> 2*4dim), value * GELU(gate), ``net.2`` (4dim -> dim)."""

    fused_geglu = False  # set by guidance.nets.fused_norm.set_fused_norm (model.fused_norm)

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, 2 * mult * dim)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,N,dim]`` -> ``[B,N,dim]``."""
        return self.net[2](geglu(self.net[0].proj(x), self))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads, head_dim, None, upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim, upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B,N,dim]``, ``context`` ``[B,M,ctx]`` -> ``[B,N,dim]``."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, ``proj_in`` (1x1 conv or linear), transformer blocks over the H*W tokens, ``proj_out``, residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        groups: int,
        layers: int,
        linear: bool,
        upcast: bool,
    ) -> None:
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, channels // heads, context_dim, upcast) for _ in range(layers)
        )
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B,C,H,W]``, ``context`` ``[B,M,ctx]`` -> ``[B,C,H,W]``."""
        b, c, h, w = x.shape
        fused = uses_fused(x, self.norm)
        y = group_norm_act(x, self.norm, silu=False)
        if not self.linear:
            y = self.proj_in(y)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)
        # The fused (channels-last) path keeps the layout: the permuted view already is channels-last,
        # where .contiguous() would copy to NCHW and the next conv copy back. The exact path is unchanged.
        y = y.contiguous(memory_format=torch.channels_last) if fused else y.contiguous()
        if not self.linear:
            y = self.proj_out(y)
        return y + x


class DownBlock(nn.Module):
    """Resnets (each followed by a transformer when ``attention``), then an optional stride-2 conv."""

    def __init__(
        self, cin: int, cout: int, n: int, temb: int, attn: dict[str, Any] | None, down: bool, a: Any
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, a.norm_num_groups, a.norm_eps, temb) for i in range(n)
        )
        self.attentions = nn.ModuleList(SpatialTransformer(cout, **attn) for _ in range(n)) if attn else None
        self.downsamplers = nn.ModuleList([Downsample(cout, a.downsample_padding)]) if down else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (output, the skip tensors for the up path)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """Resnets on ``cat(x, skip)`` (each followed by a transformer when ``attention``), then optional upsampling."""

    def __init__(
        self,
        cin: int,
        cprev: int,
        cout: int,
        n: int,
        temb: int,
        attn: dict[str, Any] | None,
        up: bool,
        a: Any,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(
                (cprev if i == 0 else cout) + (cin if i == n - 1 else cout),
                cout,
                a.norm_num_groups,
                a.norm_eps,
                temb,
            )
            for i in range(n)
        )
        self.attentions = nn.ModuleList(SpatialTransformer(cout, **attn) for _ in range(n)) if attn else None
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if up else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        size: tuple[int, int] | None,
    ) -> torch.Tensor:
        """``skips``: this block's skip tensors, consumed last first."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    """Resnet, then (transformer, resnet)."""

    def __init__(self, ch: int, temb: int, attn: dict[str, Any], a: Any) -> None:
        super().__init__()
        scale = float(a.mid_block_scale_factor)
        self.resnets = nn.ModuleList(
            ResnetBlock(ch, ch, a.norm_num_groups, a.norm_eps, temb, output_scale=scale) for _ in range(2)
        )
        self.attentions = nn.ModuleList([SpatialTransformer(ch, **attn)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[B,C,h,w]`` -> ``[B,C,h,w]``."""
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


def _per_block(value: int | Sequence[int], n: int, key: str, folder: Path) -> list[int]:
    """An int or a list of ``n`` ints from the config -> a list of ``n`` ints."""
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, int) for v in value):
        return list(value)
    raise ModelFolderError(f"{folder}/config.json: {key}={value!r} must be an int or {n} ints")


class SDUNet(nn.Module):
    """The SD UNet: ``unet(sample, t, encoder_hidden_states=...)`` -> :class:`UNetOutput` (``.sample`` = eps).

    ``config`` holds the values of ``config.json`` (with defaults filled in) as attributes.
    """

    def __init__(self, cfg: dict[str, Any], folder: Path = Path("unet")) -> None:
        super().__init__()
        defaults = dict(
            attention_head_dim=8,
            downsample_padding=1,
            mid_block_scale_factor=1.0,
            transformer_layers_per_block=1,
            use_linear_projection=False,
            upcast_attention=False,
            flip_sin_to_cos=True,
            freq_shift=0,
            norm_num_groups=32,
            norm_eps=1e-5,
        )
        check_config(cfg, folder, UNET_FIXED, _USED, _IGNORED)
        a = self.config = config_namespace({**defaults, **{k: v for k, v in cfg.items() if v is not None}})
        for key in (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
        ):
            if not hasattr(a, key):
                raise ModelFolderError(f"{folder}/config.json lacks {key!r}")
        if not isinstance(a.cross_attention_dim, int):
            raise ModelFolderError(
                f"{folder}/config.json: cross_attention_dim={a.cross_attention_dim!r} must be an int"
            )
        chans = list(a.block_out_channels)
        nb = len(chans)
        down_types, up_types = list(a.down_block_types), list(a.up_block_types)
        for key, types, allowed in (
            ("down_block_types", down_types, _DOWN_TYPES),
            ("up_block_types", up_types, _UP_TYPES),
        ):
            bad = [t for t in types if t not in allowed]
            if bad or len(types) != nb:
                raise ModelFolderError(
                    f"{folder}/config.json: {key}={types!r} is not supported ({nb} of {allowed})"
                )
        heads = _per_block(a.attention_head_dim, nb, "attention_head_dim", folder)
        layers = _per_block(a.layers_per_block, nb, "layers_per_block", folder)
        tlayers = _per_block(a.transformer_layers_per_block, nb, "transformer_layers_per_block", folder)

        def attn(i: int) -> dict[str, Any]:
            return dict(
                heads=heads[i],
                context_dim=a.cross_attention_dim,
                groups=a.norm_num_groups,
                layers=tlayers[i],
                linear=bool(a.use_linear_projection),
                upcast=bool(a.upcast_attention),
            )

        temb = chans[0] * 4
        self.conv_in = nn.Conv2d(a.in_channels, chans[0], 3, padding=1)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(chans[0], temb)
        self.time_embedding.linear_2 = nn.Linear(temb, temb)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(down_types):
            cin = chans[max(i - 1, 0)]
            cross = attn(i) if kind == "CrossAttnDownBlock2D" else None
            self.down_blocks.append(DownBlock(cin, chans[i], layers[i], temb, cross, i < nb - 1, a))
        self.mid_block = MidBlock(chans[-1], temb, attn(nb - 1), a)
        self.up_blocks = nn.ModuleList()
        rchans, rheads = chans[::-1], list(range(nb))[::-1]
        for i, kind in enumerate(up_types):
            cprev, cout, cin = rchans[max(i - 1, 0)], rchans[i], rchans[min(i + 1, nb - 1)]
            cross = attn(rheads[i]) if kind == "CrossAttnUpBlock2D" else None
            self.up_blocks.append(
                UpBlock(cin, cprev, cout, layers[rheads[i]] + 1, temb, cross, i < nb - 1, a)
            )
        self.conv_norm_out = nn.GroupNorm(a.norm_num_groups, chans[0], eps=a.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], a.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """Noise prediction ``[B,out,h,w]`` for ``sample`` ``[B,in,h,w]``, timesteps (scalar or ``[B]``), context ``[B,M,ctx]``."""
        a = self.config
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(sample.shape[0])
        t_emb = sinusoidal_embedding(t, a.block_out_channels[0], bool(a.flip_sin_to_cos), float(a.freq_shift))
        te = self.time_embedding
        temb = te.linear_2(F.silu(te.linear_1(t_emb.to(sample.dtype))))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, encoder_hidden_states)
            skips += s
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            size = None
            if block.upsamplers is not None and tuple(skips[-1].shape[-2:]) != (
                2 * x.shape[-2],
                2 * x.shape[-1],
            ):
                size = tuple(skips[-1].shape[-2:])  # odd sizes: upsample to the skip's size
            x = block(x, mine, temb, encoder_hidden_states, size)
        x = self.conv_out(group_norm_act(x, self.conv_norm_out, silu=True))
        return UNetOutput(x) if return_dict else (x,)


def load_sd_unet(folder: Path, dtype: torch.dtype, device: str | torch.device) -> SDUNet:
    """The UNet of a diffusers ``unet/`` folder in ``dtype`` on ``device``, frozen."""
    cfg = read_config(folder)
    return load_module(lambda: SDUNet(cfg, folder), folder, dtype, device)
