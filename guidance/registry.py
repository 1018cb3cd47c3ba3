"""The registry of denoisers: each model registers its name, config section and loader in its own module.

Built-in models are the modules of :mod:`guidance.models`; they are imported (and so registered) on
the first use of the registry, never by ``import guidance``. A model module must stay light at import
time (no diffusers/transformers at module level): its loader imports what it needs. Code outside
the package (tests, plugins) adds models with :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import UserError
from guidance.denoiser import Denoiser
from guidance.options import cfg_get

__all__ = ["DenoiserSpec", "register", "get", "names", "load_denoiser", "CONDITIONINGS"]

#: What a model is conditioned on (``DenoiserSpec.conditioning``).
CONDITIONINGS = ("image", "text")


@dataclass(frozen=True)
class DenoiserSpec:
    """How to build one denoiser from the app config.

    ``name``: the value of ``cfg.guidance``. ``section``: the config section holding its options
    (``model``, ``oracle``, ...). ``load(cfg, device)``: builds it. ``needs_input``: False when a
    run needs no input image: the model renders its own reference view (it then has
    ``reference_image(elevation, size, azimuth)`` returning rgb ``[3,S,S]`` on white and mask
    ``[1,S,S]``) or it is text-conditioned. ``conditioning``: ``image`` (conditioned on a reference
    view: the input image or the model's own) or ``text`` (a prompt only: a run has no reference
    view and no reference losses, and needs ``prompt``; the model has ``set_prompt(prompt)``).
    """

    name: str
    section: str
    load: Callable[[Any, torch.device], Denoiser]
    needs_input: bool = True
    description: str = ""
    conditioning: str = "image"

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r} must be one of {CONDITIONINGS}")
        if self.conditioning == "text" and self.needs_input:
            raise ValueError("a text-conditioned model takes no input image: set needs_input=False")


_SPECS: dict[str, DenoiserSpec] = {}
_discovered = False


def _discover() -> None:
    """Import every module of :mod:`guidance.models` once (each registers its model)."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: the modules call register(), which calls us back
    import guidance.models as models

    for info in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"{models.__name__}.{info.name}")


def register(spec: DenoiserSpec) -> DenoiserSpec:
    """Add ``spec`` under ``spec.name``; an existing entry of that name is replaced. Returns ``spec``."""
    _discover()  # built-ins first, so a later registration of the same name wins
    _SPECS[spec.name] = spec
    return spec


def get(name: str) -> DenoiserSpec:
    """The spec registered as ``name``; :class:`UserError` naming the known names when there is none."""
    _discover()
    spec = _SPECS.get(name)
    if spec is None:
        raise UserError(f"guidance={name!r} is not one of {', '.join(names())}")
    return spec


def names() -> tuple[str, ...]:
    """Registered denoiser names, sorted."""
    _discover()
    return tuple(sorted(_SPECS))


def _device(cfg: Any, device: torch.device | str | None) -> torch.device:
    """``device``, else ``cfg.device`` (``auto`` = CUDA when available, else CPU)."""
    if device is None:
        name = cfg_get(cfg, "device", "auto")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    return torch.device(device)


def load_denoiser(cfg: Any, device: torch.device | str | None = None) -> Denoiser:
    """Build the denoiser named by ``cfg.guidance`` (default ``zero123``) on ``device`` (default ``cfg.device``)."""
    return get(cfg_get(cfg, "guidance", "zero123")).load(cfg, _device(cfg, device))
