"""Write the procedural stress set for ``bench/quality.py`` (shapes this project never tuned on).

Each object stresses one weak spot of stage 1 (issue 15):

* ``lizard``: a long, thin, low animal lying flat (body, tail, four thin legs): the ghost-shell case.
* ``mug``: a cylinder with a thin handle (a hole and a thin tube).
* ``torus`` and ``frame``: holes (a ring; a square picture frame).
* ``plate``: a thin flat plate.
* ``white_vase``: a textured object that is almost all white (invisible on the white background)
  with one coloured band.
* ``table_tiny``: a table (thin legs) with a tiny ball beside it: small parts in the frame.

    python bench/stress_meshes.py /tmp/stress          # writes /tmp/stress/*.obj (+ .mtl/.png)
    python bench/quality.py /tmp/stress ../shared/data/meshes --config configs/oracle_cpu.yaml

The meshes are written, never committed (no binaries in git).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import trimesh

__all__ = ["STRESS_OBJECTS", "make_mesh", "write_stress_set"]


def _box(extents, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=extents)
    m.apply_translation(center)
    return m


def _capsule(a, b, radius: float) -> trimesh.Trimesh:
    """A cylinder with round caps from point ``a`` to point ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b - a))
    m = trimesh.creation.capsule(height=length, radius=radius, count=[12, 12])
    # trimesh's capsule runs along +Z from z=0 .. height? centre it, then align with b - a.
    m.apply_translation(-m.bounds.mean(0))
    m.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], (b - a) / length))
    m.apply_translation((a + b) / 2)
    return m


def _ellipsoid(radii, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=3)
    m.apply_scale(radii)
    m.apply_translation(center)
    return m


def lizard() -> trimesh.Trimesh:
    """Long (x), low (y), narrow (z) body with a tail and four thin legs touching the ground."""
    parts = [
        _ellipsoid((0.55, 0.07, 0.12)),
        _ellipsoid((0.12, 0.06, 0.08), (0.6, 0.01, 0.0)),
        _capsule((-0.5, 0.0, 0.0), (-1.1, -0.03, 0.05), 0.035),
    ]
    for x in (-0.3, 0.3):
        for s in (-1, 1):
            parts.append(_capsule((x, -0.02, s * 0.08), (x + 0.05, -0.1, s * 0.22), 0.022))
    return trimesh.util.concatenate(parts)


def mug() -> trimesh.Trimesh:
    """An open-top-less cylinder with a torus-segment handle (a hole between them)."""
    body = trimesh.creation.cylinder(radius=0.3, height=0.7, sections=48)
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle = trimesh.creation.torus(major_radius=0.2, minor_radius=0.04)
    handle.apply_translation((0.33, 0.0, 0.0))
    return trimesh.util.concatenate([body, handle])


def torus() -> trimesh.Trimesh:
    """A ring standing upright (its hole visible from the front)."""
    return trimesh.creation.torus(major_radius=0.5, minor_radius=0.12, major_sections=64, minor_sections=24)


def frame() -> trimesh.Trimesh:
    """A square picture frame: four bars around a large hole."""
    w, t, d = 1.0, 0.12, 0.1
    return trimesh.util.concatenate(
        [
            _box((w, t, d), (0, (w - t) / 2, 0)),
            _box((w, t, d), (0, -(w - t) / 2, 0)),
            _box((t, w - 2 * t, d), ((w - t) / 2, 0, 0)),
            _box((t, w - 2 * t, d), (-(w - t) / 2, 0, 0)),
        ]
    )


def plate() -> trimesh.Trimesh:
    """A thin flat plate lying horizontally."""
    return _box((1.0, 0.04, 0.7))


def white_vase() -> trimesh.Trimesh:
    """A vase of revolution (UVs: height and angle), textured almost all white."""
    prof_y = np.linspace(-0.5, 0.5, 24)
    prof_r = 0.18 + 0.12 * np.sin((prof_y + 0.5) * np.pi * 1.3) ** 2
    m = trimesh.creation.revolve(np.stack([prof_r, prof_y], 1), sections=48)
    v = m.vertices
    u = (np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi)) % 1.0
    uv = np.stack([u, (v[:, 2] + 0.5)], 1)
    tex = np.full((64, 64, 3), 245, np.uint8)  # near-white body
    tex[28:36] = (40, 90, 200)  # one blue band
    from PIL import Image

    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    return m


def table_tiny() -> trimesh.Trimesh:
    """A table (top and four thin legs) and a tiny ball on the floor beside it."""
    parts = [_box((0.8, 0.05, 0.5), (0, 0.2, 0))]
    for x in (-0.35, 0.35):
        for z in (-0.2, 0.2):
            parts.append(_capsule((x, 0.18, z), (x, -0.3, z), 0.02))
    parts.append(_ellipsoid((0.04, 0.04, 0.04), (0.5, -0.26, 0.25)))
    return trimesh.util.concatenate(parts)


STRESS_OBJECTS = {
    "lizard": lizard,
    "mug": mug,
    "torus": torus,
    "frame": frame,
    "plate": plate,
    "white_vase": white_vase,
    "table_tiny": table_tiny,
}


def make_mesh(name: str) -> trimesh.Trimesh:
    """The stress object ``name`` (a key of :data:`STRESS_OBJECTS`) as a trimesh."""
    return STRESS_OBJECTS[name]()


def write_stress_set(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write the objects (default: all) as ``<folder>/<name>.obj``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or list(STRESS_OBJECTS):
        path = folder / f"{name}.obj"
        mesh = make_mesh(name)
        if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
            mesh.visual.material.name = name  # per-object .mtl/.png names (no clashes in one folder)
        mesh.export(path, mtl_name=f"{name}.mtl")
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``stress_meshes.py FOLDER [NAME ...]``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="where to write the .obj files")
    ap.add_argument("names", nargs="*", choices=[*STRESS_OBJECTS, []], help="objects (default: all)")
    args = ap.parse_args(argv)
    for p in write_stress_set(args.folder, args.names or None):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
