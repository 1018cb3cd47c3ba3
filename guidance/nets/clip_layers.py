"""What CLIP's text and vision towers share: the pre-LayerNorm encoder layer and the checkpoint key layouts.

Parameter names are those of the checkpoints (``self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``,
``mlp.fc1/fc2``). The text tower runs the same layer with a causal mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTS", "SelfAttention", "EncoderLayer", "Encoder", "param_table", "with_prefix"]

ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
}


def param_table(rows: int, dim: int) -> nn.Module:
    """A module holding one ``weight`` ``[rows, dim]`` (the keys of an ``nn.Embedding``).

    Not ``nn.Embedding`` itself: its ``normal_`` init on the meta device imports torch._dynamo (~1 s
    of a cold start).
    """
    table = nn.Module()
    table.weight = nn.Parameter(torch.empty(rows, dim))
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections, optionally causal."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``[B,N,D]`` -> ``[B,N,D]``; ``causal``: token i attends to tokens 0..i only."""
        b, n, d = x.shape
        q, k, v = (
            p(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm attention and MLP blocks, each residual; ``a``: the tower's config attributes."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        d = a.hidden_size
        self.self_attn = SelfAttention(d, a.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=a.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, a.intermediate_size)
        self.mlp.fc2 = nn.Linear(a.intermediate_size, d)
        self.layer_norm2 = nn.LayerNorm(d, eps=a.layer_norm_eps)
        self.act = ACTS[a.hidden_act]

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``[B,N,D]`` -> ``[B,N,D]``."""
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class Encoder(nn.Module):
    """``layers``: the stack of :class:`EncoderLayer` (key ``encoder.layers.N``)."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(a) for _ in range(a.num_hidden_layers))

    def forward(self, x: torch.Tensor, causal: bool = False, depth: int | None = None) -> torch.Tensor:
        """``[B,N,D]`` through the first ``depth`` layers (all when None) -> ``[B,N,D]``."""
        for layer in self.layers[:depth]:
            x = layer(x, causal)
        return x


def with_prefix(prefix: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A state-dict adapter for the two layouts of a transformers CLIP tower file.

    transformers 4 writes ``<prefix>.embeddings...`` (the Hub checkpoints), transformers 5 writes the
    tower's keys without the prefix; older files also hold the ``embeddings.position_ids`` buffer
    (an ``arange``, recomputed here). The adapter returns the prefixed layout without that buffer.
    """
    head = prefix + "."

    def adapt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not any(k.startswith(head) for k in state):
            state = {head + k: v for k, v in state.items()}
        return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}

    return adapt
