"""Multi-view denoisers behind one interface, registered by name; the SIR refine step; model loading.

``import guidance`` stays light: the models (:mod:`guidance.models`) are imported on the first use of
the registry, and their heavy libraries (diffusers, transformers) only when one is loaded.
"""

from __future__ import annotations

from guidance.registry import DenoiserSpec, load_denoiser, names, register

__all__ = ["load_denoiser", "register", "DenoiserSpec", "names"]
