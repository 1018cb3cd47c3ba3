"""The one device resolver and the one seeding helper every entry point uses."""

from __future__ import annotations

import random

import numpy as np
import torch

from core.errors import UserError

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda``/``cuda:N`` without CUDA is a UserError."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device={name} was asked for but no CUDA GPU is available (use device=cpu or device=auto)"
        )
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; returns a numpy generator seeded alike (the camera sampler's)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the legacy global state
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
