"""Gaussian splatting: parameters, batched rendering (gsplat / PyTorch), densification, PLY I/O
and density-grid mesh extraction. Importing this package never imports gsplat."""

from __future__ import annotations

from .model import (
    DEFAULT_LRS,
    SH_C0,
    GaussianModel,
    rgb_to_sh,
    sh_to_rgb,
    update_learning_rate,
    xyz_lr,
)
from .render import gsplat_available, preload_kernels, render

__all__ = [
    "DEFAULT_LRS",
    "SH_C0",
    "GaussianModel",
    "rgb_to_sh",
    "sh_to_rgb",
    "update_learning_rate",
    "xyz_lr",
    "render",
    "gsplat_available",
    "preload_kernels",
    "Densifier",
    "final_prune",
    "save_ply",
    "load_ply",
    "extract_density_mesh",
    "extract_mesh",
]

_LAZY = {
    "Densifier": ".densify",
    "final_prune": ".densify",
    "save_ply": ".ply",
    "load_ply": ".ply",
    "extract_density_mesh": ".extract",
    "extract_mesh": ".extract",
}


def __getattr__(name: str):
    # Lazy: densify/ply/extract pull numpy/mcubes; keep `import gs_renderer` light.
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name], __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
