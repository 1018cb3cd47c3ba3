"""Benchmark the Stable Zero123 side of SIR: UNet calls, VAE, and whole refine calls at the paper schedule.

Full-size architecture with random weights (a network's cost does not depend on its weights),
saved in the Hub layout and loaded through the real loader. For each dtype (fp16, bf16) and mode
(eager, CUDA graph, optionally torch.compile) it times: one CFG UNet call at batch 2B, one
unconditional call at batch B, VAE encode/decode at batch B, the 21 refine calls of stage 1 with
the paper (v1) schedule (323 UNet calls), and the stage-2 refine (8 views, t=181, 10 steps).
It also checks that graph replay gives the eager result. Writes JSON.

    python bench/bench_guidance.py --out bench/results/guidance_h100.json
    python bench/bench_guidance.py --size tiny --device cpu --dtypes fp32 --modes eager   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.cameras import orbit_cameras
from core.schedules import t1_for_t2, t2_for_iteration
from guidance.components import DTYPES
from guidance.denoiser import TorchNoise
from guidance.models.zero123 import Zero123Denoiser
from guidance.sir_step import refine
from testing.random_zero123 import save_zero123


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(fn, dev: torch.device, reps: int) -> dict:
    """Median and best seconds of ``fn()`` over ``reps`` runs (after one warm-up run)."""
    fn()
    ts = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"median_s": ts[len(ts) // 2], "best_s": ts[0], "reps": reps}


def paper_passes(den: Zero123Denoiser, t_start: float = 0.8) -> list[tuple[bool, int, int]]:
    """(from_noise, t1, t2) of the 21 refine calls of stage 1 (v1 image_sai: t_start 0.8, t_end 0.2, inv_r 0.6)."""
    grid, inv = den.schedule.timesteps(20), den.schedule.inverse_timesteps(20)
    out = [(True, 0, 1000)]
    for k in range(20):
        t2 = t2_for_iteration(k, 20, grid, t_start, 0.2)
        out.append((False, t1_for_t2(t2, inv, 0.6), t2))
    return out


def bench_one(folder: Path, dev: torch.device, dtype: str, mode: str, views: int, reps: int) -> dict:
    """All timings for one (dtype, mode)."""
    den = Zero123Denoiser(folder, device=dev, dtype=dtype, cuda_graph=(mode == "graph"))
    if mode == "compile":
        compiled = torch.compile(den.unet)  # default mode; graphs are the 'graph' row
        den._runner.fn = lambda sample, t, hidden: compiled(
            sample, t, encoder_hidden_states=hidden, return_dict=False
        )[0]
    S = den.image_size
    gen = torch.Generator(device=dev).manual_seed(0)
    noise = TorchNoise(gen)
    den.set_reference(torch.rand(3, S, S, generator=gen, device=dev), 0.0, noise=noise)
    cams = orbit_cameras([0.0] * views, [i * 360.0 / views for i in range(views)], height=S, device=dev)
    cams8 = orbit_cameras([0.0] * 8, [i * 45.0 for i in range(8)], height=S, device=dev)
    images = torch.rand(views, 3, S, S, generator=gen, device=dev)
    images8 = torch.rand(8, 3, S, S, generator=gen, device=dev)
    cond = den.prepare(cams)
    x = torch.randn(den.latent_shape(views), generator=gen, device=dev)
    res: dict = {"dtype": dtype, "mode": mode, "views": views}
    with torch.no_grad():
        res[f"unet_cfg_batch{2 * views}"] = _time(lambda: den.eps_cfg(x, 501, cond, 3.0), dev, reps)
        res[f"unet_uncond_batch{views}"] = _time(lambda: den.eps_uncond(x, 501, cond), dev, reps)
        res["vae_encode"] = _time(lambda: den.encode(images, noise), dev, reps)
        res["vae_decode"] = _time(lambda: den.decode(x), dev, reps)
        res["prepare"] = _time(lambda: den.prepare(cams), dev, reps)
        passes = paper_passes(den)

        def stage1():
            for from_noise, t1, t2 in passes:
                refine(den, images, cams, t1, t2, 0.5, 3.0, 20, noise, from_noise=from_noise)

        den.reset_counters()
        stage1()
        res["stage1_nfe"] = {
            "calls": den.nfe,
            "cfg": den.nfe_cfg,
            "uncond": den.nfe_uncond,
            "rows": den.nfe_rows,
        }
        res["stage1_21_refines"] = _time(stage1, dev, max(1, reps // 10))
        t = den.schedule.timesteps(50)[40]
        res["stage2_refine_8views"] = _time(
            lambda: refine(den, images8, cams8, t, t, 0.0, 2.0, 50, noise), dev, reps
        )
        if mode == "graph" and dev.type == "cuda":
            # Replay must equal an eager call on the same inputs.
            inp = den._unet_input(torch.cat([x, x]), cond.concat)
            tt = torch.full((2 * views,), 501.0, device=dev)
            ref = den._unet_call(inp, tt, cond.hidden).float()
            got = den._runner(sample=inp, t=tt, hidden=cond.hidden)
            res["graph_vs_eager_max_abs"] = float((ref - got).abs().max())
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    den = None  # free the model before the next configuration
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    return res


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the grid, print a table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--modes", default="eager,graph", help="comma list of eager, graph, compile")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--model", default="", help="existing model folder (default: write a random one)")
    ap.add_argument("--out", default="bench/results/guidance.json")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # smoke tests on shared CPUs: tiny ops are fastest single-threaded
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    if args.model:
        folder = Path(args.model)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"zero123_{args.size}_")) / "stable-zero123-random"
        save_zero123(folder, args.size, seed=0, dtype=torch.float16 if args.size == "full" else torch.float32)
    setup_s = time.perf_counter() - t0
    results = []
    for dtype in args.dtypes.split(","):
        assert dtype in DTYPES, dtype
        for mode in args.modes.split(","):
            r = bench_one(folder, dev, dtype, mode, args.views, args.reps)
            results.append(r)
            k_cfg = f"unet_cfg_batch{2 * args.views}"
            print(
                f"{dtype:5s} {mode:8s} UNet cfg b{2 * args.views}: {r[k_cfg]['median_s'] * 1e3:7.2f} ms  "
                f"uncond b{args.views}: {r[f'unet_uncond_batch{args.views}']['median_s'] * 1e3:7.2f} ms  "
                f"stage-1 21 refines ({r['stage1_nfe']['calls']} calls): {r['stage1_21_refines']['median_s']:6.2f} s  "
                f"stage-2 refine: {r['stage2_refine_8views']['median_s'] * 1e3:7.1f} ms",
                flush=True,
            )
    report = {
        "what": "Stable Zero123 random weights, real loader; paper v1 schedule",
        "size": args.size,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__,
        },
        "setup_s": setup_s,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
