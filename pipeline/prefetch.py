"""Cold start: import what later phases need on a background thread while the GPU works.

A fresh process spends seconds importing and loading extensions (PyMCubes with SciPy, the mesh
writers, the nvdiffrast plugin) at the first call of each export step. During stage 1's SIR loop
the main thread mostly waits for the GPU, so those imports run there for free. A failed import is
ignored here: the phase that needs the module imports it again and reports the error itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence

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


def prefetch(modules: Sequence[str], then: Sequence[Callable[[], object]] = ()) -> threading.Thread:
    """Import ``modules``, then call each of ``then`` (e.g. loading a CUDA plugin), on a daemon thread."""

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the phase that needs it reports the failure
                log.debug("prefetch of %s failed: %s", name, exc)
        for fn in then:
            try:
                fn()
            except Exception as exc:
                log.debug("prefetch step %s failed: %s", getattr(fn, "__name__", fn), exc)

    thread = threading.Thread(target=work, name="prefetch-imports", daemon=True)
    thread.start()
    return thread
