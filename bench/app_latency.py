"""Latency of the web app's HTTP API with the models kept warm: start ``app.py``, post N requests.

    python bench/app_latency.py --config configs/image.yaml --random-weights zero123 -n 4 \
        --out bench/results/app_latency_h200.json [key=value ...]
    python bench/app_latency.py --config configs/oracle_cpu.yaml -n 2        # a CPU smoke run

The server is started as a subprocess on a free loopback port (its start-up, models included, is
timed until ``/api/health`` answers); then ``-n`` requests go one after another through
``POST /api/generate`` (JSON variant). Per request: the client's wall seconds and the server's own
phase seconds. On a GPU the server runs a warm-up job before it answers (``app.py --warmup``), so
its start-up includes the one-off costs (CUDA kernels, CUDA-graph capture) and the first request
is already warm; the reported warm figure is the median of the requests after the first. The
like-for-like reference is ``bench/speed.py --geometry model`` (same random weights and geometry).

``--random-weights zero123|imagedream`` writes the FULL-SIZE architecture with random weights to
``--model-dir`` (reused when present) and points ``model.path`` at it, as ``bench/speed.py`` does.
Random weights make stage 1 a noise cloud, so its mesh export is not that of a real object
(``bench/speed.py`` times export on the oracle's geometry); the JSON splits each request into the
stage-1 loop, the export and stage 2 so that the loop and stage 2 can be compared one to one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = ("render", "refine", "optimise")
EXPORT = ("save_ply", "extract", "uv_unwrap", "bake_render", "uv_unwrap_wait", "bake", "save_mesh")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_image(url: str, image: Path, fields: dict[str, str], timeout: float) -> dict:
    """``POST`` a multipart form with ``image`` and ``fields``; returns the decoded JSON answer."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = b"".join(parts) + head + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"error: {url} answered {e.code}: {e.read().decode(errors='replace')}") from None


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``/api/health`` answers (SystemExit if the server dies or times out)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"error: app.py exited with {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: app.py did not answer within {timeout:.0f} s")


def split(reports: dict) -> dict[str, float]:
    """A request's server seconds: stage-1 loop, export, stage 2 (sum of its phases)."""
    s1, s2 = reports["stage1"]["seconds"], reports["stage2"]["seconds"]
    return {
        "stage1_loop_s": round(sum(s1.get(k, 0.0) for k in LOOP), 3),
        "export_s": round(sum(s1.get(k, 0.0) for k in EXPORT), 3),
        "stage1_other_s": round(sum(v for k, v in s1.items() if k not in LOOP + EXPORT), 3),
        "stage2_s": round(sum(s2.values()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Start the server, time the requests, write the JSON; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/image.yaml")
    ap.add_argument("--image", default="../shared/data/images/cat_rgba.png", help="input photo (RGBA)")
    ap.add_argument("-n", "--requests", type=int, default=4, help="requests, one after another")
    ap.add_argument("--random-weights", choices=("", "zero123", "imagedream"), default="")
    ap.add_argument("--model-dir", default="", help="folder of the random-weight model (reused when present)")
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--request-timeout", type=float, default=900.0)
    ap.add_argument("--out", default="", help="JSON file (default: print only)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides passed to app.py")
    args = ap.parse_args(argv)

    overrides = list(args.overrides)
    if args.random_weights:
        import torch

        from testing.random_imagedream import save_imagedream
        from testing.random_zero123 import save_zero123

        model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / f"md_full_{args.random_weights}")
        if not (model_dir / "model_index.json").is_file():
            save = save_zero123 if args.random_weights == "zero123" else save_imagedream
            save(model_dir, "full", seed=0, dtype=torch.float16)
        overrides.append(f"model.path={model_dir}")

    work = Path(tempfile.mkdtemp(prefix="md_app_latency_"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(ROOT / "app.py"), "--config", args.config, "--port", str(port)]
    cmd += ["--workdir", str(work / "jobs"), "--keep", str(args.requests + 1), *overrides]
    log_path = work / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        startup = wait_ready(base, proc, args.startup_timeout)
        print(f"server ready in {startup:.1f} s (log: {log_path})")
        runs = []
        for i in range(args.requests):
            t = time.perf_counter()
            ans = post_image(
                f"{base}/api/generate", Path(args.image), {"format": "json"}, args.request_timeout
            )
            wall = time.perf_counter() - t
            run = {
                "client_s": round(wall, 3),
                "server_s": ans["summary"]["total_seconds"],
                **split(ans["reports"]),
            }
            run["nfe"] = {s: ans["reports"][s]["nfe"] for s in ("stage1", "stage2")}
            runs.append(run)
            print(f"request {i + 1}: {wall:.2f} s (server {run['server_s']:.2f} s) {split(ans['reports'])}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    warm = [r["client_s"] for r in runs[1:]] or [r["client_s"] for r in runs]
    result = {
        "command": cmd,
        "startup_s": round(startup, 3),
        "requests": runs,
        "warm_median_client_s": round(statistics.median(warm), 3),
        "note": "warm = requests after the first; compare with bench/speed.py's warm total",
    }
    print(json.dumps({k: result[k] for k in ("startup_s", "warm_median_client_s")}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
