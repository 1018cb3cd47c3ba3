"""Textured triangle meshes: container, I/O, clean/decimate, UV unwrap, differentiable rendering, baking.

Heavy backends (nvdiffrast, xatlas, fast-simplification, scipy, trimesh, pygltflib) are imported on
first use, so ``import mesh_renderer`` works on any CPU box and builds nothing.
"""

from .bake import bake_cameras, bake_texture
from .io import load_mesh, save_mesh, split_to_uv_layout
from .mesh import Mesh, face_normals, vertex_normals
from .ops import clean_mesh, decimate
from .raster import Raster, interpolate, nvdiffrast_available, preload_kernels, rasterize
from .shade import composite, render, sample_texture, shade
from .uv import unwrap_uv

__all__ = [
    "Mesh",
    "face_normals",
    "vertex_normals",
    "load_mesh",
    "save_mesh",
    "split_to_uv_layout",
    "Raster",
    "interpolate",
    "nvdiffrast_available",
    "preload_kernels",
    "rasterize",
    "composite",
    "render",
    "sample_texture",
    "shade",
    "clean_mesh",
    "decimate",
    "unwrap_uv",
    "bake_cameras",
    "bake_texture",
]
