"""CLIP's text tower (``CLIPTextModel`` layout), built from ``text_encoder/config.json``.

Token + learned position embeddings, the pre-LayerNorm encoder layers of
:mod:`guidance.nets.clip_layers` under a causal mask, ``final_layer_norm``. The output is the last
hidden state after the final LayerNorm (what ImageDream and MVDream use as their text context; their
SD 2.1 text encoder has 23 of OpenCLIP's 24 layers, so this is OpenCLIP's "penultimate" feature).
Parameter names are the checkpoint's (``text_model.*``); files written by transformers 5 without the
prefix load too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from guidance.nets.clip_layers import Encoder, param_table, tower_attributes, tower_config, with_prefix
from guidance.nets.weights import load_module, read_config

__all__ = ["ClipTextModel", "load_clip_text"]


class Embeddings(nn.Module):
    """Token ids ``[B,T]`` -> token + position embeddings ``[B,T,D]`` (positions 0..T-1)."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.token_embedding = param_table(a.vocab_size, a.hidden_size)
        self.position_embedding = param_table(a.max_position_embeddings, a.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        return self.token_embedding.weight[ids] + self.position_embedding.weight[: ids.shape[1]][None]


class TextTransformer(nn.Module):
    """Embeddings, causal encoder layers, ``final_layer_norm``."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(a)
        self.encoder = Encoder(a)
        self.final_layer_norm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B,T]`` -> last hidden state ``[B,T,D]`` after ``final_layer_norm``."""
        return self.final_layer_norm(self.encoder(self.embeddings(ids), causal=True))


class ClipTextModel(nn.Module):
    """``model(input_ids)`` -> last hidden state ``[B,T,D]``; ``config`` as attributes."""

    def __init__(self, cfg: dict[str, Any], folder: Path = Path("text_encoder")) -> None:
        super().__init__()
        keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        keys += ["vocab_size", "max_position_embeddings"]
        defaults = dict(layer_norm_eps=1e-5, hidden_act="quick_gelu", max_position_embeddings=77)
        a = self.config = tower_attributes(cfg, folder, "text", defaults, keys)
        self.text_model = TextTransformer(a)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B,T]`` (T <= ``max_position_embeddings``) -> ``[B,T,D]`` in the model dtype."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"{input_ids.shape[1]} tokens exceed max_position_embeddings={self.config.max_position_embeddings}"
            )
        return self.text_model(input_ids)


def load_clip_text(folder: Path, dtype: torch.dtype, device: str | torch.device) -> ClipTextModel:
    """The CLIP text tower of a ``text_encoder/`` folder in ``dtype`` on ``device``, frozen.

    A full ``CLIPModel`` folder loads too (its text tower; the vision tower is not read).
    """
    cfg = read_config(folder)
    _, nested = tower_config(cfg, folder, "text")
    adapt = with_prefix("text_model", ("text_model.",) if nested else None)
    return load_module(lambda: ClipTextModel(cfg, folder), folder, dtype, device, adapt=adapt)
