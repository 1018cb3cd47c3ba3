"""Textured triangle meshes: container, I/O, clean/decimate, UV unwrap, differentiable rendering, baking.

Heavy backends (nvdiffrast, xatlas, fast-simplification, trimesh) are imported on first use, so
``import mesh_renderer`` works on any CPU box.
"""
from .mesh import Mesh, face_normals, vertex_normals
from .io import load_mesh, save_mesh, split_to_uv_layout

__all__ = ["Mesh", "face_normals", "vertex_normals", "load_mesh", "save_mesh", "split_to_uv_layout"]
from .raster import Raster, interpolate, nvdiffrast_available, rasterize
from .shade import composite, render, sample_texture, shade

__all__ += ["Raster", "interpolate", "nvdiffrast_available", "rasterize", "composite", "render",
            "sample_texture", "shade"]
