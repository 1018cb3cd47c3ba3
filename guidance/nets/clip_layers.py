"""What CLIP's text and vision towers share: the pre-LayerNorm encoder layer and the checkpoint key layouts.

Parameter names are those of the checkpoints (``self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``,
``mlp.fc1/fc2``). The text tower runs the same layer with a causal mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guidance.nets.weights import ModelFolderError, check_config, config_namespace

__all__ = [
    "ACTS",
    "SelfAttention",
    "EncoderLayer",
    "Encoder",
    "param_table",
    "with_prefix",
    "tower_attributes",
    "tower_config",
]

#: Keys of transformers configs (any version) that do not change a CLIP tower's computation:
#: metadata, init-only values, dropout (eval only), output switches, token ids (pooling, unused here),
#: a text projection width (no projection is built) and the generation/labelling defaults that
#: transformers 4.x wrote into nested configs. ``pruned_heads`` is absent on purpose (non-empty
#: changes the network); a key not listed is refused unless its value is null, false or empty.
_CLIP_IGNORED = (
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_bfloat16",
    "attention_dropout",
    "dropout",
    "initializer_factor",
    "initializer_range",
    "projection_dim",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "chunk_size_feed_forward",
    "tie_word_embeddings",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "gradient_checkpointing",
    "use_cache",
)
#: The keys each tower reads.
_CLIP_USED = {
    "vision": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
    ),
    "text": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
    ),
}

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


def with_prefix(
    prefix: str, only: tuple[str, ...] | None = None
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A state-dict adapter for the two layouts of a transformers CLIP tower file.

    transformers 4 writes ``<prefix>.embeddings...`` (the Hub checkpoints), transformers 5 writes the
    tower's keys without the prefix; older files also hold the ``embeddings.position_ids`` buffer
    (an ``arange``, recomputed here). The adapter returns the prefixed layout without that buffer.
    ``only``: key prefixes to keep (a full ``CLIPModel`` file also holds the other tower).
    """
    head = prefix + "."

    def adapt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not any(k.startswith(head) for k in state):
            state = {head + k: v for k, v in state.items()}
        if only is not None:
            state = {k: v for k, v in state.items() if k.startswith(only)}
        return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}

    return adapt


def tower_config(cfg: Mapping[str, Any], folder: Path, tower: str) -> tuple[dict[str, Any], bool]:
    """The ``tower`` ("vision"/"text") part of a transformers CLIP ``config.json``, checked.

    A tower config (``model_type`` ``clip_<tower>_model``) is used as it is; a full ``CLIPModel``
    config (``model_type`` "clip") gives its nested ``<tower>_config``, as transformers'
    ``CLIP<Tower>Config.from_pretrained`` does. Returns (config, nested). Other model types and keys
    that would change the network are a one-line UserError naming the key.
    """
    want = f"clip_{tower}_model"
    model_type = cfg.get("model_type", want)
    nested = model_type == "clip"
    if nested:
        sub = cfg.get(f"{tower}_config")
        # transformers 4.2x also wrote ``<tower>_config_dict``, which wins over ``<tower>_config``.
        extra = cfg.get(f"{tower}_config_dict")
        if not isinstance(sub, Mapping) and not isinstance(extra, Mapping):
            raise ModelFolderError(f"{folder}/config.json: model_type 'clip' without a {tower}_config")
        sub = {**(sub if isinstance(sub, Mapping) else {}), **(extra if isinstance(extra, Mapping) else {})}
        cfg = {**sub, "model_type": sub.get("model_type", want)}
        model_type = cfg["model_type"]
    if model_type != want:
        raise ModelFolderError(f"{folder}/config.json: model_type={model_type!r} is not supported ({want})")
    check_config(cfg, folder, {}, _CLIP_USED[tower], _CLIP_IGNORED)
    return dict(cfg), nested


def tower_attributes(
    cfg: Mapping[str, Any], folder: Path, tower: str, defaults: Mapping[str, Any], int_keys: list[str]
) -> Any:
    """The checked :func:`tower_config` as attributes, ``defaults`` filled in (transformers' defaults
    for keys old files omit); ``hidden_act`` must be one of :data:`ACTS` and every ``int_keys`` entry
    an integer (one-line UserError naming the key otherwise)."""
    tower_cfg, _ = tower_config(cfg, folder, tower)
    a = config_namespace({**defaults, **tower_cfg})
    if a.hidden_act not in ACTS:
        raise ModelFolderError(
            f"{folder}/config.json: hidden_act={a.hidden_act!r} is not supported ({', '.join(ACTS)})"
        )
    for key in int_keys:
        if not isinstance(getattr(a, key, None), int):
            raise ModelFolderError(f"{folder}/config.json: {key} must be an integer")
    return a
