"""Stable Zero123's camera projection network (the ``clip_camera_projection`` folder of its checkpoint).

A plain torch module (no diffusers): loaded strictly by :func:`load_camera_projection` from the folder's
``config.json`` (``embedding_dim``, ``additional_embeddings``) and weights (``proj.weight``/``proj.bias``).
:meth:`CLIPCameraProjection.save_pretrained` writes that folder (tests and random checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guidance.nets.weights import check_config, load_module, read_config

__all__ = ["CLIPCameraProjection", "load_camera_projection"]

_USED = ("embedding_dim", "additional_embeddings")


class CLIPCameraProjection(nn.Module):
    """Linear(embedding_dim + additional_embeddings -> embedding_dim) named ``proj`` (keys proj.weight/bias)."""

    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.additional_embeddings = additional_embeddings
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D+4]`` (CLIP embedding first, camera last) -> ``[..., D]``."""
        return self.proj(x)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (the checkpoint's layout)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("only safetensors are written")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "_class_name": "CLIPCameraProjection",
            "additional_embeddings": self.additional_embeddings,
            "embedding_dim": self.embedding_dim,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def load_camera_projection(
    folder: Path, dtype: torch.dtype, device: str | torch.device
) -> CLIPCameraProjection:
    """The projection of a ``clip_camera_projection/`` folder in ``dtype`` on ``device``, frozen."""
    cfg = read_config(folder)
    check_config(cfg, folder, {}, _USED)
    kwargs = {k: int(cfg[k]) for k in _USED if k in cfg}
    return load_module(lambda: CLIPCameraProjection(**kwargs), folder, dtype, device)
