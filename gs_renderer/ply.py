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

from core.fileio import atomic_path

from .model import GaussianModel

__all__ = ["save_ply", "load_ply"]


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


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> GaussianModel:
    """Read a 3DGS ``.ply`` (binary little-endian, one ``vertex`` element) -> ``GaussianModel``."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        props: list[tuple[str, str]] = []
        n = None
        fmt = None
        in_vertex = False
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: truncated PLY header")
            tok = line.decode("ascii").split()
            if not tok or tok[0] in ("comment", "obj_info"):
                continue
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                in_vertex = tok[1] == "vertex"
                if in_vertex:
                    n = int(tok[2])
                elif n is not None:
                    raise ValueError(f"{path}: elements after 'vertex' are not supported")
            elif tok[0] == "property" and in_vertex:
                if tok[1] == "list":
                    raise ValueError(f"{path}: list properties are not supported")
                props.append((tok[2], "<" + _PLY_TYPES[tok[1]]))
            elif tok[0] == "end_header":
                break
        if fmt != "binary_little_endian" or n is None:
            raise ValueError(f"{path}: need a binary_little_endian PLY with a vertex element")
        arr = np.frombuffer(f.read(n * np.dtype(props).itemsize), dtype=np.dtype(props), count=n)
    names = set(arr.dtype.names)

    def col(*keys: str) -> np.ndarray:
        return np.stack([arr[k].astype(np.float32) for k in keys], axis=1)

    n_rest = len([k for k in names if k.startswith("f_rest_")])
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest properties is not a multiple of 3")
    k = n_rest // 3
    deg = round((k + 1) ** 0.5) - 1
    if (deg + 1) ** 2 - 1 != k:
        raise ValueError(f"{path}: {k} SH coefficients per channel is not a full degree")

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
