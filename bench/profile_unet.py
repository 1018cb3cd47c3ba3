"""Profile the networks of the stage-1 SIR loop on the GPU: where a UNet call's time goes.

For each variant (dtype x mode) it times the Stable Zero123 CFG UNet call (batch 2V), the
unconditional call (batch V), VAE encode and decode (batch V), and profiles one CFG call's kernels
with torch.profiler: kernel time by category (convolution, matrix product, attention, GroupNorm,
elementwise, ...), the top kernels, and kernel time against the wall time of a CUDA-graph replay
(the gap is launch and idle time between kernels). Full-size architecture, random weights.

    python -m bench.profile_unet --variants fp16:graph,fp16:compile --out bench/results/profile_unet_h200.json

Modes: ``eager``; ``graph`` (CUDA graphs, the default config); ``compile`` (``model.compile``:
``torch.compile`` of the UNet and VAE, then CUDA graphs); ``nchw`` (CUDA graphs, contiguous layout
instead of channels-last). A ``-exactnorm`` suffix (``fp16:graph-exactnorm``) runs the mode with
``model.fused_norm=false`` (torch's GroupNorm instead of the fused Triton kernel):

    python -m bench.profile_unet --variants fp16:graph,fp16:graph-exactnorm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import core  # noqa: F401  (sets the OpenMP policy before torch is imported)
from core.cameras import orbit_cameras
from core.fileio import atomic_write_text
from guidance.denoiser import TorchNoise
from pipeline.reports import git_commit, versions

ROOT = Path(__file__).resolve().parent.parent

CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "softmax", "sdpa")),
    (
        "groupnorm",
        ("group_norm", "groupnorm", "GroupNorm", "welford", "RowwiseMoments", "ComputeFusedParams"),
    ),
    ("convolution", ("conv", "implicit", "xmma", "cudnn", "nhwc", "dgrad", "wgrad", "fprop")),
    ("matmul", ("gemm", "cutlass", "cublas", "sm90", "matmul")),
    ("triton (fused)", ("triton",)),
    ("copy/layout", ("copy", "transpose", "cat", "Memcpy", "memcpy", "permute", "nchw", "Nchw")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce", "Reduce", "silu", "gelu")),
)


def category(name: str) -> str:
    """The kernel category of a CUDA kernel name (first match of :data:`CATEGORIES`)."""
    for cat, keys in CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other"


def _timed(fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls, after two warm-up calls."""
    fn()
    fn()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def kernel_table(fn, calls: int = 3) -> dict:
    """Kernel seconds per call of ``fn`` by category and the top kernels (torch.profiler, CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time_total > 0:
            k = per_kernel[ev.name]
            k[0] += ev.device_time_total / 1e6 / calls
            k[1] += 1 / calls
    by_cat: dict[str, float] = defaultdict(float)
    n_cat: dict[str, float] = defaultdict(float)
    for name, (s, n) in per_kernel.items():
        by_cat[category(name)] += s
        n_cat[category(name)] += n
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:20]
    return {
        "kernel_s": sum(s for s, _ in per_kernel.values()),
        "kernels_per_call": sum(n for _, n in per_kernel.values()),
        "by_category_s": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "by_category_n": {c: round(n_cat[c], 1) for c in sorted(by_cat, key=lambda c: -by_cat[c])},
        "top": [{"name": n[:120], "s": s, "count": c, "category": category(n)} for n, (s, c) in top],
    }


def build(folder: Path, dtype: str, mode: str, views: int):
    """A Zero123 denoiser in ``dtype``/``mode`` conditioned on a random reference, its timed calls, load seconds.

    ``mode``: one of the module's modes, with an optional ``-exactnorm``.
    """
    from guidance.models.zero123 import Zero123Denoiser

    mode, _, option = mode.partition("-")
    if option not in ("", "exactnorm"):
        raise SystemExit(f"unknown variant option -{option} (only -exactnorm)")
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    den = Zero123Denoiser(
        folder,
        device=dev,
        dtype=dtype,
        cuda_graph=mode != "eager",
        channels_last=mode != "nchw",
        fused_norm=option != "exactnorm",
    )
    if mode == "compile":
        from guidance.compiled import compile_networks

        compile_networks(den)
    load_s = time.perf_counter() - t0
    gen = torch.Generator(device=dev).manual_seed(0)
    noise = TorchNoise(gen)
    S = den.image_size
    den.set_reference(torch.rand(3, S, S, generator=gen, device=dev), 0.0, noise=noise)
    cams = orbit_cameras([0.0] * views, [i * 360.0 / views for i in range(views)], height=S, device=dev)
    cond = den.prepare(cams)
    x = torch.randn(den.latent_shape(views), generator=gen, device=dev)
    images = torch.rand(views, 3, S, S, generator=gen, device=dev)
    calls = {
        f"unet_cfg_b{2 * views}": lambda: den.eps_cfg(x, 501, cond, 3.0),
        f"unet_uncond_b{views}": lambda: den.eps_uncond(x, 501, cond),
        f"vae_encode_b{views}": lambda: den.encode(images, noise),
        f"vae_decode_b{views}": lambda: den.decode(x),
    }
    return den, calls, load_s


def run_variant(folder: Path, dtype: str, mode: str, views: int, reps: int, ref: torch.Tensor | None) -> dict:
    """Times, first-call (capture/compile) cost, kernel tables and the CFG output against ``ref``."""
    den, calls, load_s = build(folder, dtype, mode, views)
    res: dict = {
        "dtype": dtype,
        "mode": mode,
        "fused_norm": den.fused_norm,
        "load_s": round(load_s, 3),
        "calls": {},
    }
    with torch.no_grad():
        for name, fn in calls.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):  # the graph runner warms up twice, captures on the third call
                fn()
            torch.cuda.synchronize()
            first3 = time.perf_counter() - t0
            res["calls"][name] = {"first3_s": round(first3, 3), "median_s": _timed(fn, reps)}
        cfg_name = next(iter(calls))
        eager = den._runner.enabled
        den._runner.enabled = False  # kernels of the same computation, launched one by one
        res["cfg_kernels_eager"] = kernel_table(calls[cfg_name])
        den._runner.enabled = eager
        if eager:
            res["cfg_kernels_graph"] = kernel_table(calls[cfg_name])
        out = calls[cfg_name]().float()
    res["cfg_call_wall_s"] = res["calls"][cfg_name]["median_s"]
    res["cfg_kernel_fraction"] = res["cfg_kernels_eager"]["kernel_s"] / res["cfg_call_wall_s"]
    if ref is not None:
        res["cfg_vs_reference"] = {
            "max_abs": float((out - ref).abs().max()),
            "rel_l2": float((out - ref).norm() / ref.norm()),
        }
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del den, calls
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return res, out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, profile each variant, print a summary, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="fp16:graph,fp16:compile,bf16:graph")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--model", default="/tmp/md_full_zero123", help="model folder (written when absent)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_unet needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    folder = Path(args.model)
    if not (folder / "model_index.json").exists():
        from testing.random_zero123 import save_zero123

        save_zero123(folder, "full", seed=0, dtype=torch.float16)
    results, ref = [], None
    for spec in args.variants.split(","):
        dtype, mode = spec.split(":")
        r, out = run_variant(folder, dtype, mode, args.views, args.reps, ref)
        ref = out if ref is None else ref
        results.append(r)
        line = "  ".join(
            f"{k} {v['median_s'] * 1e3:6.2f} ms (first 3: {v['first3_s']:.2f} s)"
            for k, v in r["calls"].items()
        )
        print(f"{dtype}:{mode} (fused_norm {r['fused_norm']})  {line}", flush=True)
        ke = r["cfg_kernels_eager"]
        cats = ", ".join(
            f"{c} {s * 1e3:.2f} (x{ke['by_category_n'][c]:.0f})" for c, s in ke["by_category_s"].items()
        )
        print(
            f"  CFG kernels {ke['kernel_s'] * 1e3:.2f} ms in {ke['kernels_per_call']:.0f} kernels [{cats}] "
            f"vs wall {r['cfg_call_wall_s'] * 1e3:.2f} ms; vs first variant {r.get('cfg_vs_reference')}",
            flush=True,
        )
        for k in ke["top"][:8]:
            print(f"    {k['s'] * 1e3:6.3f} ms x{k['count']:.0f} {k['category']:12s} {k['name'][:90]}")
    dev = torch.cuda.get_device_name()
    report = {
        "benchmark": "profile_unet",
        "device": dev,
        "versions": versions(),
        "commit": git_commit(),
        "views": args.views,
        "results": results,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"profile_unet_{dev.split()[-1].lower()}.json")
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
