"""Checks before any heavy work: ``outdir`` usable, room on its disk, sizes that fit in memory.

Run by :func:`pipeline.setup.setup_stage` before the model loads, so a run that cannot finish
fails in seconds with one line naming the key, not after the SIR loop with a traceback. The
estimates are deliberately rough upper bounds of the dominant buffers: they catch the obviously
infeasible (``gaussians.num_pts=1e9``, a 100000-pixel texture), not a run that is merely tight.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from core.errors import UserError
from mesh_renderer.bake import BAKE_AZIMUTHS
from mesh_renderer.visibility import views_per_chunk

__all__ = [
    "check_disk",
    "check_memory",
    "check_outdir",
    "device_memory_bytes",
    "memory_estimates",
    "output_bytes",
    "preflight",
]

GB = 1e9
PREVIEW_BYTES = 8 * 256 * 256 * 3  # 8-view grid at 256 px, raw RGB (PNG is smaller)
VIDEO_BYTES = 120 * 512 * 512 * 3 // 10  # turntable: 120 frames at 512 px, generously compressed
REPORT_BYTES = 1 << 20
PX_BYTES = 256  # per rendered pixel and view: colour, alpha, depth, compositing state and grads


def _floats_per_gaussian(sh_degree: int) -> int:
    """means 3 + scales 3 + quats 4 + opacity 1 + SH colours 3 (d+1)^2."""
    return 11 + 3 * (sh_degree + 1) ** 2


def memory_estimates(cfg: DictConfig) -> dict[str, float]:
    """``{config key: bytes}``: a rough peak for the buffers each size key drives."""
    g, s, ex, r = cfg.gaussians, cfg.sir, cfg.export, cfg.refine
    per_pt = 16 * _floats_per_gaussian(g.sh_degree) + 128 * s.views  # param+grad+Adam; per-view projections
    n_bake = len(BAKE_AZIMUTHS)
    # hidden-face drop: one chunk of its views is rasterised at a time (no gradients)
    n_vis = min(
        int(ex.get("visible_views", 0)), views_per_chunk(ex.get("visible_size", 0) ** 2, ex.max_faces)
    )
    return {
        "gaussians.num_pts": float(g.num_pts) * per_pt,
        "sir.render_size": float(s.views) * s.render_size**2 * PX_BYTES,
        "refine.render_size": float(r.views) * r.render_size**2 * PX_BYTES,
        "export.bake_size": float(n_bake) * ex.bake_size**2 * PX_BYTES / 8,  # no gradients
        "export.visible_size": float(n_vis) * ex.get("visible_size", 0) ** 2 * PX_BYTES,
        "export.grid_resolution": float(ex.grid_resolution) ** 3 * 4 * 3,  # grid, marching-cubes work
        # texture + grad + 2 Adam states (3 channels) and per-texel bake data (points, normals, ids)
        "export.texture_size": float(ex.texture_size) ** 2 * 4 * (3 * 4 + 8),
        "ref_size": float(cfg.ref_size) ** 2 * PX_BYTES,
    }


def device_memory_bytes(device: torch.device) -> float:
    """Total memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(cfg: DictConfig, budget_bytes: float, where: str = "this machine") -> None:
    """UserError naming the first key whose estimate alone exceeds ``budget_bytes``."""
    for key, need in memory_estimates(cfg).items():
        if need > budget_bytes:
            value = cfg_value(cfg, key)
            raise UserError(
                f"config key '{key}'={value} needs about {need / GB:.0f} GB of memory, more than the "
                f"{budget_bytes / GB:.0f} GB of {where}: lower it"
            )


def cfg_value(cfg: DictConfig, key: str):
    """The value at a dotted ``key``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def output_bytes(cfg: DictConfig) -> float:
    """An upper bound of the bytes both stages write into ``outdir`` (ply, meshes, textures, previews)."""
    g, ex = cfg.gaussians, cfg.export
    # Densification may grow the Gaussians: allow 4x the initial count, 4-byte floats plus normals.
    ply = 4.0 * g.num_pts * (_floats_per_gaussian(g.sh_degree) + 3) * 4
    faces = min(ex.max_faces, ex.uv_max_faces)
    mesh = faces * 64.0  # vertices with uv and normal, indices, and seam duplicates
    textures = (3 if cfg.mesh_format == "obj" else 2) * ex.texture_size**2 * 3.0  # PNG <= raw RGB
    previews = 2 * (PREVIEW_BYTES + (VIDEO_BYTES if cfg.video else 0))
    return ply + 2 * mesh + textures + previews + 2 * REPORT_BYTES


def check_outdir(outdir: str | os.PathLike) -> Path:
    """Create ``outdir`` if needed and prove it writable by writing a file; UserError otherwise."""
    path = Path(outdir)
    if path.exists() and not path.is_dir():
        raise UserError(f"outdir {path} is a file, not a folder: pass outdir=path/to/a/folder")
    above = path
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UserError(f"outdir {path} cannot be created: {above} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # The name matches core.outputs.remove_stale's pattern, so a kill right here leaves no litter.
        fd, probe = tempfile.mkstemp(prefix=f".write-test.pid{os.getpid()}.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"outdir {path} is not writable ({e.strerror or e}): pick another outdir=..."
        ) from None
    return path


def check_disk(cfg: DictConfig) -> None:
    """UserError when ``outdir``'s disk has less free space than :func:`output_bytes`."""
    need = output_bytes(cfg)
    free = shutil.disk_usage(cfg.outdir).free
    if free < need:
        raise UserError(
            f"outdir {cfg.outdir} has {free / 1e6:.0f} MB free, the outputs need up to {need / 1e6:.0f} MB: "
            "free some space or pick another outdir=..."
        )


def preflight(cfg: DictConfig, device: torch.device) -> None:
    """All of the above, in order of cost: outdir, disk, memory of ``device``."""
    check_outdir(cfg.outdir)
    check_disk(cfg)
    check_memory(cfg, device_memory_bytes(device), f"{device.type} memory")
