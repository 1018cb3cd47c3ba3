"""Benchmark the mesh side of the pipeline on a marching-cubes-like mesh.

Times: marching cubes of a bumpy blob (PyMCubes, else scikit-image), clean_mesh, decimate to --faces, UV unwrap
(xatlas), 26-view bake at --bake-res into a --tex texture, .glb/.obj export, and 8-view --res
rendering (rasterise once, then shade forward+backward as stage 2 does) for every backend that
runs on the device. Prints a table and writes all figures (+ device and versions) as JSON to --out.

    python bench/bench_mesh.py --out bench/results/mesh_cpu.json            # CPU, small defaults ok
    python bench/bench_mesh.py --device cuda --out bench/results/mesh_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.cameras import orbit_cameras
from mesh_renderer import Mesh, composite, interpolate, rasterize, save_mesh, shade
from mesh_renderer.bake import bake_cameras, bake_texture
from mesh_renderer.ops import clean_mesh, decimate
from mesh_renderer.raster import nvdiffrast_available
from mesh_renderer.uv import unwrap_uv


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int = 1, warmup: int = 0):
    """(result of the last call, mean seconds per call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    sync(device)
    return out, (time.perf_counter() - t) / reps


def blob_volume(res: int, seed: int = 0) -> np.ndarray:
    """Density of a bumpy blob with a few lobes on [-1,1]^3 (what a Gaussian density grid looks like)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, res, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    d = np.zeros_like(X)
    for _ in range(12):
        c = rng.uniform(-0.45, 0.45, 3)
        s = rng.uniform(0.15, 0.35)
        d += np.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * s * s))
    # High-frequency bumps: marching cubes then yields the irregular small triangles of real runs.
    d += 0.08 * np.sin(23 * X) * np.sin(19 * Y) * np.sin(21 * Z)
    return d


def marching_cubes(vol: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes (the project's dependency) or scikit-image; faces wound outwards (positive volume)."""
    try:
        import mcubes

        v, f = mcubes.marching_cubes(vol, level)
    except ImportError:
        from skimage.measure import marching_cubes as mc

        v, f, _, _ = mc(vol, level=level)
    f = np.asarray(f, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    if np.einsum("ij,ij->i", a, np.cross(b, c)).sum() < 0:  # inward winding: flip
        f = f[:, ::-1].copy()
    return np.asarray(v, dtype=np.float32), f


def procedural_colors(v: torch.Tensor) -> torch.Tensor:
    """Smooth hues plus a finer pattern per vertex, ``[N,3]`` in [0,1]."""
    return (
        0.5
        + 0.35 * torch.sin(torch.stack([3 * v[:, 0] + 1, 4 * v[:, 1] + 2, 5 * v[:, 2] + 3], -1))
        + 0.15 * torch.sin(20 * v.sum(-1, keepdim=True))
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=50_000, help="face budget after decimation")
    ap.add_argument("--grid", type=int, default=160, help="marching-cubes grid resolution")
    ap.add_argument("--tex", type=int, default=1024, help="texture size for unwrap and bake")
    ap.add_argument("--bake-res", type=int, default=512, help="bake view resolution (26 views)")
    ap.add_argument("--res", type=int, default=512, help="render resolution")
    ap.add_argument("--views", type=int, default=8, help="views per render call")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of the render")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    res: dict = {"device": str(device), "args": {k: str(v) for k, v in vars(args).items()}}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    times: dict[str, float] = {}

    vol = blob_volume(args.grid)
    marching_cubes(blob_volume(8), 0.5)  # warm-up: keep library import time out of the figure
    t = time.perf_counter()
    v, f = marching_cubes(vol, 0.5)
    times["marching_cubes_s"] = time.perf_counter() - t
    v = v / (args.grid - 1) * 2 - 1
    res["mc_faces"] = len(f)
    (v, f), times["clean_mesh_s"] = timed(lambda: clean_mesh(v, f), torch.device("cpu"))
    res["clean_faces"] = len(f)
    (v, f), times["decimate_s"] = timed(lambda: decimate(v, f, args.faces), torch.device("cpu"))
    mesh = Mesh(v=v, f=f).normalized(1.0)
    res["faces"], res["vertices"] = len(mesh.f), len(mesh.v)

    uv, times["unwrap_uv_s"] = timed(lambda: unwrap_uv(mesh, tex_size=args.tex), torch.device("cpu"))
    res["uv_vertices"] = len(uv.v)
    uv = uv.to(device)

    bcams = bake_cameras(args.bake_res, device=device)
    with torch.no_grad():
        r = rasterize(uv, bcams)
        src = composite(r, interpolate(r, procedural_colors(uv.v), uv.f), bg=1.0)
    albedo, times["bake_s"] = timed(
        lambda: bake_texture(uv, bcams, src.rgb, src.alpha, tex_size=args.tex), device
    )
    textured = uv.with_albedo(albedo)
    with torch.no_grad():
        rec = shade(r, albedo, bg=1.0)
    res["bake_psnr_db"] = float(-10 * torch.log10(((rec.rgb - src.rgb) ** 2).mean()))

    with tempfile.TemporaryDirectory() as tmp:
        _, times["export_glb_s"] = timed(
            lambda: save_mesh(textured, Path(tmp) / "m.glb"), torch.device("cpu")
        )
        _, times["export_obj_s"] = timed(
            lambda: save_mesh(textured, Path(tmp) / "m.obj"), torch.device("cpu")
        )
        res["glb_bytes"] = (Path(tmp) / "m.glb").stat().st_size

    cams = orbit_cameras(
        [0] * args.views,
        np.linspace(-180, 180, args.views, endpoint=False),
        2.0,
        height=args.res,
        device=device,
    )
    backends = ["torch"] + (["nvdiffrast"] if device.type == "cuda" and nvdiffrast_available(device) else [])
    res["render"] = {}
    for backend in backends:
        raster, t_r = timed(
            lambda b=backend: rasterize(textured, cams, backend=b), device, reps=args.reps, warmup=1
        )
        raw = torch.logit(albedo.clamp(1e-3, 1 - 1e-3)).requires_grad_(True)

        def step(raster=raster, raw=raw):
            out = shade(raster, raw, bg=1.0, activation="sigmoid")
            out.rgb.mean().backward()
            return out

        _, t_s = timed(step, device, reps=args.reps, warmup=1)
        res["render"][backend] = {"rasterize_s": t_r, "shade_fwd_bwd_s": t_s}
    res["times"] = times
    res["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for mod in ["xatlas", "fast_simplification", "trimesh", "pygltflib", "mcubes", "skimage", "nvdiffrast"]:
        with contextlib.suppress(Exception):  # optional packages
            res["versions"][mod] = getattr(__import__(mod), "__version__", "?")
    res["cpu_threads"] = torch.get_num_threads()

    print(
        f"\nmesh benchmark on {res.get('gpu', device)}: MC {res['mc_faces']} -> clean {res['clean_faces']} "
        f"-> {res['faces']} faces, tex {args.tex}, bake {args.bake_res}px x26, render {args.views}x{args.res}px"
    )
    print(f"{'phase':<28}{'seconds':>10}")
    for k, val in times.items():
        print(f"{k:<28}{val:>10.3f}")
    for b, d in res["render"].items():
        for k, val in d.items():
            print(f"{b + ' ' + k:<28}{val:>10.4f}")
    print(f"{'bake PSNR (dB)':<28}{res['bake_psnr_db']:>10.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
