"""Multi-view denoisers behind one interface, registered by name; the SIR refine step; model loading.

``import guidance`` stays light: a model's module (:mod:`guidance.models`) and its heavy libraries
(diffusers, transformers) are imported only when that model is loaded; the registry lists
:data:`guidance.models.BUILTIN` without importing them.
"""

from __future__ import annotations

from guidance.registry import DenoiserSpec, load_denoiser, names, register

__all__ = ["load_denoiser", "register", "DenoiserSpec", "names"]
