"""Benchmark the Gaussian renderer (both backends) and the density-mesh extraction.

Times one forward+backward of 6 views (default 256 px) for several Gaussian counts, with the
paper's ball initialisation, plus the 2k x 6 x 64 px case that the CPU reference targets, and
``extract_density_mesh`` at 128^3. Prints a table and writes every figure to JSON.

    python bench/bench_gs.py [--device cuda] [--sizes 5000 20000 100000] [--out bench/results/gs_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from core.cameras import orbit_cameras
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS
from gs_renderer import GaussianModel, extract_density_mesh, gsplat_available, render


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_render(model, cams, backend: str, reps: int) -> dict:
    """Best and median seconds of forward, and of forward+backward, over ``reps`` runs."""
    dev = model.device
    bg = torch.ones(3, device=dev)
    fwd, total = [], []
    for i in range(reps + 1):  # first run is warm-up (kernels, allocator, caches)
        for t in model.parameters().values():
            t.grad = None
        _sync(dev)
        t0 = time.perf_counter()
        out = render(model, cams, bg, backend=backend, need_means2d=True)
        _sync(dev)
        t1 = time.perf_counter()
        (out.rgb.sum() + out.alpha.sum()).backward()
        _sync(dev)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    fwd.sort()
    total.sort()
    res = {
        "fwd_best_s": fwd[0],
        "fwd_median_s": fwd[len(fwd) // 2],
        "fwd_bwd_best_s": total[0],
        "fwd_bwd_median_s": total[len(total) // 2],
    }
    if dev.type == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results dict (also written to ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 100000])
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--torch-max",
        type=int,
        default=None,
        help="largest N for the reference backend (default 20000 on CUDA, 5000 on CPU)",
    )
    ap.add_argument("--mesh-res", type=int, default=128)
    ap.add_argument("--out", default="bench/results/gs_bench.json")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch_max = args.torch_max if args.torch_max is not None else (20000 if dev.type == "cuda" else 5000)
    backends = ["torch"] + (["gsplat"] if dev.type == "cuda" and gsplat_available() else [])

    info = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        # OpenMP spin-waiting makes CPU runs on a shared/loaded box several times slower.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }
    try:
        import gsplat

        info["gsplat"] = gsplat.__version__
    except Exception as e:  # report, do not fail
        info["gsplat"] = f"unavailable ({type(e).__name__})"
    rows = []
    azim = [i * 360.0 / args.views - 180 for i in range(args.views)]
    elev = [(-15.0 if i % 2 else 10.0) for i in range(args.views)]

    cases = [(2000, 64, "reference target (2k x 6 x 64 px)")] + [(n, args.res, "") for n in args.sizes]
    for n, res, note in cases:
        model = GaussianModel.init_ball(n, seed=0, device=dev)
        cams = orbit_cameras(elev, azim, radius=DEFAULT_RADIUS, fovy=DEFAULT_FOVY, height=res, device=dev)
        for backend in backends:
            row = {"backend": backend, "n": n, "res": res, "views": args.views, "note": note}
            if backend == "torch" and n > torch_max:
                row["skipped"] = f"reference backend skipped above N={torch_max} (too slow / memory)"
            else:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                row.update(time_render(model, cams, backend, args.reps))
            rows.append(row)
            print(_fmt(row), flush=True)
        if res == args.res:
            _sync(dev)
            t0 = time.perf_counter()
            v, f = extract_density_mesh(model, resolution=args.mesh_res, density_thresh=0.2)
            _sync(dev)
            row = {
                "backend": "extract",
                "n": n,
                "res": args.mesh_res,
                "seconds": time.perf_counter() - t0,
                "vertices": int(v.shape[0]),
                "faces": int(f.shape[0]),
                "note": "init ball (opacity 0.1), not a trained object",
            }
            rows.append(row)
            print(_fmt(row), flush=True)
    result = {"info": info, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def _fmt(row: dict) -> str:
    head = f"{row['backend']:>8} N={row['n']:>6} res={row['res']:>4}"
    if "skipped" in row:
        return f"{head}  skipped: {row['skipped']}"
    if row["backend"] == "extract":
        return f"{head}  {row['seconds'] * 1e3:9.1f} ms  {row['faces']} faces"
    mem = f"  peak {row['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in row else ""
    return (
        f"{head}  fwd {row['fwd_best_s'] * 1e3:8.1f} ms  fwd+bwd {row['fwd_bwd_best_s'] * 1e3:8.1f} ms "
        f"(median {row['fwd_bwd_median_s'] * 1e3:.1f}){mem}  {row['note']}"
    )


if __name__ == "__main__":
    main()
