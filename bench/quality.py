"""Oracle reconstruction benchmark: how well do both stages rebuild a known object?

For every reference mesh (default: all ``.obj``/``.glb``/``.gltf`` in ``../shared/data/meshes``) both
stages run in this process as library calls (``run_stage1``/``run_stage2``) with
``guidance=oracle oracle.mesh=<file>``: the oracle denoiser (the reference mesh rendered at the
requested cameras is the model's x0) is built once per mesh and shared by the two stages. Then the
final ``.glb`` is re-loaded from disk and compared with the reference, i.e. the oracle's mesh
normalised to a bounding box centred at the origin with largest side 1.0, which is the world
frame our outputs live in:

* PSNR and SSIM (mean over views) at the 8 evaluation views, elevation 0 and azimuths
  0, 45, ..., 315, and at 8 views at elevation 30 **from above** (``elevation=-30`` in the
  project's sign convention, where negative elevation puts the camera above the object; see
  ``core/cameras.py``). Renders are ``--eval-size`` (256) pixels on white, with the config's
  ``cameras.radius``/``cameras.fovy`` and ``render.mesh_backend``; the reference is rendered by
  the oracle itself (its texture, or its procedural colour field for geometry-only meshes).
  The same figures are computed for the coarse stage-1 mesh (``<name>_mesh.glb``) for comparison.
* Silhouette IoU of the alpha masks at those 16 views (coarse and final).
* Chamfer-L1 and F-score at 1% and 2% of the reference bounding-box diagonal, from 20k surface
  samples per mesh, for the coarse mesh and the re-loaded final mesh (stage 2 keeps the geometry,
  so the two agree up to sampling; both are reported as a check).

A mesh that fails is reported (status, error, traceback in the JSON) and the run goes on.
Prints a table and writes JSON (device, versions, commit, config, per-mesh figures and seconds,
means over the meshes that succeeded) to ``--out`` (default
``bench/results/quality_<device>.json``), rewritten atomically after every mesh.

    python bench/quality.py                                        # full sizes (configs/image.yaml), GPU
    python bench/quality.py --config configs/oracle_cpu.yaml --out bench/results/quality_cpu.json
    python bench/quality.py ../shared/data/meshes/spot.obj sir.iters=5 --workdir /tmp/q   # keep outputs
    python bench/stress_meshes.py /tmp/stress && python bench/quality.py /tmp/stress ../shared/data/meshes

The means also give issue 15's criteria: ``stage1_max_over_median`` (render cost independent of
the object), ``min_iou`` (worst silhouette IoU at either elevation), ``min_fscore@0.01``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import re
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("microdreamer.quality")

DEFAULT_MESHES = ROOT.parent / "shared" / "data" / "meshes"
MESH_EXTS = (".obj", ".glb", ".gltf")
EVAL_ELEVATIONS = {"e0": 0.0, "e30": -30.0}  # -30 = 30 degrees above the object (our sign convention)
EVAL_AZIMUTHS = [45.0 * i for i in range(8)]
FSCORE_THRESHOLDS = (0.01, 0.02)
WHITE = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------- inputs
def collect_meshes(paths: list[str]) -> list[Path]:
    """Mesh files from files and folders (folders: their .obj/.glb/.gltf, sorted by name)."""
    out: list[Path] = []
    for p in [Path(x) for x in paths] or [DEFAULT_MESHES]:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in MESH_EXTS and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"error: no such mesh file or folder: {p}")
    if not out:
        raise SystemExit(
            f"error: no {'/'.join(MESH_EXTS)} meshes found in {', '.join(paths) or DEFAULT_MESHES}"
        )
    names = [m.stem for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SystemExit(f"error: several meshes share the name(s) {', '.join(dup)}; outputs would collide")
    return out


def mesh_config(config: str, overrides: list[str], mesh: Path, outdir: Path, quiet: bool):
    """The stage config for one mesh: the file, the user's overrides, then the oracle keys."""
    from pipeline import load_config

    argv = [
        "--config",
        config,
        *overrides,
        "guidance=oracle",
        f"oracle.mesh={mesh.resolve()}",
        "input=",
        f"outdir={outdir}",
        f"save_path={mesh.stem}",
    ]
    if quiet:
        argv.append("quiet=true")
    return load_config(argv)


# ---------------------------------------------------------------------------------------- metrics
def eval_cameras(cfg, size: int, device: torch.device) -> dict:
    """``{"e0": Cameras, "e30": Cameras}``: 8 azimuths each, the config's radius and fovy."""
    from core.cameras import orbit_cameras

    az = torch.tensor(EVAL_AZIMUTHS)
    return {
        k: orbit_cameras(
            torch.full_like(az, e), az, cfg.cameras.radius, cfg.cameras.fovy, size, device=device
        )
        for k, e in EVAL_ELEVATIONS.items()
    }


def image_metrics(mesh, cams: dict, refs: dict, backend: str) -> dict:
    """PSNR/SSIM (means over views, plus per-view PSNR) and silhouette IoU of ``mesh`` vs ``refs``."""
    from core.metrics import psnr, ssim
    from mesh_renderer import render

    mesh = mesh.to(next(iter(cams.values())).c2w.device)
    out: dict[str, Any] = {}
    with torch.no_grad():
        for k, c in cams.items():
            r = render(mesh, c, torch.tensor(WHITE, device=c.c2w.device), backend=backend)
            rgb, alpha = r.rgb.float().clamp(0, 1), r.alpha.float()
            ref_rgb, ref_alpha = refs[k]
            per_view = [psnr(rgb[i], ref_rgb[i]) for i in range(len(rgb))]
            out[f"psnr_{k}"] = float(np.mean(per_view))
            out[f"ssim_{k}"] = ssim(rgb, ref_rgb)
            out[f"psnr_{k}_views"] = [round(p, 3) for p in per_view]
            a, b = alpha > 0.5, ref_alpha > 0.5
            out[f"iou_{k}"] = float((a & b).sum() / (a | b).sum().clamp_min(1))
    return out


def baselines(refs: dict) -> dict:
    """PSNR of trivial answers, to read the figures against: an empty (all-white) render, and the
    exact silhouette filled with the view's mean object colour (perfect geometry, no texture)."""
    from core.metrics import psnr

    out = {}
    for k, (rgb, alpha) in refs.items():
        m = (alpha > 0.5).float()
        mean = (rgb * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
        flat = m * mean + (1 - m)
        out[f"psnr_{k}_empty"] = float(
            np.mean([psnr(torch.ones_like(rgb[i]), rgb[i]) for i in range(len(rgb))])
        )
        out[f"psnr_{k}_flat"] = float(np.mean([psnr(flat[i], rgb[i]) for i in range(len(rgb))]))
    return out


def geometry_metrics(mesh, ref, n: int, seed: int) -> dict:
    """Chamfer-L1 and F-scores of ``mesh`` vs ``ref`` (both in the normalised world frame)."""
    from core.metrics import chamfer_fscore

    if mesh.f.shape[0] == 0:
        return {"chamfer_l1": float("nan"), **{f"fscore@{t:g}": 0.0 for t in FSCORE_THRESHOLDS}}
    return chamfer_fscore(
        mesh.v.detach().cpu().double().numpy(),
        mesh.f.cpu().numpy(),
        ref.v.detach().cpu().double().numpy(),
        ref.f.cpu().numpy(),
        n=n,
        thresholds=FSCORE_THRESHOLDS,
        seed=seed,
    )


def _total(seconds: dict | None) -> float:
    return round(float(sum((seconds or {}).values())), 3)


def run_one(
    mesh_path: Path,
    config: str,
    overrides: list[str],
    outdir: Path,
    eval_size: int,
    samples: int,
    quiet: bool,
) -> dict:
    """Both stages on one reference mesh, then the metrics; returns the mesh's record."""
    from core.device import resolve_device
    from guidance import load_denoiser
    from mesh_renderer import load_mesh
    from pipeline import run_stage1, run_stage2

    rec: dict[str, Any] = {"name": mesh_path.stem, "mesh": str(mesh_path), "status": "failed"}
    t0 = time.perf_counter()
    cfg = mesh_config(config, overrides, mesh_path, outdir, quiet)
    device = resolve_device(cfg.device)
    t = time.perf_counter()
    denoiser = load_denoiser(cfg, device)
    rec["seconds_load"] = round(time.perf_counter() - t, 3)
    ref = denoiser.mesh
    rec["reference"] = {
        "vertices": int(ref.v.shape[0]),
        "faces": int(ref.f.shape[0]),
        "textured": denoiser.textured,
    }

    t = time.perf_counter()
    r1 = run_stage1(cfg, denoiser)
    rec["seconds_stage1"] = round(time.perf_counter() - t, 3)
    rec["seconds_stage1_phases"] = r1.get("seconds")
    rec["nfe_stage1"] = r1.get("nfe")
    rec["num_gaussians"] = r1.get("num_gaussians")
    rec["coarse_mesh"] = r1.get("mesh")
    if "mesh" not in r1.get("outputs", {}):
        raise RuntimeError(f"stage 1 wrote no coarse mesh ({r1.get('mesh')}): the Gaussians have no surface")
    t = time.perf_counter()
    r2 = run_stage2(cfg, denoiser)
    rec["seconds_stage2"] = round(time.perf_counter() - t, 3)
    rec["seconds_stage2_phases"] = r2.get("seconds")
    rec["nfe_stage2"] = r2.get("nfe")
    rec["outputs"] = {
        "coarse": r1["outputs"]["mesh"],
        "final": r2["outputs"]["glb"],
        "preview_stage1": r1["outputs"].get("preview"),
        "preview_final": r2["outputs"].get("preview"),
    }

    t = time.perf_counter()
    cams = eval_cameras(cfg, eval_size, device)
    refs = {k: denoiser.render(c, eval_size) for k, c in cams.items()}
    coarse = load_mesh(r1["outputs"]["mesh"])
    final = load_mesh(r2["outputs"]["glb"])  # re-loaded from disk: what a user gets
    rec["final_mesh"] = {
        "vertices": int(final.v.shape[0]),
        "faces": int(final.f.shape[0]),
        "texture": list(final.albedo.shape[:2]) if final.albedo is not None else None,
    }
    backend = cfg.render.mesh_backend
    geo_coarse = geometry_metrics(coarse, ref, samples, cfg.seed)
    # Stage 2 refines the texture only: when the re-loaded geometry is the coarse one (the usual
    # case) its Chamfer/F-score are the same numbers, so they are not sampled twice (slow on CPU).
    same = (
        coarse.v.shape == final.v.shape
        and coarse.f.shape == final.f.shape
        and bool(torch.equal(coarse.f, final.f))
        and bool(torch.allclose(coarse.v, final.v, atol=1e-6))
    )
    rec["final_geometry_same_as_coarse"] = same
    geo_final = dict(geo_coarse) if same else geometry_metrics(final, ref, samples, cfg.seed)
    rec["coarse"] = {**image_metrics(coarse, cams, refs, backend), **geo_coarse}
    rec["final"] = {**image_metrics(final, cams, refs, backend), **geo_final}
    rec["baselines"] = baselines(refs)
    rec["seconds_eval"] = round(time.perf_counter() - t, 3)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["status"] = "ok"
    del denoiser
    return rec


# ---------------------------------------------------------------------------------------- report
SUMMARY_KEYS = [
    "psnr_e0",
    "ssim_e0",
    "psnr_e30",
    "ssim_e30",
    "iou_e0",
    "iou_e30",
    "chamfer_l1",
    *[f"fscore@{t:g}" for t in FSCORE_THRESHOLDS],
]


def means(records: list[dict]) -> dict:
    """Means over the meshes that succeeded (None when none did)."""
    ok = [r for r in records if r.get("status") == "ok"]
    out: dict[str, Any] = {
        "meshes_ok": len(ok),
        "meshes_failed": sum(r.get("status") == "failed" for r in records),
    }
    for part in ("coarse", "final"):
        out[part] = {k: (float(np.mean([r[part][k] for r in ok])) if ok else None) for k in SUMMARY_KEYS}
    out["baselines"] = {
        k: float(np.mean([r["baselines"][k] for r in ok])) for k in (ok[0]["baselines"] if ok else [])
    }
    for k in ("seconds_stage1", "seconds_stage2", "seconds"):
        out[k] = float(np.mean([r[k] for r in ok])) if ok else None
    # Issue 15's render-cost criterion: no object's stage 1 longer than 1.5x the median object's.
    s1 = [r["seconds_stage1"] for r in ok]
    out["seconds_stage1_median"] = float(np.median(s1)) if ok else None
    out["stage1_max_over_median"] = float(max(s1) / max(np.median(s1), 1e-9)) if ok else None
    out["min_iou"] = min((min(r["final"]["iou_e0"], r["final"]["iou_e30"]) for r in ok), default=None)
    out["min_fscore@0.01"] = min((r["coarse"]["fscore@0.01"] for r in ok), default=None)
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({name}, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU name in lower case without the vendor (``h100_80gb_hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    name = re.sub(r"^nvidia\s+", "", torch.cuda.get_device_name(device).lower())
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "cuda"


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_table(records: list[dict], summary: dict) -> str:
    """Plain-text table: one row per mesh (coarse | final), then the means."""
    cols = [
        ("mesh", 13),
        ("flat0", 7),
        ("PSNR0 c", 8),
        ("PSNR0 f", 8),
        ("SSIM0 f", 8),
        ("PSNR30 c", 9),
        ("PSNR30 f", 9),
        ("SSIM30 f", 9),
        ("IoU0 f", 7),
        ("IoU30 f", 8),
        ("CD-L1 c", 8),
        ("F@1% c", 7),
        ("F@2% c", 7),
        ("CD-L1 f", 8),
        ("F@2% f", 7),
        ("s1 s", 7),
        ("s2 s", 7),
    ]
    head = "".join(f"{n:>{w}}" if i else f"{n:<{w}}" for i, (n, w) in enumerate(cols))
    lines = [head, "-" * len(head)]

    def row(name: str, c: dict, f: dict, b: dict, s1: Any, s2: Any) -> str:
        vals = [
            _fmt(b.get("psnr_e0_flat"), 2),
            _fmt(c.get("psnr_e0"), 2),
            _fmt(f.get("psnr_e0"), 2),
            _fmt(f.get("ssim_e0"), 3),
            _fmt(c.get("psnr_e30"), 2),
            _fmt(f.get("psnr_e30"), 2),
            _fmt(f.get("ssim_e30"), 3),
            _fmt(f.get("iou_e0"), 3),
            _fmt(f.get("iou_e30"), 3),
            _fmt(c.get("chamfer_l1"), 4),
            _fmt(c.get("fscore@0.01"), 3),
            _fmt(c.get("fscore@0.02"), 3),
            _fmt(f.get("chamfer_l1"), 4),
            _fmt(f.get("fscore@0.02"), 3),
            _fmt(s1, 1),
            _fmt(s2, 1),
        ]
        return f"{name[: cols[0][1] - 1]:<{cols[0][1]}}" + "".join(
            f"{v:>{w}}" for v, (_, w) in zip(vals, cols[1:])
        )

    for r in records:
        if r.get("status") == "ok":
            lines.append(
                row(
                    r["name"],
                    r["coarse"],
                    r["final"],
                    r.get("baselines", {}),
                    r.get("seconds_stage1"),
                    r.get("seconds_stage2"),
                )
            )
        else:
            lines.append(f"{r['name'][:12]:<13}FAILED: {r.get('error', '?')}"[: len(head)])
    if summary["meshes_ok"]:
        lines.append("-" * len(head))
        lines.append(
            row(
                f"mean ({summary['meshes_ok']})",
                summary["coarse"],
                summary["final"],
                summary.get("baselines", {}),
                summary["seconds_stage1"],
                summary["seconds_stage2"],
            )
        )
    return "\n".join(lines)


def write_json(path: Path, result: dict) -> None:
    from core.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2, default=str, allow_nan=True))


# ---------------------------------------------------------------------------------------- main
def run_benchmark(
    meshes: list[Path],
    config: str,
    overrides: list[str],
    out: Path | None = None,
    workdir: Path | None = None,
    eval_size: int = 256,
    samples: int = 20000,
    quiet: bool = True,
    warmup: bool | None = None,
) -> dict:
    """Run the benchmark over ``meshes``; returns the result dict (also written to ``out``).

    ``warmup`` (default: on CUDA) first runs the first mesh once, untimed and unrecorded, so the
    per-object stage-1 times (``stage1_max_over_median``) do not charge the first object with the
    process's one-off costs (CUDA-graph captures, first kernel calls).
    """
    from omegaconf import OmegaConf

    from core.device import resolve_device
    from pipeline.reports import git_commit, versions

    base = mesh_config(
        config, overrides, meshes[0], Path(workdir or "."), quiet
    )  # validates the overrides once
    device = resolve_device(base.device)
    if out is None:
        out = ROOT / "bench" / "results" / f"quality_{device_slug(device)}.json"
    result: dict[str, Any] = {
        "benchmark": "oracle reconstruction (bench/quality.py)",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "versions": versions(),
        "commit": git_commit(),
        "config_path": str(config),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(base, resolve=True),
        "config_note": "resolved for the first mesh; oracle.mesh, save_path and outdir are set per mesh",
        "eval": {
            "size": eval_size,
            "background": "white",
            "azimuths": EVAL_AZIMUTHS,
            "elevations": {k: v for k, v in EVAL_ELEVATIONS.items()},
            "elevation_convention": "negative = camera above the object; e30 is elevation=-30 (from above)",
            "radius": float(base.cameras.radius),
            "fovy": float(base.cameras.fovy),
            "mesh_backend": str(base.render.mesh_backend),
            "surface_samples": samples,
            "psnr": "mean over the 8 views of each view's PSNR (whole image, white background)",
            "ssim": "mean over the 8 views (11 px Gaussian window)",
            "iou": "silhouette IoU of alpha > 0.5",
            "fscore_thresholds": "fraction of the reference bbox diagonal",
            "reference": "oracle mesh normalised (bbox centred at origin, largest side 1.0)",
        },
        "meshes": [],
    }
    records: list[dict] = result["meshes"]
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="quality_")
        workdir = Path(tmp.name)
    if warmup is None:
        warmup = device.type == "cuda"
    result["warmup"] = bool(warmup)
    if warmup:
        print(f"[warm-up] {meshes[0].name} (untimed) ...", file=sys.stderr, flush=True)
        try:
            run_one(meshes[0], config, overrides, Path(workdir) / "_warmup", eval_size, 1000, quiet)
        except Exception as e:  # the timed run of that mesh reports it
            print(f"[warm-up] failed ({type(e).__name__}); going on", file=sys.stderr, flush=True)
    t_all = time.perf_counter()
    try:
        for i, mesh in enumerate(meshes):
            print(f"[{i + 1}/{len(meshes)}] {mesh.name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            try:
                rec = run_one(mesh, config, overrides, Path(workdir) / mesh.stem, eval_size, samples, quiet)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                rec = {
                    "name": mesh.stem,
                    "mesh": str(mesh),
                    "status": "failed",
                    "error": f"{type(e).__name__}: {first}" if first else type(e).__name__,
                    "traceback": traceback.format_exc(),
                    "seconds": round(time.perf_counter() - t, 3),
                }
                print(
                    f"[{i + 1}/{len(meshes)}] {mesh.name} FAILED: {rec['error']}", file=sys.stderr, flush=True
                )
            else:
                f = rec["final"]
                print(
                    f"[{i + 1}/{len(meshes)}] {mesh.name}: final PSNR e0 {f['psnr_e0']:.2f} dB, e30 "
                    f"{f['psnr_e30']:.2f} dB, CD-L1 {f['chamfer_l1']:.4f}, F@2% {f['fscore@0.02']:.3f} "
                    f"({rec['seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            if device.type == "cuda":
                torch.cuda.empty_cache()
            records.append(rec)
            result["means"] = means(records)
            result["seconds_total"] = round(time.perf_counter() - t_all, 3)
            write_json(out, result)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["means"] = means(records)
    result["seconds_total"] = round(time.perf_counter() - t_all, 3)
    result["table"] = format_table(records, result["means"])
    write_json(out, result)
    result["out"] = str(out)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/quality.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [meshes or folders ...] [--config FILE] [--out JSON] [--workdir DIR] [key=value ...]",
    )
    ap.add_argument(
        "--config",
        default=str(ROOT / "configs" / "image.yaml"),
        help="stage config (default configs/image.yaml, full sizes; configs/oracle_cpu.yaml for CPU)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON output (default bench/results/quality_<device>.json)"
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep each mesh's outputs (.ply, meshes, previews) in DIR/<name>/ (default: a temp dir, deleted)",
    )
    ap.add_argument(
        "--eval-size", type=int, default=256, help="evaluation render size in pixels (default 256)"
    )
    ap.add_argument("--samples", type=int, default=20000, help="surface samples per mesh for Chamfer/F-score")
    ap.add_argument("--verbose", action="store_true", help="show the stages' progress and info logs")
    ap.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the first mesh once untimed first (default: on CUDA)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    from core.errors import exit_code
    from pipeline.cli import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    paths = [a for a in rest if a not in overrides]
    bad = [a for a in paths if a.startswith("-")]
    if bad:
        ap.error(f"unknown option(s): {' '.join(bad)}")
    setup_logging(quiet=not args.verbose)

    def body() -> int:
        meshes = collect_meshes(paths)
        result = run_benchmark(
            meshes,
            args.config,
            overrides,
            out=args.out,
            workdir=args.workdir,
            eval_size=args.eval_size,
            samples=args.samples,
            quiet=not args.verbose,
            warmup=args.warmup,
        )
        print(
            f"\noracle reconstruction on {result['device_name']} (config {args.config}"
            f"{', ' + ' '.join(overrides) if overrides else ''}); views {args.eval_size} px on white; "
            f"c = coarse stage-1 mesh, f = final .glb; 0 = elevation 0, 30 = 30 deg from above (elevation=-30); "
            f"flat0 = PSNR of the exact silhouette filled with the mean colour (a no-texture baseline)"
        )
        print(result["table"])
        print(f"\nwrote {result['out']} ({result['seconds_total']:.0f} s)")
        return 0 if result["means"]["meshes_failed"] == 0 else 1

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
