"""App configs that build a tiny instance of each known denoiser through its real loader (tests).

Every registered denoiser needs an entry here: the contract test (tests/test_denoiser_contract.py)
runs over :func:`guidance.registry.names` and fails for a name without one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from testing.toy_denoiser import TOY_NAME

__all__ = ["tiny_config", "SHARED_MESHES"]

#: Meshes shared by the tests (``../shared/data/meshes`` next to the repository).
SHARED_MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"


def _zero123() -> dict[str, Any]:
    from testing.random_zero123 import cached_tiny_zero123

    return {"guidance": "zero123", "model": {"path": str(cached_tiny_zero123()), "dtype": "fp32"}}


def _imagedream() -> dict[str, Any]:
    from testing.random_imagedream import cached_tiny_imagedream

    return {
        "guidance": "imagedream",
        "prompt": "a cat",
        "model": {"path": str(cached_tiny_imagedream()), "dtype": "fp32"},
    }


def _mvdream() -> dict[str, Any]:
    from testing.random_mvdream import cached_tiny_mvdream

    return {
        "guidance": "mvdream",
        "prompt": "a cat",
        "model": {"path": str(cached_tiny_mvdream()), "dtype": "fp32"},
    }


def _oracle() -> dict[str, Any]:
    return {
        "guidance": "oracle",
        "oracle": {"mesh": str(SHARED_MESHES / "spot.obj"), "image_size": 16},
        "render": {"mesh_backend": "torch"},
    }


def _toy() -> dict[str, Any]:
    return {"guidance": TOY_NAME, "toy": {"image_size": 16}}


_TINY: dict[str, Callable[[], dict[str, Any]]] = {
    "zero123": _zero123,
    "imagedream": _imagedream,
    "mvdream": _mvdream,
    "oracle": _oracle,
    TOY_NAME: _toy,
}


def tiny_config(name: str) -> dict[str, Any]:
    """Config (plain dicts) of a tiny ``name`` denoiser on the CPU in fp32; KeyError for an unknown name."""
    if name not in _TINY:
        raise KeyError(f"no tiny config for denoiser {name!r}: add one to testing/tiny_denoisers.py")
    return _TINY[name]()
