"""Cold start: import what later phases need on a background thread while the GPU works.

A fresh process spends seconds importing (PyMCubes with SciPy, the mesh writers) at the first call
of each export step. During stage 1's SIR loop the main thread mostly waits for the GPU, so those
imports run there for free. Only imports that make no CUDA call belong here: the loop captures CUDA
graphs meanwhile. A failed import is ignored here: the phase that needs the module imports it
again and reports the error itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

__all__ = ["EXPORT_MODULES", "prefetch"]

#: What the coarse-mesh export and stage 2 import lazily (gs_renderer.extract, mesh_renderer.ops/io).
EXPORT_MODULES = (
    "mcubes",
    "scipy.sparse.csgraph",
    "fast_simplification",
    "PIL.PngImagePlugin",
    "pygltflib",
    "trimesh",
)


def prefetch(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` on a daemon thread (started here; returned for joining)."""

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the phase that needs it reports the failure
                log.debug("prefetch of %s failed: %s", name, exc)

    thread = threading.Thread(target=work, name="prefetch-imports", daemon=True)
    thread.start()
    return thread
