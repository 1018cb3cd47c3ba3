"""UV atlas generation with xatlas (docs/method.md#texture-bake ``auto_uv``), vertices split to the UV layout.

xatlas' time depends on the geometry, not only the face count: a marching-cubes mesh of a diffuse
noise cloud (random or badly converged Gaussians) took 11.7 s on a GPU host where a clean object
of the same size takes under 1 s. ``unwrap_uv`` therefore runs xatlas under a wall-clock budget and,
past it, gives every face its own cell of a regular grid atlas (:func:`grid_atlas`): time linear in
the faces, every face covered, more seams (harmless for baked textures).

xatlas' time is in chart computation, super-linear in the faces, so ``unwrap_uv`` cuts the mesh
into ``workers`` spatial parts (:func:`split_parts`) and runs one xatlas process per part in
parallel, each packed into its own rectangle of the texture. Measured on a 2-core CPU, 20k-face
marching-cubes meshes: 1.12 s -> 0.47 s (2 parts) on a noisy sphere, 10.7 s -> 1.8 s (2) -> 0.85 s
(4) on a noise cloud; the UV area used drops from 0.39 to 0.34 (gaps, smaller packs).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import xatlas_pool
from .mesh import Mesh
from .ops import decimate

__all__ = [
    "MIN_PART_FACES",
    "UnwrapJob",
    "default_workers",
    "grid_atlas",
    "prestart_workers",
    "split_parts",
    "start_unwrap",
    "unwrap_uv",
]

log = logging.getLogger(__name__)

# Below this many faces per part, a process start (~0.2 s) costs more than xatlas saves by the split.
MIN_PART_FACES = 1000

# Warm xatlas servers (mesh_renderer/xatlas_pool.py) wait on their pipes with select.poll(), which
# Windows lacks: there each part gets a one-shot process.
_POOLED = sys.platform != "win32"


def unwrap_uv(
    mesh: Mesh,
    max_faces: int = 100_000,
    tex_size: int = 1024,
    padding: int = 2,
    max_iterations: int = 1,
    max_chart_area_ratio: float = 0.005,
    time_budget: float | None = 3.0,
    workers: int | None = None,
) -> Mesh:
    """A copy of ``mesh`` with an xatlas UV atlas; ``v``, ``vn``, ``vt`` share one index (``f == ft``).

        Meshes over ``max_faces`` are decimated first (xatlas time grows faster than linearly: the
        authors' 276k-face mesh took 86 s). Charts are packed for a ``tex_size`` texture with ``padding``
        texels between them (the authors pack with padding 0, so bilinear/mip lookups bleed across
        charts). ``max_chart_area_ratio`` caps each chart's area at that fraction of the surface (0 = no
    cap, xatlas' default): unbounded charts make xatlas super-linear. Measured on a loaded 2-core CPU
    with a 50k-face marching-cubes blob: 97 s uncapped (42 charts), 27 s at 0.02, 3 s at 0.005 (307
    charts, same packing utilisation 0.61), at the price of more seams (harmless for baked textures). ``vt`` is in [0,1]^2, u right, v up. Normals are carried over from the input (not
        recomputed), so UV seams do not show as shading seams. The albedo is dropped (it no longer
        matches the new UVs). The elapsed time is logged. Faces keep their input order.

    ``workers``: the mesh is cut into that many spatially coherent parts of equal face count
    (:func:`split_parts`; fewer when parts would have under ``MIN_PART_FACES`` faces), unwrapped by
    one xatlas process each in parallel, and each part's atlas is scaled into its own rectangle of
    the texture (area proportional to the part's surface, ``padding`` texels from its neighbours
    and the border). None = ``min(4, cpu count)``; 1 = one xatlas run on the whole mesh.

    ``time_budget``: seconds xatlas may take (None = no limit). xatlas runs in child processes
    (:mod:`mesh_renderer.xatlas_job`), killed past the budget; a part whose process is killed gets
    the :func:`grid_atlas` layout inside its rectangle (the whole texture when ``workers == 1``).
    """
    return start_unwrap(
        mesh, max_faces, tex_size, padding, max_iterations, max_chart_area_ratio, time_budget, workers
    ).result()


def start_unwrap(
    mesh: Mesh,
    max_faces: int = 100_000,
    tex_size: int = 1024,
    padding: int = 2,
    max_iterations: int = 1,
    max_chart_area_ratio: float = 0.005,
    time_budget: float | None = 3.0,
    workers: int | None = None,
) -> "UnwrapJob":
    """:func:`unwrap_uv` started: xatlas runs in child processes while the caller goes on.

    Decimates, splits and launches here; :meth:`UnwrapJob.result` waits (within ``time_budget``
    of the launch) and builds the mesh. No Python thread is involved, so the caller's thread is the
    only one making torch calls meanwhile (stage 1 captures CUDA graphs while xatlas runs).
    """
    t0 = time.perf_counter()
    src = mesh
    if len(mesh.f) > max_faces:
        v, f = decimate(mesh.v, mesh.f, max_faces)
        src = Mesh(v=v, f=f)
    t1 = time.perf_counter()
    k = default_workers() if workers is None else int(workers)
    k = max(1, min(k, len(src.f) // MIN_PART_FACES))
    job = UnwrapJob(mesh.device, src, tex_size, padding, time_budget, t1 - t0, whole=k == 1)
    try:
        if k == 1:
            job.launch_whole(max_iterations, max_chart_area_ratio)
        else:
            job.launch_parts(k, max_iterations, max_chart_area_ratio)
    except BaseException:
        job.close()
        raise
    return job


class UnwrapJob:
    """xatlas child processes for one mesh (from :func:`start_unwrap`); ``result()`` once, or ``close()``."""

    def __init__(
        self,
        device: torch.device,
        src: Mesh,
        tex_size: int,
        padding: int,
        time_budget: float | None,
        t_dec: float,
        whole: bool,
    ) -> None:
        self.device, self.src, self.tex_size, self.padding = device, src, tex_size, padding
        self.time_budget, self.t_dec, self.whole = time_budget, t_dec, whole
        self.tmp = tempfile.TemporaryDirectory(prefix="xatlas-")
        self.jobs: list[dict] = []
        self.t_launch = time.perf_counter()
        self.closed = False
        self._mesh: Mesh | None = None

    def launch_whole(self, max_iterations: int, max_chart_area_ratio: float) -> None:
        """One xatlas process on the whole mesh (``workers == 1``)."""
        src = self.src
        max_area = 0.0
        if max_chart_area_ratio > 0:
            fn = torch.linalg.cross(
                src.v[src.f[:, 1]] - src.v[src.f[:, 0]], src.v[src.f[:, 2]] - src.v[src.f[:, 0]]
            )
            max_area = float(fn.norm(dim=-1).sum() / 2) * max_chart_area_ratio
        src_path, dst_path = Path(self.tmp.name) / "in.npz", Path(self.tmp.name) / "out.npz"
        np.savez(
            src_path,
            v=src.v.detach().cpu().numpy().astype(np.float32),
            f=src.f.cpu().numpy().astype(np.uint32),
            tex_size=self.tex_size,
            padding=self.padding,
            max_iterations=max_iterations,
            max_chart_area=max_area,
        )
        self.t_launch = time.perf_counter()
        self.jobs.append({"dst": dst_path, "proc": _launch(src_path, dst_path)})

    def launch_parts(self, k: int, max_iterations: int, max_chart_area_ratio: float) -> None:
        """One xatlas process per spatial part (:func:`split_parts`), each packed for its rectangle."""
        tex_size, padding = self.tex_size, self.padding
        v_np = self.src.v.detach().cpu().numpy().astype(np.float64)
        f_np = self.src.f.cpu().numpy().astype(np.int64)
        areas = _face_areas(v_np, f_np)
        max_area = float(areas.sum()) * max_chart_area_ratio if max_chart_area_ratio > 0 else 0.0
        g = padding / tex_size
        self.t_launch = time.perf_counter()
        for i, (faces, (x0, y0, x1, y1)) in enumerate(split_parts(v_np, f_np, k)):
            rect = (x0 + g, y0 + g, x1 - g, y1 - g)  # 2 * padding texels between rectangles
            w, h = (rect[2] - rect[0]) * tex_size, (rect[3] - rect[1]) * tex_size
            # xatlas packs a square; scaled onto a w x h rectangle its short side shrinks by
            # sqrt(aspect), so the chart padding is widened by that much to stay >= padding texels.
            aspect = max(w / h, h / w)
            uniq, inv = np.unique(f_np[faces], return_inverse=True)
            src_path, dst_path = (
                Path(self.tmp.name) / f"part{i}.npz",
                Path(self.tmp.name) / f"part{i}_out.npz",
            )
            np.savez(
                src_path,
                v=v_np[uniq].astype(np.float32),
                f=inv.reshape(-1, 3).astype(np.uint32),
                tex_size=max(8, round(math.sqrt(w * h))),
                padding=math.ceil(padding * math.sqrt(aspect)),
                max_iterations=max_iterations,
                max_chart_area=max_area,
            )
            self.jobs.append(
                {
                    "faces": faces,
                    "verts": uniq,
                    "rect": rect,
                    "min_side": min(w, h),
                    "dst": dst_path,
                    "proc": _launch(src_path, dst_path),
                }
            )

    def result(self) -> Mesh:
        """Wait for the processes (killed past the budget), then the unwrapped mesh on the input's device.

        A second call returns the same mesh; a call after :meth:`close` (or after a failed
        ``result()``) raises, as the processes and their files are gone.
        """
        if self._mesh is not None:
            return self._mesh
        if self.closed:
            raise RuntimeError("UnwrapJob.result() after close(): its xatlas processes were stopped")
        try:
            deadline = None if self.time_budget is None else self.t_launch + self.time_budget
            for job in self.jobs:
                job["atlas"] = _collect(job["proc"], job["dst"], deadline)
        finally:
            self.close()
        t_uv = time.perf_counter() - self.t_launch
        if self.whole:
            self._mesh = _whole_mesh(
                self.src,
                self.jobs[0]["atlas"],
                self.tex_size,
                self.padding,
                self.time_budget,
                self.t_dec,
                t_uv,
            ).to(self.device)
        else:
            self._mesh = _assemble(self.src, self.jobs, self.padding, self.t_dec, t_uv).to(self.device)
        return self._mesh

    def close(self) -> None:
        """Kill any xatlas process still running and remove the temporary files (idempotent)."""
        self.closed = True
        for job in self.jobs:
            if job["proc"].poll() is None:
                job["proc"].kill()
                job["proc"].communicate()
        self.tmp.cleanup()


def prestart_workers(workers: int | None = None) -> None:
    """Start the xatlas processes a later :func:`start_unwrap` with ``workers`` will use (None = default).

    They import while the caller works (stage 1 calls this before its SIR loop), so the unwrap
    does not wait for process starts (:mod:`mesh_renderer.xatlas_pool`).
    """
    if _POOLED:
        xatlas_pool.prestart(default_workers() if workers is None else max(1, int(workers)))


def default_workers() -> int:
    """The default number of parallel xatlas parts: ``min(4, cpu count)``."""
    return max(1, min(4, os.cpu_count() or 1))


def split_parts(
    v: np.ndarray, f: np.ndarray, parts: int
) -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """Cut faces into ``parts`` spatially coherent parts and the unit UV square into their rectangles.

    ``v`` [N,3], ``f`` [F,3] -> ``parts`` tuples (sorted face indices, ``(x0, y0, x1, y1)`` in
    [0,1]). Recursive median cut of the face centroids along their longest extent: a node of ``k``
    parts gives ``round(n * (k // 2) / k)`` faces to its first child, so the counts differ by at most
    one per level. The UV square is cut along the same tree (across the rectangle's longer side) in
    the ratio of the two children's surface areas, so every rectangle's area is proportional to its
    part's surface (even texel density) and the rectangles tile the square. Connected components are
    not kept whole: the coarse mesh is one large component after ``clean_mesh``, and a cut through a
    component only adds a seam, while component-aware cuts would unbalance the parts.
    """
    cent = v[f].mean(axis=1)
    area = _face_areas(v, f)
    out: list[tuple[np.ndarray, tuple[float, float, float, float]]] = []

    def cut(idx: np.ndarray, k: int, rect: tuple[float, float, float, float]) -> None:
        if k == 1:
            out.append((np.sort(idx), rect))
            return
        c = cent[idx]
        axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
        order = idx[np.argsort(c[:, axis], kind="stable")]  # stable: ties keep index order (determinism)
        kl = k // 2
        m = round(len(idx) * kl / k)
        a_left, a_all = float(area[order[:m]].sum()), float(area[order].sum())
        t = a_left / a_all if a_all > 0 else kl / k
        x0, y0, x1, y1 = rect
        if x1 - x0 >= y1 - y0:
            xm = x0 + t * (x1 - x0)
            left, right = (x0, y0, xm, y1), (xm, y0, x1, y1)
        else:
            ym = y0 + t * (y1 - y0)
            left, right = (x0, y0, x1, ym), (x0, ym, x1, y1)
        cut(order[:m], kl, left)
        cut(order[m:], k - kl, right)

    cut(np.arange(len(f)), parts, (0.0, 0.0, 1.0, 1.0))
    return out


def _face_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Triangle areas ``[F]`` of ``v`` [N,3] / ``f`` [F,3] (float64)."""
    return np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) / 2


def _assemble(src: Mesh, jobs: list[dict], padding: int, t_dec: float, t_uv: float) -> Mesh:
    """One mesh from the parts' atlases, each scaled into its rectangle; faces in input order."""
    nf = len(src.f)
    f_np = src.f.cpu().numpy()
    vmaps, uvs_all = [], []
    f_out = np.zeros((nf, 3), dtype=np.int64)
    offset, charts, fallback = 0, 0, []
    for i, job in enumerate(jobs):
        faces, (x0, y0, x1, y1) = job["faces"], job["rect"]
        atlas = job["atlas"]
        if atlas is not None and len(atlas[1]) != len(faces):
            atlas = None  # xatlas dropped faces: keep every face with the grid layout
        if atlas is None:
            fallback.append(i)
            # grid cells inset by padding texels of the rectangle's short side (scale >= 1 both ways)
            uv = _grid_uvs(len(faces), max(1, round(job["min_side"])), padding).numpy().astype(np.float64)
            vmap = f_np[faces].reshape(-1)
            idx = np.arange(3 * len(faces)).reshape(-1, 3)
        else:
            vm, idx, uv, c = atlas
            vmap, idx, uv = job["verts"][vm.astype(np.int64)], idx.astype(np.int64), uv.astype(np.float64)
            charts += c
        uv = np.stack([x0 + uv[:, 0] * (x1 - x0), y0 + uv[:, 1] * (y1 - y0)], axis=1)
        f_out[faces] = idx + offset
        offset += len(vmap)
        vmaps.append(vmap)
        uvs_all.append(uv)
    vmap_t = torch.from_numpy(np.concatenate(vmaps)).to(src.device)
    f = torch.from_numpy(f_out).to(src.device)
    vt = torch.from_numpy(np.concatenate(uvs_all).astype(np.float32)).clamp(0, 1).to(src.device)
    if fallback:
        log.warning(
            "unwrap_uv: xatlas missed its time budget on parts %s of %d; grid atlas there",
            fallback,
            len(jobs),
        )
    log.info(
        "unwrap_uv: %d faces in %d parts (decimate %.2f s, xatlas %.2f s) -> %d vertices, %d charts",
        nf,
        len(jobs),
        t_dec,
        t_uv,
        len(vmap_t),
        charts,
    )
    return Mesh(v=src.v[vmap_t], f=f, vn=src.vn[vmap_t], vt=vt, ft=f)


def _whole_mesh(
    src: Mesh,
    atlas: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None,
    tex_size: int,
    padding: int,
    time_budget: float | None,
    t_dec: float,
    t_uv: float,
) -> Mesh:
    """The mesh of one whole-mesh xatlas run (``workers == 1``), the grid atlas when it was killed."""
    if atlas is None:
        log.warning(
            "unwrap_uv: xatlas took over %.1f s on this geometry (%d faces); using a per-face grid atlas",
            time_budget,
            len(src.f),
        )
        return grid_atlas(src, tex_size=tex_size, padding=padding)
    vmap, idx, uvs, charts = atlas
    vmap = torch.from_numpy(vmap.astype(np.int64)).to(src.device)
    f = torch.from_numpy(idx.astype(np.int64)).to(src.device)
    vt = torch.from_numpy(uvs.astype(np.float32)).to(src.device)
    out = Mesh(v=src.v[vmap], f=f, vn=src.vn[vmap], vt=vt, ft=f)
    log.info(
        "unwrap_uv: %d faces (decimate %.2f s, xatlas %.2f s) -> %d vertices, %d charts",
        len(f),
        t_dec,
        t_uv,
        len(vmap),
        charts,
    )
    return out


def _launch(src_path: Path, dst_path: Path):
    """Start the unwrap of ``src_path`` into ``dst_path``: on a warm :mod:`mesh_renderer.xatlas_pool` server.

    Returns a ``subprocess.Popen`` or a pool job with the same surface; without the pool
    (``_POOLED`` false: Windows) a one-shot :mod:`mesh_renderer.xatlas_job` process.
    """
    if _POOLED:
        return xatlas_pool.launch(src_path, dst_path)
    job = Path(__file__).with_name("xatlas_job.py")
    return subprocess.Popen(
        [sys.executable, str(job), str(src_path), str(dst_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _collect(
    proc: subprocess.Popen, dst_path: Path, deadline: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Wait for ``proc`` until ``deadline`` (perf_counter; None = forever): its atlas, or None (killed)."""
    timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
    if proc.poll() is not None:
        # Finished (maybe while an earlier part was awaited): collect it whatever time is left, as
        # communicate() with a timeout of 0 or a few microseconds raises TimeoutExpired even then.
        timeout = None
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"xatlas failed: {err.decode(errors='replace').strip()[-500:]}")
    with np.load(dst_path) as d:
        return d["vmap"], d["idx"], d["uvs"], int(d["charts"])


def grid_atlas(mesh: Mesh, tex_size: int = 1024, padding: int = 2) -> Mesh:
    """Every face its own UV triangle: faces in pairs, one pair per cell of an n x n grid.

    Returns a copy with split vertices (``v`` ``[3F,3]``, ``f == ft`` ``[F,3]``, ``vt`` in [0,1]^2).
    Face 2k fills the lower-left half of cell k and face 2k+1 the upper-right half, each inset by
    ``padding`` texels (of a ``tex_size`` texture) from the cell's border and from each other, so
    no texel is shared by two faces when the cells are at least ~3 * padding texels wide.
    """
    nf = len(mesh.f)
    vt = _grid_uvs(nf, tex_size, padding).to(mesh.device)
    f = torch.arange(3 * nf, device=mesh.device).reshape(nf, 3)
    flat = mesh.f.reshape(-1)
    return Mesh(v=mesh.v[flat], f=f, vn=mesh.vn[flat], vt=vt, ft=f)


def _grid_uvs(nf: int, tex_size: int, padding: int) -> torch.Tensor:
    """:func:`grid_atlas`' UVs ``[3*nf, 2]`` in [0,1]^2: corners of face k are rows 3k..3k+2."""
    n = max(1, math.ceil(math.sqrt(math.ceil(nf / 2))))
    cell = 1.0 / n
    p = min(padding / tex_size, cell / 8)
    k = torch.arange(nf) // 2
    x0 = (k % n).float() * cell
    y0 = (k // n).float() * cell
    x1, y1 = x0 + cell, y0 + cell
    lower = torch.stack(
        [
            torch.stack([x0 + p, y0 + p], -1),
            torch.stack([x1 - 2 * p, y0 + p], -1),
            torch.stack([x0 + p, y1 - 2 * p], -1),
        ],
        1,
    )
    upper = torch.stack(
        [
            torch.stack([x1 - p, y1 - p], -1),
            torch.stack([x0 + 2 * p, y1 - p], -1),
            torch.stack([x1 - p, y0 + 2 * p], -1),
        ],
        1,
    )
    odd = (torch.arange(nf) % 2 == 1)[:, None, None]
    return torch.where(odd, upper, lower).reshape(-1, 2)
