"""Gaussian ``.ply`` I/O in the standard 3DGS layout (opens in common splat viewers).

Vertex properties, all float32, binary little-endian: ``x y z nx ny nz f_dc_0..2 f_rest_0..
opacity scale_0..2 rot_0..3``. Values are raw (logit opacity, log scale, unnormalised w,x,y,z
quaternion). ``f_rest`` is channel-major as 3DGS writes it: ``f_rest_{c*K + k}`` is SH
coefficient k+1 of channel c. Written with numpy (no plyfile dependency), atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.fileio import atomic_path

from .model import GaussianModel

__all__ = ["PlyError", "load_ply", "save_ply"]


def _fields(k: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * k)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(model: GaussianModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    n, k = model.num_points, model.shN.shape[1]
    names = _fields(k)
    arr = np.empty(n, dtype=[(name, "<f4") for name in names])
    cols = [
        model.means.detach(),
        torch.zeros(n, 3, device=model.device),
        model.sh0.detach()[:, 0, :],
        model.shN.detach().transpose(1, 2).reshape(n, 3 * k),
        model.opacities.detach()[:, None],
        model.scales.detach(),
        model.quats.detach(),
    ]
    flat = torch.cat(cols, dim=1).float().cpu().numpy()
    for i, name in enumerate(names):
        arr[name] = flat[:, i]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex {}\n{}end_header\n".format(
        n, "".join(f"property float {name}\n" for name in names)
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(arr.tobytes())
    return path


_PLY_TYPES = {
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
    "uchar": "u1",
    "uint8": "u1",
    "char": "i1",
    "int8": "i1",
    "ushort": "u2",
    "uint16": "u2",
    "short": "i2",
    "int16": "i2",
    "uint": "u4",
    "uint32": "u4",
    "int": "i4",
    "int32": "i4",
}


class PlyError(UserError, ValueError):
    """A ``.ply`` file that is not a usable 3DGS point file (one line for the user)."""


#: Longest header we read: real 3DGS headers are ~2 KB; a binary file without newlines must not be
#: read whole as one "line".
_MAX_HEADER = 1 << 16


def _read_header(f, path: Path) -> tuple[int, list[tuple[str, str]]]:
    """Parse a PLY header from ``f``: ``(vertex count, [(name, numpy dtype)])`` or :class:`PlyError`."""
    if f.readline(16).strip() != b"ply":
        raise PlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    props: list[tuple[str, str]] = []
    n = fmt = None
    in_vertex = False
    read = 0
    while True:
        line = f.readline(_MAX_HEADER)
        read += len(line)
        if not line or read >= _MAX_HEADER:
            raise PlyError(f"{path}: truncated or corrupt PLY header (no 'end_header')")
        try:
            tok = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise PlyError(f"{path}: corrupt PLY header (non-text bytes before 'end_header')") from None
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1] if len(tok) > 1 else ""
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise PlyError(f"{path}: bad PLY header line {line.decode().strip()!r}")
            in_vertex = tok[1] == "vertex"
            if in_vertex:
                n = int(tok[2])
            elif n is not None and int(tok[2]) > 0:
                raise PlyError(f"{path}: elements after 'vertex' are not supported")
        elif tok[0] == "property" and in_vertex:
            if len(tok) > 1 and tok[1] == "list":
                raise PlyError(f"{path}: list properties are not supported in a Gaussian PLY")
            if len(tok) != 3 or tok[1] not in _PLY_TYPES:
                raise PlyError(f"{path}: bad PLY property line {line.decode().strip()!r}")
            if any(name == tok[2] for name, _ in props):
                raise PlyError(f"{path}: property {tok[2]!r} is declared twice")
            props.append((tok[2], "<" + _PLY_TYPES[tok[1]]))
        elif tok[0] == "end_header":
            break
    if fmt != "binary_little_endian":
        raise PlyError(f"{path}: need a binary_little_endian PLY, this one is {fmt or 'of no format'}")
    if n is None or not props:
        raise PlyError(f"{path}: the PLY has no vertex element with properties")
    return n, props


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> GaussianModel:
    """Read a 3DGS ``.ply`` (binary little-endian, one ``vertex`` element) -> ``GaussianModel``.

    Broken files raise :class:`PlyError` (a :class:`core.errors.UserError`) with one line: not a
    PLY, bad or truncated header, missing 3DGS properties, truncated data, non-finite values,
    no Gaussians.
    """
    path = Path(path)
    if not path.is_file():
        raise PlyError(f"Gaussian file not found: {path}")
    with open(path, "rb") as f:
        n, props = _read_header(f, path)
        dtype = np.dtype(props)
        want = n * dtype.itemsize
        data = f.read(want)
    if len(data) < want:
        raise PlyError(f"{path}: truncated PLY data ({len(data)} of {want} bytes for {n} Gaussians)")
    if n == 0:
        raise PlyError(f"{path}: the PLY holds no Gaussians")
    arr = np.frombuffer(data, dtype=dtype, count=n)
    names = set(arr.dtype.names)
    n_rest = len([k for k in names if k.startswith("f_rest_")])
    if n_rest % 3:
        raise PlyError(f"{path}: {n_rest} f_rest properties is not a multiple of 3")
    k = n_rest // 3
    deg = round((k + 1) ** 0.5) - 1
    if (deg + 1) ** 2 - 1 != k:
        raise PlyError(f"{path}: {k} SH coefficients per channel is not a full degree")
    missing = [name for name in _fields(k) if name not in names and name not in ("nx", "ny", "nz")]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise PlyError(f"{path}: not a 3D Gaussian PLY, it lacks the properties {shown}")

    def col(*keys: str) -> np.ndarray:
        return np.stack([arr[key].astype(np.float32) for key in keys], axis=1)

    for name in _fields(k):
        if name in names and not np.isfinite(arr[name].astype(np.float32)).all():
            raise PlyError(f"{path}: property {name!r} has non-finite values (NaN or inf)")

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)

    rest = col(*[f"f_rest_{i}" for i in range(3 * k)]) if k else np.zeros((n, 0), np.float32)
    return GaussianModel(
        means=t(col("x", "y", "z")),
        scales=t(col("scale_0", "scale_1", "scale_2")),
        quats=t(col("rot_0", "rot_1", "rot_2", "rot_3")),
        opacities=t(arr["opacity"].astype(np.float32)),
        sh0=t(col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]),
        shN=t(rest.reshape(n, 3, k).transpose(0, 2, 1)),
        sh_degree=deg,
    )
