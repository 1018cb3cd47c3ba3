"""Preview image grids, turntable videos and their cameras (no renderer: pipeline/previews.py renders).

The authors write 8 views at elevation 0 and a 120-frame turntable (3 degrees a frame, 30 fps) at
512 px and radius 2 after each stage (docs/method.md#outputs); the defaults here are the same, except that
the grid's azimuths start at 0 (the input view) and step 45 degrees.

All images are float ``[V,3,H,W]`` in [0,1] (row 0 at the top) or uint8 ``[V,H,W,3]``. Files are
written atomically (a temporary file in the same folder, then ``os.replace``) so an interrupted run
never leaves a truncated PNG/MP4 that a resuming batch would take for a finished one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from core.cameras import Cameras, orbit_cameras
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS
from core.fileio import atomic_path  # re-exported: callers import it from here

__all__ = [
    "atomic_path",
    "to_uint8",
    "make_grid",
    "preview_grid",
    "preview_cameras",
    "turntable_cameras",
    "save_video",
]


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
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
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
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
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
