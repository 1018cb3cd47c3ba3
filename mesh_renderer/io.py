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
import re
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.fileio import atomic_write_bytes

from .mesh import Mesh

__all__ = ["MeshFileError", "MeshNotFoundError", "load_mesh", "save_mesh", "split_to_uv_layout"]

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


# --------------------------------------------------------------------------------- hostile input
class MeshFileError(UserError, ValueError):
    """A mesh file, or a file it references, that cannot be used (one line for the user)."""


class MeshNotFoundError(MeshFileError, FileNotFoundError):
    """The mesh file does not exist."""


# ``scheme:`` of a URL, and Windows drive letters (``C:``), which look the same.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _confined(folder: Path, ref: str, owner: Path | str, what: str) -> Path:
    """The file that ``ref`` (from ``owner``) names inside ``folder``; anything leaving it is refused.

    Referenced files (MTL libraries, textures, glTF buffers and images) may only be relative paths
    inside the mesh file's folder, so a crafted file cannot make us read, and embed in an output,
    any other file of the machine: absolute paths, ``..``, URLs, drive letters and symlinks that
    resolve outside the folder raise :class:`MeshFileError`. Backslashes count as separators.
    """
    norm = ref.strip().replace("\\", "/")
    why = None
    if not norm:
        why = "is empty"
    elif any(ord(c) < 32 for c in norm):
        why = "contains control characters"
    elif _SCHEME.match(norm):
        why = "is a URL or a drive path"
    elif norm.startswith("/"):
        why = "is an absolute path"
    elif ".." in norm.split("/"):
        why = "goes up with '..'"
    else:
        try:
            inside = (folder / norm).resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside:
            why = "resolves (through a symlink) outside the mesh's folder"
    if why:
        raise MeshFileError(
            f"{owner}: {what} {ref.strip()!r} {why}; referenced files must be relative paths inside "
            f"{folder} (copy the file there)"
        )
    return folder / norm


def _check_arrays(
    path: Path, v: np.ndarray, f: np.ndarray, vt: np.ndarray | None = None, ft: np.ndarray | None = None
) -> None:
    """Refuse empty meshes, non-finite positions/UVs and out-of-range (0-based) face indices."""
    if len(v) == 0:
        raise MeshFileError(f"{path}: the mesh has no vertices")
    if len(f) == 0:
        raise MeshFileError(f"{path}: the mesh has no triangles ({len(v)} vertices but no faces)")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise MeshFileError(
            f"{path}: {int(bad.sum())} vertices have non-finite (NaN or inf) coordinates, "
            f"the first is vertex {int(np.flatnonzero(bad)[0]) + 1}"
        )
    if f.min() < 0 or f.max() >= len(v):
        idx = int(f.max()) if f.max() >= len(v) else int(f.min())
        raise MeshFileError(
            f"{path}: a face uses vertex index {idx + 1 if idx >= 0 else idx}, "
            f"out of range for its {len(v)} vertices"
        )
    if vt is not None and ft is not None:
        if not np.isfinite(vt).all():
            raise MeshFileError(f"{path}: texture coordinates are not finite (NaN or inf)")
        if len(ft) and (ft.min() < 0 or ft.max() >= len(vt)):
            raise MeshFileError(
                f"{path}: a face uses texture coordinate index out of range for its {len(vt)} coordinates"
            )


# ----------------------------------------------------------------------------------------------- OBJ
# An OBJ line as (1-based line number, text).
_Line = tuple[int, str]


def _bad_line(path: Path, line: _Line, what: str) -> MeshFileError:
    text = line[1].strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    return MeshFileError(f"{path}: line {line[0]}: cannot parse {what} {shown!r}")


def _parse_floats(path: Path, lines: list[_Line], width: int) -> np.ndarray:
    """``v``/``vt`` lines -> float32 ``[N,width]`` (extra columns such as vertex colours dropped)."""
    if not lines:
        return np.zeros((0, width), np.float32)
    toks = [ln.split()[1:] for _, ln in lines]
    try:
        if {len(t) for t in toks} == {width}:
            return np.array(" ".join(" ".join(t) for t in toks).split(), dtype=np.float32).reshape(-1, width)
    except ValueError:
        pass  # find the bad line below
    out = np.zeros((len(toks), width), np.float32)
    for i, t in enumerate(toks):
        # 'vt u' (1D textures) is legal, missing columns are 0; a 'v' needs all three coordinates.
        if len(t) < (3 if width == 3 else 1):
            raise _bad_line(path, lines[i], f"'{lines[i][1].split()[0]}' (too few numbers)")
        try:
            out[i] = [float(x) for x in (t + ["0"] * width)[:width]]
        except ValueError:
            raise _bad_line(path, lines[i], "a number in") from None
    return out


def _face_tokens(path: Path, line: _Line, nv: int, nvt: int) -> tuple[list[int], list[int]]:
    """One ``f`` line -> (0-based vertex indices, 0-based texture indices or -1); slow path."""
    toks = line[1].split()[1:]
    if len(toks) < 3:
        raise _bad_line(path, line, "a face with fewer than 3 vertices:")
    vs, ts = [], []
    for tok in toks:
        parts = tok.split("/")
        try:
            vi = int(parts[0])
            ti = int(parts[1]) if len(parts) > 1 and parts[1] else 0
        except ValueError:
            raise _bad_line(path, line, "a face index in") from None
        if vi == 0 or (len(parts) > 1 and parts[1] == "0"):
            raise _bad_line(path, line, "a face (OBJ indices start at 1, not 0):")
        vs.append(vi - 1 if vi > 0 else vi + nv)  # negative indices count back from this line
        ts.append((ti - 1 if ti > 0 else ti + nvt) if ti else -1)
    return vs, ts


def _parse_faces(
    path: Path, lines: list[_Line], counts: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Face lines -> (f [F,3], ft [F,3] or None), fan-triangulating polygons; 0-based indices.

    ``counts[i]`` is (vertices, texture coordinates) defined before face line ``i``: negative OBJ
    indices are relative to that point of the file. Index 0, unparsable tokens and faces with fewer
    than 3 corners raise :class:`MeshFileError` naming the line.
    """
    fs, fts = [], []
    has_vt = True
    for line, (nv, nvt) in zip(lines, counts, strict=True):
        vs, ts = _face_tokens(path, line, nv, nvt)
        has_vt &= all(t >= 0 for t in ts)
        # Fan triangulation (0, k, k+1), fine for the convex polygons OBJ exporters write.
        for k in range(1, len(vs) - 1):
            fs.append((vs[0], vs[k], vs[k + 1]))
            fts.append((ts[0], ts[k], ts[k + 1]))
    if not fs:
        return np.zeros((0, 3), np.int64), None
    return np.array(fs, np.int64), (np.array(fts, np.int64) if has_vt else None)


def _parse_faces_fast(
    path: Path, lines: list[_Line], counts: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_parse_faces` vectorised for the common case (one token layout, positive indices)."""
    if not lines:
        return np.zeros((0, 3), np.int64), None
    toks = [ln.split()[1:] for _, ln in lines]
    n = len(toks[0])
    first = toks[0][0]
    layout = first.count("/"), "//" in first
    uniform = n >= 3 and all(len(t) == n for t in toks)
    if not uniform or "-" in "".join(t[0] for t in toks):  # relative indices: exact slow path
        return _parse_faces(path, lines, counts)
    try:
        flat = " ".join(" ".join(t) for t in toks)
        if (flat.count("/"), flat.count("//")) != (layout[0] * n * len(toks), layout[1] * n * len(toks)):
            raise ValueError("mixed layouts")
        arr = np.array(flat.replace("//", "/0/").replace("/", " ").split(), dtype=np.int64)
        arr = arr.reshape(len(toks), n, -1)
    except ValueError:
        return _parse_faces(path, lines, counts)
    vi = arr[..., 0]
    ti = arr[..., 1] if arr.shape[-1] > 1 else np.zeros_like(vi)
    has_vt = arr.shape[-1] > 1 and bool((ti > 0).all())
    if (vi <= 0).any() or (arr.shape[-1] > 1 and not layout[1] and (ti <= 0).any()):
        return _parse_faces(path, lines, counts)  # index 0 or negatives: let the slow path explain
    k = np.arange(1, n - 1)
    tri = np.stack([np.zeros_like(k), k, k + 1], axis=-1)  # [n-2,3]
    f = (vi - 1)[:, tri].reshape(-1, 3)
    ft = (ti - 1)[:, tri].reshape(-1, 3) if has_vt else None
    return f, ft


def _load_obj(path: Path) -> Mesh:
    text = path.read_text(errors="replace")
    by_key: dict[str, list[_Line]] = {"v": [], "vt": [], "vn": [], "f": []}
    counts: list[tuple[int, int]] = []  # (v, vt) defined before each face line
    mtllibs: list[str] = []
    materials: list[str] = []
    for lineno, ln in enumerate(text.splitlines(), start=1):
        parts = ln.split(maxsplit=1)
        key = parts[0] if parts else ""
        if key in by_key:
            if key == "f":
                counts.append((len(by_key["v"]), len(by_key["vt"])))
            by_key[key].append((lineno, ln))
        elif key == "mtllib" and len(parts) > 1:
            mtllibs.append(parts[1].strip())
        elif key == "usemtl" and len(parts) > 1:
            materials.append(parts[1].strip())
    v = _parse_floats(path, by_key["v"], 3)
    vt = _parse_floats(path, by_key["vt"], 2)
    f, ft = _parse_faces_fast(path, by_key["f"], counts)
    _check_arrays(path, v, f, vt if ft is not None else None, ft)
    albedo = _obj_texture(path, mtllibs, materials)
    # Normals from the file are dropped on purpose: face indices for them are not kept, and
    # area-weighted normals from the geometry are what the renderer and the authors use.
    return Mesh(v=v, f=f, vt=vt if ft is not None else None, ft=ft, albedo=albedo)


#: MTL statements that name a file (texture maps); all are checked, only ``map_Kd`` is read.
_MTL_MAPS = {
    "map_ka",
    "map_kd",
    "map_ks",
    "map_ns",
    "map_d",
    "map_bump",
    "bump",
    "disp",
    "decal",
    "refl",
    "norm",
}
_MTL_MAPS |= {"map_pr", "map_pm", "map_ps", "map_ke", "map_refl", "map_norm"}


#: MTL map options followed by one word (the others take numbers, e.g. ``-s 1 1 1``, ``-bm 0.5``).
_WORD_OPTIONS = {"-blendu", "-blendv", "-cc", "-clamp", "-imfchan", "-type"}


def _map_file(parts: list[str]) -> str:
    """The file name of a map statement ``map_Kd [-option args...] name``."""
    args = parts[1:]
    i = 0
    while i < len(args) - 1 and args[i].startswith("-") and not _is_number(args[i]):
        opt = args[i].lower()
        i += 1
        if opt in _WORD_OPTIONS:
            i += 1
        else:
            while i < len(args) - 1 and _is_number(args[i]):
                i += 1
    return " ".join(args[i:])  # names may contain spaces


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _obj_texture(path: Path, mtllibs: list[str], materials: list[str]) -> torch.Tensor | None:
    """The ``map_Kd`` image of the first material that has one (single-texture meshes only).

    Every referenced file (MTL libraries and texture maps) must lie inside the OBJ's folder
    (:func:`_confined`); a missing MTL or texture is a warning (the mesh loads untextured).
    """
    folder = path.parent
    textures: dict[str, Path] = {}
    for lib in mtllibs:
        mtl = _confined(folder, lib, path, "mtllib")
        if not mtl.is_file():
            log.warning("material library %s not found", mtl)
            continue
        name = None
        for ln in mtl.read_text(errors="replace").splitlines():
            parts = ln.strip().split()
            if not parts:
                continue
            if parts[0] == "newmtl":
                name = " ".join(parts[1:])
            elif parts[0].lower() in _MTL_MAPS and len(parts) > 1:
                owner = f"{path} (material library {mtl.name})"
                tex = _confined(folder, _map_file(parts), owner, parts[0])
                if parts[0].lower() == "map_kd" and name is not None:
                    textures[name] = tex
    order = [m for m in materials if m in textures] + list(textures)
    if not order:
        return None
    if len(set(order)) > 1:
        log.warning("%s uses %d textures; only %s is loaded", path, len(set(order)), order[0])
    tex_path = textures[order[0]]
    if not tex_path.is_file():
        log.warning("texture %s not found", tex_path)
        return None
    return _read_texture(tex_path, path)


def _read_texture(tex: Path, owner: Path) -> torch.Tensor:
    """A texture file as float ``[H,W,3]``; unreadable or decompression-bomb images are refused."""
    from core.images import IMAGE_READ_ERRORS, error_reason, opened_image

    try:
        with opened_image(tex) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
                return torch.from_numpy(np.repeat(arr[..., None], 3, axis=-1))
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except IMAGE_READ_ERRORS as e:
        raise MeshFileError(f"{owner}: cannot read texture {tex}: {error_reason(e)}") from None
    if arr.size == 0:
        raise MeshFileError(f"{owner}: texture {tex} is empty")
    return torch.from_numpy(arr)


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
def _gltf_json(path: Path) -> dict:
    """The JSON of a ``.gltf``/``.glb`` after checking the GLB container; corrupt files are refused."""
    import json
    import struct

    data = path.read_bytes()
    if not data:
        raise MeshFileError(f"{path}: the file is empty")
    if path.suffix.lower() == ".glb" or data[:4] == b"glTF":
        if len(data) < 20 or data[:4] != b"glTF":
            raise MeshFileError(f"{path}: not a binary glTF file (no 'glTF' header)")
        _, length = struct.unpack_from("<II", data, 4)
        chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
        if length > len(data) or 20 + chunk_len > len(data):
            raise MeshFileError(
                f"{path}: truncated binary glTF ({len(data)} bytes, the header says {length})"
            )
        if chunk_type != 0x4E4F534A:  # 'JSON'
            raise MeshFileError(f"{path}: corrupt binary glTF (its first chunk is not JSON)")
        text = data[20 : 20 + chunk_len]
    else:
        text = data
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MeshFileError(f"{path}: corrupt glTF, its JSON does not parse ({str(e)[:80]})") from None
    if not isinstance(doc, dict):
        raise MeshFileError(f"{path}: corrupt glTF, its JSON is not an object")
    return doc


def _check_gltf_uris(path: Path, doc: dict) -> None:
    """Every external buffer/image URI must be a file inside the glTF's folder (data: URIs pass)."""
    from urllib.parse import unquote

    for group in ("buffers", "images"):
        items = doc.get(group) or []
        if not isinstance(items, list):
            raise MeshFileError(f"{path}: corrupt glTF, '{group}' is not a list")
        for item in items:
            uri = item.get("uri") if isinstance(item, dict) else None
            if uri is None:
                continue
            if not isinstance(uri, str):
                raise MeshFileError(f"{path}: corrupt glTF, a {group[:-1]} URI is not a string")
            # trimesh decodes anything with 'base64,' inline; it never reads a file for those.
            if uri.startswith("data:") or "base64," in uri:
                continue
            what = f"{group[:-1]} URI"
            _confined(path.parent, uri, path, what)
            _confined(path.parent, unquote(uri), path, what)


def _load_gltf(path: Path) -> Mesh:
    import trimesh

    _check_gltf_uris(path, _gltf_json(path))
    try:
        # process=False keeps the file's vertex layout (merging would break UV seams).
        scene = trimesh.load(str(path), process=False)
        if isinstance(scene, trimesh.Scene):
            if not scene.geometry:
                raise MeshFileError(f"{path}: the file holds no mesh")
            geom = scene.to_geometry()  # applies node transforms
        else:
            geom = scene
        if not hasattr(geom, "faces"):
            raise MeshFileError(f"{path}: the file holds points or lines, not a triangle mesh")
        v = np.asarray(geom.vertices, dtype=np.float32)
        f = np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
        visual = geom.visual
        uv = getattr(visual, "uv", None)
        mat = getattr(visual, "material", None)
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        img = None if img is None else np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        factor = getattr(mat, "baseColorFactor", None)
    except MeshFileError:
        raise
    except Exception as e:  # trimesh raises many types for malformed accessors, views and images
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise MeshFileError(f"{path}: corrupt glTF ({type(e).__name__}: {reason})") from None
    vt = albedo = None
    if uv is not None and len(uv) == len(v):
        # trimesh already turns glTF's v-down TEXCOORD into the v-up (OBJ) convention we use.
        vt = np.asarray(uv, dtype=np.float32)
        if img is not None and img.size:
            albedo = torch.from_numpy(img)
            if factor is not None:  # glTF multiplies the texture by the factor (uint8 in trimesh)
                factor = np.asarray(factor, dtype=np.float32)[:3]
                factor = factor / 255.0 if factor.max() > 1.0 else factor
                albedo = albedo * torch.from_numpy(factor)
    _check_arrays(path, v, f, vt, f if vt is not None else None)
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
    """Read ``.obj`` (with ``mtllib``/``map_Kd`` texture) or ``.glb``/``.gltf`` into a CPU :class:`Mesh`.

    Hostile or broken files raise :class:`MeshFileError` (a :class:`core.errors.UserError`) with one
    line: referenced files outside the mesh's folder, corrupt/truncated glTF, unparsable OBJ lines,
    empty meshes, non-finite positions or UVs, out-of-range face indices.
    """
    path = Path(path)
    if not path.exists():
        raise MeshNotFoundError(f"mesh file not found: {path}")
    if not path.is_file():
        raise MeshFileError(f"mesh path is not a file: {path}")
    ext = path.suffix.lower()
    if ext == ".obj":
        return _load_obj(path)
    if ext in (".glb", ".gltf"):
        return _load_gltf(path)
    raise MeshFileError(f"unsupported mesh format {ext!r} ({path}); use .obj, .glb or .gltf")


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
