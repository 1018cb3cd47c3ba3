"""Stable Zero123's camera projection network (the ``clip_camera_projection`` folder of its checkpoint).

Kept out of :mod:`guidance.models.zero123` because a diffusers model class needs diffusers at import
time, and the model modules must stay importable without it.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

__all__ = ["CLIPCameraProjection"]


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """Linear(embedding_dim + additional_embeddings -> embedding_dim) named ``proj`` (keys proj.weight/bias)."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.additional_embeddings = additional_embeddings
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D+4]`` (CLIP embedding first, camera last) -> ``[..., D]``."""
        return self.proj(x)
