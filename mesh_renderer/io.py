"""Mesh files: ``.obj`` (+ ``.mtl`` + albedo PNG) and ``.glb``/``.gltf``.

Orientation: our world is +Y up with the reference view on +Z (``core/cameras.py``), which is also
glTF's convention (+Y up, front facing +Z), so no axis change is applied on load or save; OBJ has no
convention and is read and written as is.

UVs: ``Mesh.vt`` is (u right, v up) like OBJ files. glTF stores ``TEXCOORD_0`` with v down
(origin at the top-left of the image), so glTF files are converted with ``v -> 1 - v`` here and
nowhere else. The albedo's row 0 is the top row of the PNG in both formats.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``) so a
crash never leaves a half-written mesh behind.
"""

from __future__ import annotations

import io as _io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from core.fileio import atomic_write_bytes

from .mesh import Mesh

__all__ = ["load_mesh", "save_mesh", "split_to_uv_layout"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- utils
def _png_bytes(albedo: torch.Tensor) -> bytes:
    import io

    from PIL import Image

    img = (albedo.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    # Fast zlib level: a 1024^2 texture encodes ~5x faster than at the default level 6, still lossless.
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _read_image(path_or_bytes) -> torch.Tensor:
    """An image file as float ``[H,W,3]`` in [0,1] (grey expanded, alpha dropped)."""
    import imageio.v3 as iio

    img = iio.imread(path_or_bytes)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    return torch.from_numpy(img.astype(np.float32) / scale)


def split_to_uv_layout(mesh: Mesh) -> Mesh:
    """One vertex per distinct (position, UV) corner pair, so ``f == ft`` (what glTF needs)."""
    if not mesh.has_uv or torch.equal(mesh.f, mesh.ft):
        return mesh
    pairs = torch.stack([mesh.f.reshape(-1), mesh.ft.reshape(-1)], dim=-1)
    uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
    f = inv.reshape(-1, 3)
    return Mesh(
        v=mesh.v[uniq[:, 0]], f=f, vn=mesh.vn[uniq[:, 0]], vt=mesh.vt[uniq[:, 1]], ft=f, albedo=mesh.albedo
    )


# ----------------------------------------------------------------------------------------------- OBJ
def _parse_floats(lines: list[str], width: int) -> np.ndarray:
    if not lines:
        return np.zeros((0, width), np.float32)
    toks = [ln.split()[1:] for ln in lines]
    counts = {len(t) for t in toks}
    if len(counts) == 1:
        arr = np.array(" ".join(" ".join(t) for t in toks).split(), dtype=np.float32).reshape(len(toks), -1)
    else:  # rare: mixed widths (e.g. some 'v' with colours); pad per line
        arr = np.array([[float(x) for x in (t + ["0"] * width)[:width]] for t in toks], dtype=np.float32)
    return arr[:, :width]


def _parse_faces(lines: list[str], nv: int, nvt: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Face lines -> (f [F,3], ft [F,3] or None), fan-triangulating polygons; 0-based indices."""
    groups: dict[int, list[list[str]]] = {}
    for ln in lines:
        t = ln.split()[1:]
        groups.setdefault(len(t), []).append(t)
    fs, fts = [], []
    has_vt = True
    for n, toks in groups.items():
        if n < 3:
            continue
        # Tokens are 'a', 'a/b', 'a//c' or 'a/b/c'; the format is uniform within a file in practice.
        flat = " ".join(" ".join(t) for t in toks).replace("//", "/0/").replace("/", " ").split()
        arr = np.array(flat, dtype=np.int64).reshape(len(toks), n, -1)
        vi = arr[..., 0]
        ti = arr[..., 1] if arr.shape[-1] > 1 else np.zeros_like(vi)
        has_vt &= bool(arr.shape[-1] > 1 and (ti != 0).all())
        vi = np.where(vi > 0, vi - 1, vi + nv)  # OBJ indices are 1-based; negatives are relative
        ti = np.where(ti > 0, ti - 1, ti + nvt)
        # Fan triangulation (0, k, k+1), fine for the convex polygons OBJ exporters write.
        k = np.arange(1, n - 1)
        tri = np.stack([np.zeros_like(k), k, k + 1], axis=-1)  # [n-2,3]
        fs.append(vi[:, tri].reshape(-1, 3))
        fts.append(ti[:, tri].reshape(-1, 3))
    if not fs:
        return np.zeros((0, 3), np.int64), None
    return np.concatenate(fs), (np.concatenate(fts) if has_vt and nvt > 0 else None)


def _load_obj(path: Path) -> Mesh:
    text = path.read_text(errors="replace")
    by_key: dict[str, list[str]] = {"v": [], "vt": [], "vn": [], "f": []}
    mtllibs, materials = [], []
    for ln in text.splitlines():
        key = ln.split(maxsplit=1)[0] if ln.strip() else ""
        if key in by_key:
            by_key[key].append(ln)
        elif key == "mtllib":
            mtllibs.append(ln.split(maxsplit=1)[1].strip())
        elif key == "usemtl":
            materials.append(ln.split(maxsplit=1)[1].strip())
    v = _parse_floats(by_key["v"], 3)
    vt = _parse_floats(by_key["vt"], 2)
    f, ft = _parse_faces(by_key["f"], len(v), len(vt))
    albedo = _obj_texture(path, mtllibs, materials)
    # Normals from the file are dropped on purpose: face indices for them are not kept, and
    # area-weighted normals from the geometry are what the renderer and the authors use.
    return Mesh(v=v, f=f, vt=vt if ft is not None else None, ft=ft, albedo=albedo)


def _obj_texture(path: Path, mtllibs: list[str], materials: list[str]) -> torch.Tensor | None:
    """The ``map_Kd`` image of the first material that has one (single-texture meshes only)."""
    textures: dict[str, Path] = {}
    for lib in mtllibs:
        mtl = path.parent / lib
        if not mtl.exists():
            log.warning("material library %s not found", mtl)
            continue
        name = None
        for ln in mtl.read_text(errors="replace").splitlines():
            parts = ln.strip().split()
            if not parts:
                continue
            if parts[0] == "newmtl":
                name = " ".join(parts[1:])
            elif parts[0] == "map_Kd" and name is not None:
                textures[name] = path.parent / parts[-1]  # options such as -bm precede the file name
    order = [m for m in materials if m in textures] + list(textures)
    if not order:
        return None
    if len(set(order)) > 1:
        log.warning("%s uses %d textures; only %s is loaded", path, len(set(order)), order[0])
    tex_path = textures[order[0]]
    if not tex_path.exists():
        log.warning("texture %s not found", tex_path)
        return None
    return _read_image(tex_path)


def _save_obj(mesh: Mesh, path: Path) -> None:
    stem = path.stem
    lines = []
    m = mesh.to("cpu")
    has_tex = m.has_uv and m.albedo is not None
    if has_tex:
        lines.append(f"mtllib {stem}.mtl")
    v = m.v.numpy()
    vn = m.vn.numpy()
    body = [("v", v), ("vt", m.vt.numpy() if m.has_uv else None), ("vn", vn)]
    chunks = ["\n".join(lines) + "\n" if lines else ""]
    for key, arr in body:
        if arr is None or len(arr) == 0:
            continue
        fmt = " ".join(["%.6f"] * arr.shape[1])
        buf = _io.StringIO()
        np.savetxt(buf, arr, fmt=f"{key} {fmt}")
        chunks.append(buf.getvalue())
    if has_tex:
        chunks.append("usemtl material_0\n")
    f = m.f.numpy() + 1
    if m.has_uv:
        ft = m.ft.numpy() + 1
        cols = np.stack([f, ft, f], axis=-1).reshape(len(f), 9)
        fmt = "f %d/%d/%d %d/%d/%d %d/%d/%d"
    else:
        cols = np.stack([f, f], axis=-1).reshape(len(f), 6)
        fmt = "f %d//%d %d//%d %d//%d"
    buf = _io.StringIO()
    np.savetxt(buf, cols, fmt=fmt)
    chunks.append(buf.getvalue())
    if has_tex:
        atomic_write_bytes(path.with_name(f"{stem}_albedo.png"), _png_bytes(m.albedo))
        mtl = (
            f"newmtl material_0\nKa 1.000000 1.000000 1.000000\nKd 1.000000 1.000000 1.000000\n"
            f"Ks 0.000000 0.000000 0.000000\nillum 1\nmap_Kd {stem}_albedo.png\n"
        )
        atomic_write_bytes(path.with_name(f"{stem}.mtl"), mtl.encode())
    atomic_write_bytes(path, "".join(chunks).encode())


# ---------------------------------------------------------------------------------------------- glTF
def _load_gltf(path: Path) -> Mesh:
    import trimesh

    # process=False keeps the file's vertex layout (merging would break UV seams).
    scene = trimesh.load(str(path), process=False)
    geom = scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene  # applies node transforms
    v = np.asarray(geom.vertices, dtype=np.float32)
    f = np.asarray(geom.faces, dtype=np.int64)
    vt = albedo = None
    visual = geom.visual
    uv = getattr(visual, "uv", None)
    if uv is not None and len(uv) == len(v):
        # trimesh already turns glTF's v-down TEXCOORD into the v-up (OBJ) convention we use.
        vt = np.asarray(uv, dtype=np.float32)
        mat = getattr(visual, "material", None)
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            albedo = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
            factor = getattr(mat, "baseColorFactor", None)
            if factor is not None:  # glTF multiplies the texture by the factor (uint8 in trimesh)
                factor = np.asarray(factor, dtype=np.float32)[:3]
                factor = factor / 255.0 if factor.max() > 1.0 else factor
                albedo = albedo * torch.from_numpy(factor)
    return Mesh(v=v, f=f, vt=vt, ft=f if vt is not None else None, albedo=albedo)


def _save_glb(mesh: Mesh, path: Path) -> None:
    import pygltflib as g

    m = split_to_uv_layout(mesh.to("cpu"))
    v = m.v.numpy().astype(np.float32)
    vn = m.vn.numpy().astype(np.float32)
    f = m.f.numpy().astype(np.uint32)
    blobs: list[bytes] = []
    views, accessors = [], []

    def add(data: bytes, target: int | None) -> int:
        offset = sum(len(b) for b in blobs)
        blobs.append(data + b"\0" * (-len(data) % 4))  # 4-byte alignment of every view
        views.append(g.BufferView(buffer=0, byteOffset=offset, byteLength=len(data), target=target))
        return len(views) - 1

    def add_accessor(
        arr: np.ndarray, ctype: int, atype: str, target: int | None, minmax: bool = False
    ) -> int:
        view = add(arr.tobytes(), target)
        kw = {}
        if minmax:
            kw = dict(min=arr.min(0).tolist(), max=arr.max(0).tolist())
        accessors.append(g.Accessor(bufferView=view, componentType=ctype, count=len(arr), type=atype, **kw))
        return len(accessors) - 1

    attrs = g.Attributes(
        POSITION=add_accessor(v, g.FLOAT, g.VEC3, g.ARRAY_BUFFER, minmax=True),
        NORMAL=add_accessor(vn, g.FLOAT, g.VEC3, g.ARRAY_BUFFER),
    )
    materials, textures, images, samplers = [], [], [], []
    if m.has_uv:
        uv = m.vt.numpy().astype(np.float32).copy()
        uv[:, 1] = 1.0 - uv[:, 1]  # glTF TEXCOORD has v pointing down the image
        attrs.TEXCOORD_0 = add_accessor(uv, g.FLOAT, g.VEC2, g.ARRAY_BUFFER)
    indices = add_accessor(f.reshape(-1), g.UNSIGNED_INT, g.SCALAR, g.ELEMENT_ARRAY_BUFFER)
    pbr = g.PbrMetallicRoughness(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0
    )
    if m.has_uv and m.albedo is not None:
        img_view = add(_png_bytes(m.albedo), None)
        images.append(g.Image(bufferView=img_view, mimeType="image/png"))
        samplers.append(
            g.Sampler(
                magFilter=g.LINEAR,
                minFilter=g.LINEAR_MIPMAP_LINEAR,
                wrapS=g.CLAMP_TO_EDGE,
                wrapT=g.CLAMP_TO_EDGE,
            )
        )
        textures.append(g.Texture(sampler=0, source=0))
        pbr.baseColorTexture = g.TextureInfo(index=0)
    materials.append(g.Material(pbrMetallicRoughness=pbr, doubleSided=True))
    data = b"".join(blobs)
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="microdreamer mesh_renderer"),
        scene=0,
        scenes=[g.Scene(nodes=[0])],
        nodes=[g.Node(mesh=0)],
        meshes=[g.Mesh(primitives=[g.Primitive(attributes=attrs, indices=indices, material=0)])],
        materials=materials,
        textures=textures,
        images=images,
        samplers=samplers,
        accessors=accessors,
        bufferViews=views,
        buffers=[g.Buffer(byteLength=len(data))],
    )
    gltf.set_binary_blob(data)
    atomic_write_bytes(path, b"".join(gltf.save_to_bytes()))


# ------------------------------------------------------------------------------------------- public
def load_mesh(path: str | os.PathLike) -> Mesh:
    """Read ``.obj`` (with ``mtllib``/``map_Kd`` texture) or ``.glb``/``.gltf`` into a CPU :class:`Mesh`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file not found: {path}")
    ext = path.suffix.lower()
    if ext == ".obj":
        return _load_obj(path)
    if ext in (".glb", ".gltf"):
        return _load_gltf(path)
    raise ValueError(f"unsupported mesh format {ext!r} ({path}); use .obj, .glb or .gltf")


def save_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``.obj`` (+ ``<stem>.mtl`` + ``<stem>_albedo.png`` when textured) or ``.glb``; returns the path."""
    path = Path(path)
    ext = path.suffix.lower()
    det = lambda x: None if x is None else x.detach()  # noqa: E731 - parameters may require grad
    mesh = Mesh(
        v=det(mesh.v), f=mesh.f, vn=det(mesh.vn), vt=det(mesh.vt), ft=mesh.ft, albedo=det(mesh.albedo)
    )
    if ext == ".obj":
        _save_obj(mesh, path)
    elif ext == ".glb":
        _save_glb(mesh, path)
    else:
        raise ValueError(f"unsupported mesh format {ext!r} ({path}); use .obj or .glb")
    return path
