"""Batch throughput: objects per minute through ``batch.py --workers N`` on this machine (or ``--ray``).

    python -m bench.throughput                      # --workers 1,4,8 -> bench/results/throughput_<gpu>.json
    python -m bench.throughput --workers 1,2,4 --images 8
    python -m bench.throughput --workers 3 --mps off   # the same batch without CUDA MPS, to compare
    python -m bench.throughput --ray --gpus 2       # batch.py --ray: -> throughput_2gpu_<gpu>.json

The first ``--images`` shared images (name-sorted ``*_rgba.png``) run through both stages with the
FULL-SIZE Stable Zero123 architecture built with random weights (a network call costs the same
whatever its weights) at the schedule of ``configs/image.yaml``. A one-image warm-up batch first
compiles the gsplat/nvdiffrast kernels (cached on disk); then, for each worker count, one timed
``batch.py --workers N`` run into a fresh folder, each worker's model load included, as a user's
batch would (``--workers 1`` is the plain in-process path). The temporary work folder (inputs and
every batch's outputs) is removed at the end unless ``--keep``.

Per row: objects/minute = items finished ok / wall minutes of the timed run; per-object latency
median and p90 (the summary's ``seconds`` of the ok items); GPU utilisation mean and peak memory
used, sampled every 250 ms by ``nvidia-smi`` during the run (None without nvidia-smi); failures;
``mps``: whether the workers ran under CUDA MPS (``--mps``, passed to batch.py, default auto: on for
more workers than GPUs where the MPS control binary exists; read back from the batch summary).
The best row is the one with the most objects per minute.

``--ray`` keeps the former benchmark: one timed ``batch.py --ray auto`` run on a local Ray
instance given exactly ``--gpus`` GPUs (one actor each), with the scaling efficiency against the
1-GPU result (objects/minute on G GPUs / (G x objects/minute on 1 GPU)).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from core.fileio import atomic_write_text
from core.mps import MODES as MPS_MODES
from pipeline.reports import git_commit, versions

ROOT = Path(__file__).resolve().parent.parent
SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=utilization.gpu,memory.used",
    "--format=csv,noheader,nounits",
    "-lms",
    "250",
]


# ------------------------------------------------------------------------------------ pure parts
def parse_workers(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (order kept, repeats dropped); a ValueError unless every entry is >= 1."""
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--workers {text}: expected a comma list of counts >= 1, e.g. 1,2,4")
        if int(part) not in counts:
            counts.append(int(part))
    return counts


def parse_smi(text: str) -> list[tuple[float, float]]:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits`` output ->
    ``[(utilisation %, memory used MiB)]``, one per line per GPU; lines that do not parse
    (``[N/A]``, a cut last line, messages) are skipped."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            continue
        try:
            util, mem = float(fields[0]), float(fields[1])
        except ValueError:
            continue
        if 0.0 <= util <= 100.0 and mem >= 0.0:
            samples.append((util, mem))
    return samples


def gpu_figures(samples: list[tuple[float, float]] | None) -> dict:
    """Mean utilisation (%) and peak memory used (MiB) of the samples; None for both without samples."""
    if not samples:
        return {"gpu_util_mean": None, "gpu_mem_peak_mib": None, "gpu_samples": 0}
    return {
        "gpu_util_mean": round(statistics.fmean(u for u, _ in samples), 1),
        "gpu_mem_peak_mib": max(m for _, m in samples),
        "gpu_samples": len(samples),
    }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linear between order statistics; None when empty."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary_mps(doc: dict | None) -> bool:
    """Whether the batch of a summary document ran its workers under MPS (its meta ``mps.used``)."""
    return bool(((doc or {}).get("mps") or {}).get("used"))


def row_figures(
    workers: int, items: list[dict], wall: float, gpu: dict, exit_code: int, mps: bool = False
) -> dict:
    """One table row from a batch summary's ``items``, its wall seconds, its GPU figures and whether
    MPS was on."""
    ok = [r for r in items if r["status"] == "ok"]
    seconds = [float(r["seconds"]) for r in ok if r.get("seconds") is not None]
    median, p90 = percentile(seconds, 50), percentile(seconds, 90)
    return {
        "workers": workers,
        "mps": mps,
        "ok": len(ok),
        "failed": sum(r["status"] == "failed" for r in items),
        "wall_seconds": round(wall, 2),
        "objects_per_minute": round(len(ok) / wall * 60.0, 3) if wall > 0 else None,
        "latency_median_s": None if median is None else round(median, 2),
        "latency_p90_s": None if p90 is None else round(p90, 2),
        **gpu,
        "batch_exit_code": exit_code,
        "errors": {r["name"]: r.get("error") for r in items if r["status"] == "failed"},
    }


def best_row(rows: list[dict]) -> dict | None:
    """The row with the most objects per minute (None without rows)."""
    scored = [r for r in rows if r.get("objects_per_minute") is not None]
    return max(scored, key=lambda r: r["objects_per_minute"]) if scored else None


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    head = f"{'workers':>7} {'mps':>4} {'obj/min':>8} {'wall s':>8} {'lat med':>8} {'lat p90':>8} {'GPU %':>6} {'mem MiB':>8} {'failed':>6}"

    def cell(v: object, width: int) -> str:
        return f"{'-' if v is None else v:>{width}}"

    lines = [head]
    for r in rows:
        lines.append(
            " ".join(
                [
                    cell(r["workers"], 7),
                    cell("on" if r.get("mps") else "off", 4),
                    cell(r["objects_per_minute"], 8),
                    cell(r["wall_seconds"], 8),
                    cell(r["latency_median_s"], 8),
                    cell(r["latency_p90_s"], 8),
                    cell(r["gpu_util_mean"], 6),
                    cell(r["gpu_mem_peak_mib"], 8),
                    cell(r["failed"], 6),
                ]
            )
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- running
class GpuSampler:
    """``nvidia-smi`` sampling every 250 ms in a subprocess while the block runs; ``samples`` after it.

    ``samples`` stays None when nvidia-smi cannot run. Only the GPUs of ``CUDA_VISIBLE_DEVICES`` when set.
    """

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] | None = None
        self._proc: subprocess.Popen | None = None
        # a file, not a pipe: a long run's samples would fill a pipe nobody reads until the end
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> GpuSampler:
        cmd = list(SMI_QUERY)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            cmd += ["-i", visible]
        try:
            self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.DEVNULL, text=True)
        except OSError:  # no nvidia-smi
            self._proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log.seek(0)
            self.samples = parse_smi(self._log.read())
        self._log.close()


def run_batch(argv: list[str]) -> int:
    """``python batch.py ARGV`` from the repository root; its exit code."""
    return subprocess.run([sys.executable, str(ROOT / "batch.py"), *argv], cwd=ROOT).returncode


@contextlib.contextmanager
def _work_folder(work: Path, keep: bool) -> Iterator[None]:
    """Remove the work folder (inputs and every timed batch's outputs) after the block, unless ``keep``."""
    try:
        yield
    finally:
        if keep:
            print(f"outputs kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _gpu_tag() -> str:
    import torch

    name = torch.cuda.get_device_name(0).lower()
    return next((t for t in ("h200", "h100", "a100", "l40s", "a10") if t in name), "gpu")


def _prepare(args: argparse.Namespace) -> tuple[Path, Path, list[Path], list[str]]:
    """The work folder, the image folder, the images and the overrides (the random-weight model written once)."""
    import torch

    from testing.random_zero123 import save_zero123

    work = Path(tempfile.mkdtemp(prefix="md_throughput_"))
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / "md_full_zero123")
    if not (model_dir / "model_index.json").is_file():
        save_zero123(model_dir, "full", seed=0, dtype=torch.float16)
    images = sorted(Path(args.image_dir).glob("*_rgba.png"))[: args.images]
    if not images:
        print(f"error: no *_rgba.png images in {args.image_dir}", file=sys.stderr)
        raise SystemExit(2)
    inp = work / "in"
    inp.mkdir()
    for p in images:
        shutil.copy(p, inp / p.name)
    overrides = [f"model.path={model_dir}", "device=cuda", "quiet=true", *args.overrides]
    return work, inp, images, overrides


def _warm_up(work: Path, image: Path, common: list[str], overrides: list[str]) -> None:
    """One image through the batch, so the timed runs find the kernels compiled."""
    warm = work / "warm"
    warm.mkdir()
    shutil.copy(image, warm / image.name)
    run_batch([*common, str(warm), "--out", str(work / "warm_out"), "--workers", "1", *overrides])


def bench_workers(args: argparse.Namespace, counts: list[int]) -> dict:
    """Warm-up, then one timed ``batch.py --workers N`` run per count; the result document."""
    import torch

    work, inp, images, overrides = _prepare(args)
    common = ["--config", args.config, "--no-progress"]
    rows = []
    with _work_folder(work, args.keep):
        if not args.no_warmup:
            _warm_up(work, images[0], common, overrides)
        for n in counts:
            out = work / f"out_w{n}"
            with GpuSampler() as smi:
                t0 = time.perf_counter()
                argv = [*common, str(inp), "--out", str(out), "--workers", str(n), "--mps", args.mps]
                rc = run_batch([*argv, *overrides])
                wall = time.perf_counter() - t0
            summary = out / "batch_summary.json"
            doc = json.loads(summary.read_text()) if summary.is_file() else {}
            rows.append(
                row_figures(n, doc.get("items", []), wall, gpu_figures(smi.samples), rc, summary_mps(doc))
            )
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    return {
        "device": torch.cuda.get_device_name(0),
        "gpus_visible": torch.cuda.device_count(),
        "mode": "batch.py --workers N (one machine, no Ray)",
        "mps_mode": args.mps,
        "images": [p.name for p in images],
        "config": args.config,
        "overrides": overrides,
        "model": "full-size zero123 architecture, random weights, fp16 files",
        "warmup": not args.no_warmup,
        "bytecode": bytecode_settings(),
        "rows": rows,
        "best": best_row(rows),
        "versions": versions(),
        "commit": git_commit(),
    }


def bench_ray(args: argparse.Namespace) -> tuple[dict, int]:
    """One timed ``batch.py --ray auto`` run on a local Ray instance with ``--gpus`` GPUs; (result, exit code)."""
    import ray
    import torch

    work, inp, images, overrides = _prepare(args)
    common = ["--config", args.config, "--no-progress", "--ray", "auto"]
    with _work_folder(work, args.keep):
        ray.init(num_gpus=args.gpus, include_dashboard=False)
        try:
            if not args.no_warmup:
                _warm_up(work, images[0], common, overrides)
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
    one = ROOT / "bench" / "results" / f"throughput_1gpu_{_gpu_tag()}.json"
    if args.gpus > 1 and one.is_file():
        base = json.loads(one.read_text())["objects_per_minute"]
        result["scaling_efficiency"] = round(opm / (args.gpus * base), 3) if base else None
    return result, rc


def bytecode_settings() -> dict:
    """Python's bytecode-cache settings of the run: every worker start imports torch, which takes
    seconds longer where no compiled bytecode can be read or written (README, "Throughput")."""
    return {
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
        "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX", ""),
    }


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,4,8", help="comma list of worker counts, one timed batch each")
    ap.add_argument("--ray", action="store_true", help="the Ray benchmark instead (batch.py --ray, --gpus)")
    ap.add_argument(
        "--mps",
        choices=MPS_MODES,
        default="auto",
        help="batch.py --mps for every timed run (CUDA MPS for workers sharing a GPU; default auto); "
        "each row says whether it was on",
    )
    ap.add_argument("--gpus", type=int, default=1, help="with --ray: GPUs given to Ray (one actor each)")
    ap.add_argument("--images", type=int, default=16, help="how many shared images (name-sorted)")
    ap.add_argument("--image-dir", default=str(ROOT / ".." / "shared" / "data" / "images"))
    ap.add_argument("--config", default="configs/image.yaml")
    ap.add_argument("--model-dir", default="", help="the random-weight model (written when absent)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument(
        "--keep", action="store_true", help="keep the work folder (inputs, every batch's outputs)"
    )
    ap.add_argument("--tag", default="", help="result name: throughput_<tag>.json (default: the GPU's name)")
    ap.add_argument(
        "--out",
        default="",
        help="result JSON (default bench/results/throughput_<tag>.json; with --ray throughput_<G>gpu_<gpu>.json)",
    )
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every item")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and write the figures. Exit 2 without CUDA or on a bad option."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        counts = parse_workers(args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.images < 1:
        print(f"error: --images {args.images}: expected a count >= 1", file=sys.stderr)
        return 2
    import torch

    need = args.gpus if args.ray else 1
    if not torch.cuda.is_available() or torch.cuda.device_count() < need:
        what = f"--ray --gpus {args.gpus} needs that many CUDA GPUs" if args.ray else "needs a CUDA GPU"
        print(f"error: bench/throughput.py {what}", file=sys.stderr)
        return 2
    if args.ray:
        result, rc = bench_ray(args)
        path = Path(args.out or ROOT / "bench" / "results" / f"throughput_{args.gpus}gpu_{_gpu_tag()}.json")
        atomic_write_text(path, json.dumps(result, indent=2))
        eff = result.get("scaling_efficiency")
        print(
            f"{args.gpus} GPU(s): {result['counts']['ok']}/{len(result['images'])} objects in "
            f"{result['wall_seconds']:.1f} s = {result['objects_per_minute']:.2f} objects/min"
            + (f", scaling efficiency {eff:.2f}" if eff is not None else "")
            + f" -> {path}"
        )
        return 0 if rc == 0 else 1
    result = bench_workers(args, counts)
    path = Path(args.out or ROOT / "bench" / "results" / f"throughput_{args.tag or _gpu_tag()}.json")
    atomic_write_text(path, json.dumps(result, indent=2))
    print(table(result["rows"]))
    best = result["best"]
    if best is not None:
        print(f"best: --workers {best['workers']}: {best['objects_per_minute']} objects/min -> {path}")
    return 0 if all(r["batch_exit_code"] == 0 for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
