"""The multi-view UNet of MVDream / ImageDream, written for this project.

The module tree reproduces the parameter names of the diffusers-layout checkpoints
``ashawkey/imagedream-ipmv-diffusers`` and ``ashawkey/mvdream-sd2.1-diffusers`` (folder ``unet/``,
class name ``MultiViewUNetModel``) so their ``diffusion_pytorch_model.safetensors`` load with no missing
or unexpected key. Facts used (docs/method.md#ckpt-imagedream):

* An LDM ``openaimodel`` UNet: ``input_blocks`` / ``middle_block`` / ``output_blocks`` of residual blocks
  and spatial transformers, ``time_embed`` and ``camera_embed`` MLPs added together.
* Every transformer attends over all F frames of a sample at once in its self-attention
  (that is what makes the views consistent); cross-attention and feed-forward stay per frame.
* ImageDream (``ip_dim > 0``): a Perceiver ``Resampler`` turns the CLIP image tokens into ``ip_dim``
  extra context tokens, read by separate ``to_k_ip``/``to_v_ip`` projections whose attention output is
  added to the text attention; the reference latent ``ip_img`` replaces the last frame of each sample.

Batches are frame-major inside a sample: row ``b * F + f``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.weights import (
    ModelFolderError,
    check_config,
    config_namespace,
    load_module,
    read_config,
    read_weights,
)

__all__ = ["MultiViewUNetConfig", "MultiViewUNetModel", "Resampler", "load_mv_unet", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` laid out ``[cos | sin]`` (LDM order) for timesteps ``[N]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (the original LDM does this for fp16 stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, h*d] -> [B, h, L, d]``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, L, d] -> [B, L, h*d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v; optional decoupled image-prompt keys/values.

    With ``ip_tokens > 0`` the last ``ip_tokens`` context tokens are the image prompt: they get their
    own ``to_k_ip``/``to_v_ip`` and their attention output is added, times ``ip_weight``, to the text
    attention output (same queries), before ``to_out``.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None,
        heads: int,
        dim_head: int,
        dropout: float = 0.0,
        ip_tokens: int = 0,
        ip_weight: float = 1.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.ip_tokens = ip_tokens
        self.ip_weight = ip_weight
        if ip_tokens > 0:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, C]``, ``context [B, T, Cc]`` (None = self-attention) -> ``[B, L, C]``."""
        ctx = x if context is None else context
        q = _heads(self.to_q(x), self.heads)
        if self.ip_tokens > 0:
            text, img = ctx[:, : -self.ip_tokens], ctx[:, -self.ip_tokens :]
        else:
            text, img = ctx, None
        out = F.scaled_dot_product_attention(
            q, _heads(self.to_k(text), self.heads), _heads(self.to_v(text), self.heads)
        )
        if img is not None:
            out_ip = F.scaled_dot_product_attention(
                q, _heads(self.to_k_ip(img), self.heads), _heads(self.to_v_ip(img), self.heads)
            )
            out = out + self.ip_weight * out_ip
        return self.to_out(_merge(out))


class GEGLU(nn.Module):
    """Linear to ``2 * dim_out`` split into value and gate: ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x hidden width: keys ``net.0.proj`` and ``net.2``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiViewTransformerBlock(nn.Module):
    """Pre-norm block: multi-view self-attention, (text + image-prompt) cross-attention, GEGLU FF."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        dropout: float,
        ip_tokens: int,
        ip_weight: float,
    ) -> None:
        super().__init__()
        self.attn1 = Attention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, dropout, ip_tokens, ip_weight)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x [(B*F), L, C]``, ``context [(B*F), T, Cc]`` -> ``[(B*F), L, C]``."""
        bf, n, c = x.shape
        # Self-attention sees the tokens of all F views of a sample as one sequence.
        joint = x.reshape(bf // num_frames, num_frames * n, c)
        joint = joint + self.attn1(self.norm1(joint))
        x = joint.reshape(bf, n, c)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer3D(nn.Module):
    """GroupNorm (eps 1e-6) + Linear in, ``depth`` multi-view blocks, Linear out, residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int,
        dropout: float,
        ip_tokens: int,
        ip_weight: float,
        groups: int,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        if inner != channels:
            raise ValueError(f"attention width {heads}x{dim_head} must equal the channels {channels}")
        self.norm = GroupNorm32(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            MultiViewTransformerBlock(inner, heads, dim_head, context_dim, dropout, ip_tokens, ip_weight)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x [(B*F), C, H, W]`` -> same shape."""
        bf, c, h, w = x.shape
        y = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        y = self.proj_out(y)
        return x + y.transpose(1, 2).reshape(bf, c, h, w)


class ResBlock(nn.Module):
    """``skip(x) + conv(drop(SiLU(GN(conv(SiLU(GN(x))) + Linear(SiLU(emb))))))`` (no scale-shift)."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]``, ``emb [N, E]`` -> ``[N, C_out, H, W]``."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 convolution (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStage(nn.Sequential):
    """A numbered sequence of layers; each gets the inputs its type needs."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class PerceiverAttention(nn.Module):
    """Learned queries attend to ``concat(image tokens, queries)``; bias-free projections."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]`` image tokens, ``latents [B, Q, D]`` -> update ``[B, Q, D]``."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = _heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads))
        return self.to_out(_merge(out))


class Resampler(nn.Module):
    """Perceiver resampler: CLIP tokens ``[B, N, in_dim]`` -> ``num_queries`` tokens ``[B, Q, out_dim]``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        num_queries: int,
        in_dim: int,
        out_dim: int,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        # Shape [1, Q, D]: overwritten by checkpoints, the init scale only matters for random tests.
        self.latents = nn.Parameter(torch.empty(1, num_queries, dim))
        if not self.latents.is_meta:  # a division on the meta device imports torch._dynamo (~1 s)
            with torch.no_grad():
                self.latents.copy_(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(in_dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, heads, dim_head),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, dim * ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(dim * ff_mult, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, in_dim]`` -> ``[B, Q, out_dim]``."""
        latents = self.latents.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))


@dataclass
class MultiViewUNetConfig:
    """The fields of ``unet/config.json`` (the checkpoints') plus the LDM constructor options.

    The LDM options are accepted for compatibility; values other than the defaults used by
    MVDream/ImageDream are refused (:meth:`validate`). ``use_checkpoint`` (the first Hub upload has it)
    does not change the computation. Extra fields the checkpoints lack, for tiny test models, default to
    the real model's values: ``ip_in_dim`` (Resampler input width, 1280 = OpenCLIP ViT-H),
    ``resampler_heads`` x ``resampler_dim_head`` (12 x 64), ``resampler_depth`` (4), ``norm_num_groups`` (32).
    """

    image_size: int = 32
    in_channels: int = 4
    model_channels: int = 320
    out_channels: int = 4
    num_res_blocks: int | list[int] = 2
    attention_resolutions: list[int] = dataclasses.field(default_factory=lambda: [4, 2, 1])
    dropout: float = 0.0
    channel_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 4])
    conv_resample: bool = True
    dims: int = 2
    num_classes: int | None = None
    num_heads: int = -1
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    transformer_depth: int = 1
    context_dim: int = 1024
    n_embed: int | None = None
    num_attention_blocks: list[int] | None = None
    adm_in_channels: int | None = None
    camera_dim: int | None = 16
    ip_dim: int = 0
    ip_weight: float = 1.0
    use_checkpoint: bool = False
    ip_in_dim: int = 1280
    resampler_heads: int = 12
    resampler_dim_head: int = 64
    resampler_depth: int = 4
    norm_num_groups: int = 32

    def validate(self) -> None:
        """Raise ValueError naming the options this implementation does not support."""
        unsupported = {
            "conv_resample": self.conv_resample is not True,
            "dims": self.dims != 2,
            "num_classes": self.num_classes is not None,
            "use_scale_shift_norm": bool(self.use_scale_shift_norm),
            "resblock_updown": bool(self.resblock_updown),
            "n_embed": self.n_embed is not None,
            "num_attention_blocks": self.num_attention_blocks is not None,
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(f"MultiViewUNetModel: unsupported non-default config values: {bad}")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("MultiViewUNetModel: set num_heads or num_head_channels")


_FIELDS = tuple(f.name for f in dataclasses.fields(MultiViewUNetConfig))


class MultiViewUNetModel(nn.Module):
    """MVDream / ImageDream multi-view UNet (diffusers folder ``unet/``, class ``MultiViewUNetModel``).

    ``MultiViewUNetModel(**fields)`` with the fields of :class:`MultiViewUNetConfig`; ``config`` holds
    them all as attributes (``unet.config.ip_dim``). :func:`load_mv_unet` loads a ``unet/`` folder,
    :meth:`save_pretrained` writes one.
    """

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        c = MultiViewUNetConfig(**fields)
        c.validate()
        self.config = config_namespace(dataclasses.asdict(c))
        model_channels, channel_mult, dropout = c.model_channels, c.channel_mult, c.dropout
        ip_dim, context_dim, g = c.ip_dim, c.context_dim, c.norm_num_groups
        self.ip_dim = ip_dim
        self.model_channels = model_channels
        res_blocks = (
            [c.num_res_blocks] * len(channel_mult)
            if isinstance(c.num_res_blocks, int)
            else list(c.num_res_blocks)
        )
        emb_dim = 4 * model_channels

        def heads_for(ch: int) -> tuple[int, int]:
            # A fixed channel width per head wins over a fixed head count (LDM rule).
            if c.num_head_channels != -1:
                return ch // c.num_head_channels, c.num_head_channels
            return c.num_heads, ch // c.num_heads

        def transformer(ch: int) -> SpatialTransformer3D:
            h, d = heads_for(ch)
            return SpatialTransformer3D(
                ch, h, d, context_dim, c.transformer_depth, dropout, ip_dim, c.ip_weight, g
            )

        if ip_dim > 0:
            self.image_embed = Resampler(
                dim=context_dim,
                depth=c.resampler_depth,
                dim_head=c.resampler_dim_head,
                heads=c.resampler_heads,
                num_queries=ip_dim,
                in_dim=c.ip_in_dim,
                out_dim=context_dim,
            )
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if c.camera_dim is not None:
            self.camera_embed = nn.Sequential(
                nn.Linear(c.camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        self.input_blocks = nn.ModuleList([UNetStage(nn.Conv2d(c.in_channels, model_channels, 3, padding=1))])
        skip_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, dropout, g)]
                ch = mult * model_channels
                if ds in c.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetStage(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(UNetStage(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = UNetStage(
            ResBlock(ch, emb_dim, ch, dropout, g), transformer(ch), ResBlock(ch, emb_dim, ch, dropout, g)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, mult * model_channels, dropout, g)]
                ch = mult * model_channels
                if ds in c.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetStage(*layers))

        self.out = nn.Sequential(
            GroupNorm32(g, ch), nn.SiLU(), nn.Conv2d(model_channels, c.out_channels, 3, padding=1)
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MultiViewUNetModel:
        """A model (random init) from a ``unet/config.json`` dict; metadata keys (``_class_name``, ...) are skipped."""
        return cls(**{k: v for k, v in config.items() if not k.startswith("_")})

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write ``config.json`` (every field) and ``diffusion_pytorch_model.safetensors`` (the Hub layout)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("only safetensors are written")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "MultiViewUNetModel", **vars(self.config)}
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

    def embed_image(self, ip: torch.Tensor) -> torch.Tensor:
        """CLIP image tokens ``[N, T, ip_in_dim]`` -> image-prompt context tokens ``[N, ip_dim, context_dim]``."""
        return self.image_embed(ip)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        camera: torch.Tensor | None = None,
        num_frames: int = 1,
        ip: torch.Tensor | None = None,
        ip_img: torch.Tensor | None = None,
        ip_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise for every frame.

        ``x [(B*F), C, H, W]`` noisy latents, frame-major per sample; ``timesteps`` ``[(B*F)]`` or a scalar;
        ``context [(B*F), 77, context_dim]`` text tokens; ``camera [(B*F), camera_dim]``; ImageDream only:
        ``ip [(B*F), T, ip_in_dim]`` CLIP image tokens (or ``ip_tokens [(B*F), ip_dim, context_dim]`` =
        ``embed_image(ip)`` precomputed) and ``ip_img [B, C, H, W]`` reference latents, written into frame
        ``F-1`` of each sample (on a copy of ``x``). Returns ``[(B*F), out_channels, H, W]``.
        """
        n = x.shape[0]
        if n % num_frames:
            raise ValueError(f"batch {n} is not a multiple of num_frames={num_frames}")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(n)
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(x.dtype))
        context = context.to(x.dtype)
        if self.ip_dim > 0:
            if ip_img is None or (ip is None and ip_tokens is None):
                raise ValueError("ImageDream UNet needs ip (or ip_tokens) and ip_img")
            # Clone: the caller's latents must not be overwritten by the reference latent.
            x = x.clone()
            x[num_frames - 1 :: num_frames] = ip_img.to(x.dtype)
            if ip_tokens is None:
                ip_tokens = self.image_embed(ip.to(x.dtype))
            context = torch.cat([context, ip_tokens.to(x.dtype)], dim=1)

        skips = []
        h = x
        for stage in self.input_blocks:
            h = stage(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h)


def load_mv_unet(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> MultiViewUNetModel:
    """The UNet of a ``unet/`` folder in ``dtype`` on ``device``, frozen; strict (every tensor used, none missing).

    Unknown config keys, unsupported option values and weights that do not match the config are a
    one-line :class:`~guidance.nets.weights.ModelFolderError` (a UserError).
    """
    cfg = read_config(folder)
    check_config(cfg, folder, {}, _FIELDS)
    fields = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        MultiViewUNetConfig(**fields).validate()
    except ValueError as exc:
        raise ModelFolderError(f"{folder}/config.json: {exc}") from None
    try:
        return load_module(lambda: MultiViewUNetModel(**fields), folder, dtype, device)
    except ModelFolderError as exc:
        detail = _key_report(folder, fields)
        if detail is None:
            raise
        raise ModelFolderError(f"{folder} does not match MultiViewUNetModel ({detail})") from exc


def _key_report(folder: Path, fields: dict[str, Any]) -> str | None:
    """``missing_keys: N e.g. [...]; unexpected_keys: ...; mismatched_keys: ...`` for a failed load, else None.

    Only on the error path (it reads the weights again): the counts tell a truncated or foreign file
    from one off by a few tensors.
    """
    try:
        state = read_weights(folder, torch.float32, torch.device("cpu"))
    except ModelFolderError:
        return None
    with torch.device("meta"):
        expected = MultiViewUNetModel(**fields).state_dict()
    groups = {
        "missing_keys": [k for k in expected if k not in state],
        "unexpected_keys": [k for k in state if k not in expected],
        "mismatched_keys": [k for k in expected if k in state and state[k].shape != expected[k].shape],
    }
    parts = [f"{name}: {len(keys)} e.g. {keys[:3]}" for name, keys in groups.items() if keys]
    return "; ".join(parts) or None
