"""Batch throughput through ``batch.py --ray``: objects per minute on G GPUs (one Ray actor each).

    python bench/throughput.py --gpus 1      # -> bench/results/throughput_1gpu_<gpu>.json
    python bench/throughput.py --gpus 2      # -> ..._2gpu_<gpu>.json, with the scaling efficiency

The first ``--images`` shared images run through both stages with the FULL-SIZE Stable Zero123
architecture built with random weights (a network call costs the same whatever its weights) at
the schedule of ``configs/image.yaml``. A local Ray instance is given exactly G GPUs. A one-image
warm-up batch first compiles the gsplat/nvdiffrast kernels (cached on disk), so the timed batch
measures steady work plus each actor's model load, as a user's batch would.

objects/minute = items finished ok / wall minutes of the timed ``batch.py`` run; scaling
efficiency = objects/minute on G GPUs / (G x objects/minute on 1 GPU), read from the 1-GPU result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.fileio import atomic_write_text
from pipeline.reports import git_commit, versions

ROOT = Path(__file__).resolve().parent.parent


def run_batch(argv: list[str]) -> int:
    """``python batch.py ARGV`` from the repository root; its exit code."""
    return subprocess.run([sys.executable, str(ROOT / "batch.py"), *argv], cwd=ROOT).returncode


def _gpu_tag() -> str:
    name = torch.cuda.get_device_name(0).lower()
    return next((t for t in ("h200", "h100", "a100", "l40s", "a10") if t in name), "gpu")


def main(argv: list[str] | None = None) -> int:
    """Run the warm-up and the timed batch; print and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs given to Ray (one actor each)")
    ap.add_argument("--images", type=int, default=8, help="how many shared images (name-sorted)")
    ap.add_argument("--image-dir", default=str(ROOT / ".." / "shared" / "data" / "images"))
    ap.add_argument("--config", default="configs/image.yaml")
    ap.add_argument("--model-dir", default="", help="the random-weight model (written when absent)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument(
        "--out", default="", help="result JSON (default bench/results/throughput_<G>gpu_<gpu>.json)"
    )
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every item")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.device_count() < args.gpus:
        print(f"error: bench/throughput.py --gpus {args.gpus} needs that many CUDA GPUs", file=sys.stderr)
        return 2
    import ray

    from testing.random_zero123 import save_zero123

    work = Path(tempfile.mkdtemp(prefix="md_throughput_"))
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / "md_full_zero123")
    if not (model_dir / "model_index.json").is_file():
        save_zero123(model_dir, "full", seed=0, dtype=torch.float16)
    images = sorted(Path(args.image_dir).glob("*_rgba.png"))[: args.images]
    inp = work / "in"
    inp.mkdir()
    for p in images:
        shutil.copy(p, inp / p.name)
    # batch.py as users run it, joining the Ray instance started below ("auto").
    common = ["--config", args.config, "--no-progress", "--ray", "auto"]
    overrides = [f"model.path={model_dir}", "device=cuda", "quiet=true", *args.overrides]

    ray.init(num_gpus=args.gpus, include_dashboard=False)
    try:
        if not args.no_warmup:
            warm = work / "warm"
            warm.mkdir()
            shutil.copy(images[0], warm / images[0].name)
            run_batch([*common, str(warm), "--out", str(work / "warm_out"), "--workers", "1", *overrides])
        out = work / "out"
        t0 = time.perf_counter()
        rc = run_batch([*common, str(inp), "--out", str(out), "--workers", str(args.gpus), *overrides])
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    doc = json.loads((out / "batch_summary.json").read_text())
    ok = [r for r in doc["items"] if r["status"] == "ok"]
    opm = len(ok) / wall * 60.0
    result = {
        "device": torch.cuda.get_device_name(0),
        "gpus": args.gpus,
        "images": [p.name for p in images],
        "config": args.config,
        "overrides": overrides,
        "model": "full-size zero123 architecture, random weights, fp16 files",
        "batch_exit_code": rc,
        "counts": doc["counts"],
        "errors": {r["name"]: r.get("error") for r in doc["items"] if r["status"] == "failed"},
        "wall_seconds": round(wall, 2),
        "objects_per_minute": round(opm, 3),
        "item_seconds_median": round(statistics.median(r["seconds"] for r in ok), 2) if ok else None,
        "versions": versions(),
        "commit": git_commit(),
    }
    tag = _gpu_tag()
    one = ROOT / "bench" / "results" / f"throughput_1gpu_{tag}.json"
    if args.gpus > 1 and one.is_file():
        base = json.loads(one.read_text())["objects_per_minute"]
        result["scaling_efficiency"] = round(opm / (args.gpus * base), 3) if base else None
    path = Path(args.out or ROOT / "bench" / "results" / f"throughput_{args.gpus}gpu_{tag}.json")
    atomic_write_text(path, json.dumps(result, indent=2))
    print(
        f"{args.gpus} GPU(s): {len(ok)}/{len(images)} objects in {wall:.1f} s = {opm:.2f} objects/min"
        + (
            f", scaling efficiency {result['scaling_efficiency']:.2f}"
            if "scaling_efficiency" in result
            else ""
        )
        + f" -> {path}"
    )
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
