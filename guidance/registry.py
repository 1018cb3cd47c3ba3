"""The registry of denoisers: each model's name, config section and loader.

The built-in models are declared in :data:`guidance.models.BUILTIN`, each with a loader that imports
its module (:mod:`guidance.models.<name>`) only when a model is built: reading the registry (config
validation, ``names()``) imports neither torch nor any model, so a process that only checks configs
(the batch driver) starts in a fraction of a second. A model module must stay light at import time
(no diffusers/transformers at module level): its loader imports what it needs. Code outside the
package (tests, plugins) adds models with :func:`register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from guidance.options import cfg_get

if TYPE_CHECKING:
    import torch

    from guidance.denoiser import Denoiser

__all__ = ["DenoiserSpec", "LazyLoad", "register", "get", "names", "load_denoiser", "CONDITIONINGS"]

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


@dataclass(frozen=True)
class LazyLoad:
    """A loader ``load(cfg, device)`` that imports ``module`` and calls its ``attr`` on first use
    (picklable: worker processes receive it by name)."""

    module: str
    attr: str = "load"

    def __call__(self, cfg: Any, device: torch.device) -> Denoiser:
        return getattr(importlib.import_module(self.module), self.attr)(cfg, device)


def _discover() -> None:
    """Register the built-in specs of :mod:`guidance.models` once (their modules are not imported)."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: register() calls us back
    from guidance.models import BUILTIN

    for spec in BUILTIN:
        register(spec)


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
    import torch

    if device is None:
        name = cfg_get(cfg, "device", "auto")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    return torch.device(device)


def load_denoiser(cfg: Any, device: torch.device | str | None = None) -> Denoiser:
    """Build the denoiser named by ``cfg.guidance`` (default ``zero123``) on ``device`` (default ``cfg.device``)."""
    return get(cfg_get(cfg, "guidance", "zero123")).load(cfg, _device(cfg, device))
