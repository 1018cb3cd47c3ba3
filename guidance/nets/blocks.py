"""Building blocks shared by the SD UNet and the SD VAE, with the parameter names of their checkpoints.

Residual blocks (``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut``; with the fused GroupNorm on,
their bias, time-embedding and residual adds folded into the fused kernels), strided-conv downsampling,
nearest-neighbour upsampling + conv, and multi-head attention through
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.fused_norm import group_norm_act, resnet_residual, uses_fused

__all__ = ["ResnetBlock", "Downsample", "Upsample", "multihead_attention"]


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of ``q`` ``[B,N,H*d]`` over ``k, v`` ``[B,M,H*d]`` with ``heads`` heads -> ``[B,N,H*d]``.

    Scale ``d ** -0.5`` (SDPA's default).
    """
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, c)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the projected time embedding in between; 1x1 shortcut when widths differ."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        eps: float,
        temb_channels: int | None = None,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B,Cin,H,W]``, ``temb`` ``[B,T]`` (or None) -> ``[B,Cout,H,W]``."""
        if self._folds(x):
            return self._folded(x, temb)
        h = self.conv1(group_norm_act(x, self.norm1, silu=True))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(group_norm_act(h, self.norm2, silu=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale == 1.0 else out / self.output_scale

    def _folds(self, x: torch.Tensor) -> bool:
        """Whether :meth:`_folded` runs: ``norm2``'s fused kernel is on for tensors like ``x`` and
        no gradient is wanted (the kernels have no backward)."""
        return uses_fused(x, self.norm2) and not (torch.is_grad_enabled() and self.conv1.weight.requires_grad)

    def _folded(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` with the adds folded into the kernels: the convolutions run without their
        bias (cuDNN adds it in a separate pass); ``conv1.bias`` and the time embedding go into
        ``norm2`` as its per-(batch, channel) shift, and both other biases, the residual add and the
        output scale into one residual kernel. Equal to :meth:`forward` up to rounding."""
        h = _conv_no_bias(self.conv1, group_norm_act(x, self.norm1, silu=True))
        shift = self.conv1.bias
        if self.time_emb_proj is not None and temb is not None:
            proj = self.time_emb_proj(F.silu(temb))
            shift = proj if shift is None else shift + proj
        h = _conv_no_bias(self.conv2, group_norm_act(h, self.norm2, silu=True, shift=shift))
        if self.conv_shortcut is None:
            skip, skip_bias = x, None
        else:
            skip, skip_bias = _conv_no_bias(self.conv_shortcut, x), self.conv_shortcut.bias
        return resnet_residual(skip, h, self.conv2.bias, skip_bias, self.output_scale, fused=True)


def _conv_no_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` without its bias (zero padding, as every conv of these nets)."""
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class Downsample(nn.Module):
    """3x3 conv with stride 2 (key ``conv``); ``padding=0`` pads right/bottom by one first (the VAE's way)."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,C,H,W]`` -> ``[B,C,H/2,W/2]``."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x (or to ``size``) then a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``[B,C,H,W]`` -> ``[B,C,2H,2W]`` (or ``[B,C,*size]``, for odd skip sizes in the UNet)."""
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
