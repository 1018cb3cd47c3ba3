"""Speed benchmark: input image (or prompt) -> stage 1 -> coarse mesh -> stage 2 -> .glb, on one GPU.

    python bench/speed.py [--guidance zero123|imagedream|mvdream] [--repeat 3] [--out bench/results/speed_<gpu>.json]
    python bench/speed.py --guidance mvdream --size tiny --repeat 1   # CPU smoke run of the same path

``--guidance mvdream`` is text to 3D (``configs/text.yaml``, ``--prompt``): no input image.
``--size tiny`` builds the tiny random model instead and shrinks the schedule to CPU seconds
(works without a GPU); the figures then only show that the path runs.

The networks are the FULL-SIZE Stable Zero123 architecture built from its real configs with random
weights (the cost of a network call does not depend on its weights), run at the paper schedule of
``configs/image.yaml``. Random weights turn the Gaussians into a noise cloud, so, as the issue asks,
mesh extraction / UV unwrap / baking are timed on real geometry from the oracle teacher
(``--oracle-mesh``), and stage 2 runs the random-weight network on that real coarse mesh:

    total = stage-1 SIR loop (zero123) + coarse-mesh export (oracle geometry) + stage 2 (zero123)

``--geometry model`` instead exports the random-weight network's own stage-1 result and runs stage
2 on that mesh: the same work as a user's request through ``app.py`` or ``batch.py`` with the same
random weights (a noise cloud costs more to unwrap than a real object), i.e. the like-for-like
reference for ``bench/app_latency.py``.

Models are built and loaded before timing (reported as ``load_seconds``); a first warm-up run
compiles gsplat/nvdiffrast kernels and captures CUDA graphs; ``--repeat`` runs are then timed and
reported as median and spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import core  # noqa: F401  (sets the OpenMP policy before torch is imported)
from core.fileio import atomic_write_text
from core.timing import PhaseTimer
from pipeline import load_config, run_stage1, run_stage2
from pipeline.reports import git_commit, versions

ROOT = Path(__file__).resolve().parent.parent

LOOP = ("render", "refine", "optimise")
EXPORT = ("save_ply", "extract", "uv_unwrap", "bake_render", "uv_unwrap_wait", "bake", "save_mesh")


#: ``--size tiny``: the tiny models' 64 px, CPU renderers, a few iterations (a smoke run, not a benchmark).
TINY_OVERRIDES = [
    "model.dtype=fp32",
    "model.cuda_graph=false",
    "render.gs_backend=torch",
    "render.mesh_backend=torch",
    "ref_size=64",
    "gaussians.num_pts=500",
    "sir.render_size=64",
    "sir.iters=2",
    "sir.init_steps=2",
    "sir.steps_min=2",
    "sir.steps_max=2",
    "export.grid_resolution=48",
    "export.texture_size=128",
    "export.bake_size=64",
    "refine.iters=1",
    "refine.steps=2",
    "refine.render_size=64",
]


def timed_methods(obj, names: dict[str, str], timer: PhaseTimer) -> None:
    """Wrap ``obj``'s methods so each call is timed under a phase (CUDA events: no sync)."""
    for name, phase in names.items():
        orig = getattr(obj, name)

        def wrapper(*a, _orig=orig, _phase=phase, **k):
            with timer.phase(_phase):
                return _orig(*a, **k)

        setattr(obj, name, wrapper)


def gpu_busy(fn):
    """``fn()`` under torch.profiler: its result and wall / GPU-busy seconds, kernel counts, top kernels.

    Busy = the union of every traced kernel/memcpy/memset interval (kernels inside CUDA graphs are
    traced too); wall - busy is the time the GPU waited for the host.
    """
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    spans, per_name = [], defaultdict(lambda: [0.0, 0])
    for ev in prof.profiler.kineto_results.events():
        if ev.device_type() != torch.autograd.DeviceType.CUDA or ev.duration_ns() <= 0:
            continue
        spans.append((ev.start_ns(), ev.start_ns() + ev.duration_ns()))
        k = per_name[ev.name()[:100]]
        k[0] += ev.duration_ns() / 1e9
        k[1] += 1
    busy, end = 0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:15]
    return result, {
        "wall_s": round(wall, 3),
        "gpu_busy_s": round(busy / 1e9, 3),
        "gpu_busy_fraction": round(busy / 1e9 / wall, 3) if wall > 0 else None,
        "device_events": len(spans),
        "top_kernels": [{"name": n, "s": round(s, 4), "count": c} for n, (s, c) in top],
    }


def config(base: str, overrides: list[str]):
    """A validated stage config from ``base`` plus overrides."""
    return load_config(["--config", base, *overrides])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config", default="", help="default: configs/image.yaml (zero123) or configs/imagedream.yaml"
    )
    ap.add_argument(
        "--guidance",
        default="zero123",
        choices=("zero123", "imagedream", "mvdream"),
        help="which full-size architecture to build with random weights",
    )
    ap.add_argument("--image", default="../shared/data/images/cat_rgba.png", help="input photo (RGBA)")
    ap.add_argument("--prompt", default="a cute corgi", help="the prompt of --guidance mvdream")
    ap.add_argument(
        "--size", default="full", choices=("full", "tiny"), help="full-size architecture, or tiny on CPU"
    )
    ap.add_argument(
        "--oracle-mesh", default="../shared/data/meshes/spot.obj", help="real geometry for export/stage 2"
    )
    ap.add_argument(
        "--geometry",
        default="oracle",
        choices=("oracle", "model"),
        help="export/stage 2 on the oracle's real geometry, or on the network's own stage-1 result",
    )
    ap.add_argument(
        "--model-dir",
        default="",
        help="where the full-size random-weight model is written (reused when present)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, one more under torch.profiler: GPU busy time of stage 1 and stage 2",
    )
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and args.size == "full":
        print("error: bench/speed.py needs a CUDA GPU (or --size tiny on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")

    from guidance import load_denoiser
    from testing.random_imagedream import save_imagedream
    from testing.random_mvdream import save_mvdream
    from testing.random_zero123 import save_zero123

    work = Path(tempfile.mkdtemp(prefix="md_speed_"))
    t0 = time.perf_counter()
    default_config = {"zero123": "image", "imagedream": "imagedream", "mvdream": "text"}[args.guidance]
    args.config = args.config or f"configs/{default_config}.yaml"
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / f"md_{args.size}_{args.guidance}")
    if not (model_dir / "model_index.json").is_file():
        save = {"zero123": save_zero123, "imagedream": save_imagedream, "mvdream": save_mvdream}[
            args.guidance
        ]
        save(model_dir, args.size, seed=0, dtype=torch.float16 if args.size == "full" else torch.float32)
    build_s = time.perf_counter() - t0
    tiny = TINY_OVERRIDES if args.size == "tiny" else []
    common = ["quiet=true", f"device={device.type}", *tiny, *args.overrides]
    # Text to 3D conditions on the prompt; the image models on the input photo.
    subject = f"prompt={args.prompt}" if args.guidance == "mvdream" else f"input={args.image}"
    net_cfg = config(
        args.config,
        [subject, f"model.path={model_dir}", f"outdir={work}/net", "save_path=net", *common],
    )
    orc_cfg = config(
        args.config,
        [
            "guidance=oracle",
            f"oracle.mesh={args.oracle_mesh}",
            f"outdir={work}/oracle",
            "save_path=oracle",
            *common,
        ],
    )
    t0 = time.perf_counter()
    net = load_denoiser(net_cfg, device)
    oracle = load_denoiser(orc_cfg, device) if args.geometry == "oracle" else None
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    net_timer = PhaseTimer(device)
    timed_methods(
        net,
        {"encode": "vae_encode", "decode": "vae_decode", "eps_cfg": "unet_cfg", "eps_uncond": "unet_uncond"},
        net_timer,
    )

    runs = []
    for i in range(args.repeat + 1):  # run 0 = warm-up (JIT builds, graph capture)
        net_timer.__init__(device)
        net.reset_counters()
        t = time.perf_counter()
        own = args.geometry == "model"
        s1 = run_stage1(net_cfg, net, export=own)
        t_s1 = time.perf_counter() - t
        s1_net = net_timer.seconds()
        o1 = s1 if own else run_stage1(orc_cfg, oracle)
        net_timer.__init__(device)
        s2_cfg = config(
            args.config,
            [
                subject,
                f"model.path={model_dir}",
                f"outdir={work}/net",
                "save_path=net",
                f"mesh={o1['outputs']['mesh']}",
                *common,
            ],
        )
        t = time.perf_counter()
        s2 = run_stage2(s2_cfg, net)
        t_s2 = time.perf_counter() - t
        s2_net = net_timer.seconds()
        sec1, seco, sec2 = s1["seconds"], o1["seconds"], s2["seconds"]
        run = {
            "stage1_loop_s": round(sum(sec1.get(k, 0.0) for k in LOOP), 3),
            "stage1_phases_s": sec1,
            "stage1_networks_s": s1_net,
            "stage1_wall_s": round(t_s1, 3),
            "export_s": round(sum(seco.get(k, 0.0) for k in EXPORT if k != "save_ply"), 3),
            "export_phases_s": {k: seco.get(k, 0.0) for k in EXPORT},
            "stage2_s": round(sum(v for k, v in sec2.items() if k not in ("load_model", "preview")), 3),
            "stage2_phases_s": sec2,
            "stage2_networks_s": s2_net,
            "stage2_wall_s": round(t_s2, 3),
            "nfe_stage1": s1["nfe"],
            "nfe_stage2": s2["nfe"],
            "optimiser_steps_stage1": s1["optimiser_steps"],
            "optimiser_steps_stage2": s2["optimiser_steps"],
            "gaussians_end": s1["num_gaussians"],
            "export_mesh_faces": o1["mesh"].get("faces"),
            "peak_gpu_memory_gb": max(
                x or 0 for x in (s1["peak_gpu_memory_gb"], o1["peak_gpu_memory_gb"], s2["peak_gpu_memory_gb"])
            ),
        }
        run["total_s"] = round(run["stage1_loop_s"] + run["export_s"] + run["stage2_s"], 3)
        runs.append(run)
        print(
            f"run {i}{' (warm-up)' if i == 0 else ''}: stage-1 loop {run['stage1_loop_s']:.2f} s, "
            f"export {run['export_s']:.2f} s, stage 2 {run['stage2_s']:.2f} s, total {run['total_s']:.2f} s, "
            f"NFE {run['nfe_stage1']}+{run['nfe_stage2']}, peak {run['peak_gpu_memory_gb']} GB",
            flush=True,
        )

    profile = None
    if args.profile and cuda:
        # The same work once more, traced: how much of each stage's wall time the GPU is busy.
        s1, p1 = gpu_busy(lambda: run_stage1(net_cfg, net, export=args.geometry == "model"))
        _, p2 = gpu_busy(lambda: run_stage2(s2_cfg, net))
        profile = {"stage1": p1, "stage2": p2}
        for k, p in profile.items():
            print(
                f"profile {k}: wall {p['wall_s']:.2f} s, GPU busy {p['gpu_busy_s']:.2f} s "
                f"({100 * p['gpu_busy_fraction']:.0f}%), {p['device_events']} device events",
                flush=True,
            )

    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    timed = runs[1:] or runs
    keys = ("stage1_loop_s", "export_s", "stage2_s", "total_s", "peak_gpu_memory_gb")
    summary = {
        k: {
            "median": statistics.median(r[k] for r in timed),
            "min": min(r[k] for r in timed),
            "max": max(r[k] for r in timed),
        }
        for k in keys
    }
    targets = {
        "stage1_loop_s": 5.0,
        "export_s": 1.5,
        "stage2_s": 1.2,
        "total_s": 8.0,
        "peak_gpu_memory_gb": 12.0,
    }
    print(f"\n{'figure':<22}{'median':>10}{'min':>10}{'max':>10}{'target':>10}")
    for k in keys:
        s = summary[k]
        print(f"{k:<22}{s['median']:>10.3f}{s['min']:>10.3f}{s['max']:>10.3f}{targets[k]:>10.1f}")
    result = {
        "device": device_name,
        "versions": versions(),
        "commit": git_commit(),
        "config": args.config,
        "overrides": args.overrides,
        "model": f"{args.size}-size {args.guidance} architecture, random weights",
        "prompt": args.prompt if args.guidance == "mvdream" else None,
        "guidance": args.guidance,
        "geometry": args.geometry,
        "model_build_s": round(build_s, 2),
        "load_seconds": round(load_s, 2),
        "repeat": args.repeat,
        "summary": summary,
        "targets": targets,
        "runs": runs,
        **({"profile": profile} if profile else {}),
    }
    gpu = "".join(c for c in device_name.lower().replace("nvidia ", "") if c.isalnum())[:12]
    suffix = "_owngeometry" if args.geometry == "model" else ""
    name = (
        f"speed_{args.guidance}{suffix}_{gpu}.json"
        if args.size == "full"
        else f"speed_{args.guidance}_tiny_{gpu}.json"
    )
    out = Path(args.out or (ROOT / "bench" / "results" if args.size == "full" else work) / name)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
