"""Cold-start benchmark: the README's commands exactly as a user types them, each a fresh process.

    python -m bench.cold [--repeat 3] [--model-dir /tmp/md_zero123_full] [--out bench/results/cold_<gpu>.json]

Times, per repeat, from process start to the ``.glb`` on disk:

* ``one_command``: ``python main.py --config configs/image.yaml input=IMG model.path=DIR ...``
* ``two_commands``: ``python main_gs.py ...`` then ``python main_mesh.py ...`` (the sum, and each)

with the phases each run reports (``seconds``), and the time before the first phase (interpreter,
imports, CUDA start: the stage-1 report's ``started_unix`` minus the process start). The model is
the full-size Stable Zero123 architecture with random weights, saved once as a local folder (the
cost of loading and calling a network does not depend on its weights); a first untimed run builds
the JIT kernels (gsplat, nvdiffrast). ``--set key=value`` passes overrides to every command (e.g.
``--set model.cuda_graph=false``) to compare start-up strategies.

Compiled bytecode: a user's install has it (pip compiles packages at install time; the first run
writes the project's ``__pycache__``). Where site-packages is read-only (as on shared GPU hosts)
every fresh process would compile ~2000 modules again (about 5 s on an H200 host), a cost no user
pays twice, so the runs get a writable ``PYTHONPYCACHEPREFIX``, filled by the untimed first run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.reports import git_commit, versions

ROOT = Path(__file__).resolve().parent.parent


def ensure_model(folder: Path) -> float:
    """Write the random full-size Zero123 folder unless present; returns the seconds it took."""
    if (folder / "model_index.json").is_file():
        return 0.0
    import torch

    from testing.random_zero123 import save_zero123

    t0 = time.perf_counter()
    save_zero123(folder, "full", dtype=torch.float16)  # the Hub files are fp16
    return time.perf_counter() - t0


#: Where the runs keep compiled bytecode (see the module docstring); the same folder across invocations.
PYCACHE = Path(tempfile.gettempdir()) / "md-cold-pycache"


def bytecode_next_to_sources() -> bool:
    """True when torch's own compiled bytecode sits next to its sources (a normal pip install)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    return bool(spec and spec.origin and Path(importlib.util.cache_from_source(spec.origin)).is_file())


def run(cmd: list[str], glb: Path | None) -> dict:
    """Run ``cmd`` from the repo root; wall seconds to exit and (if given) to ``glb`` appearing."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = None
    while proc.poll() is None:
        if glb is not None and seen is None and glb.is_file():
            seen = time.time()
        time.sleep(0.01)
    out = proc.stdout.read() if proc.stdout else ""
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    if glb is not None and seen is None and glb.is_file():
        seen = end
    # Warnings (a CUDA-graph capture falling back to eager, xatlas past its budget) explain outliers.
    warnings = [line.strip() for line in out.splitlines() if "WARNING" in line]
    return {
        "start_unix": t0,
        "exit_s": end - t0,
        "glb_s": (seen - t0) if seen else None,
        "warnings": warnings,
    }


def report(path: Path) -> dict:
    """A stage report's phases and timestamps."""
    r = json.loads(path.read_text())
    return {
        "seconds": r["seconds"],
        "started_unix": r.get("started_unix"),
        "finished_unix": r.get("finished_unix"),
    }


def one_repeat(base: list[str], outdir: Path, i: int, two: bool = True) -> dict:
    """Both ways of running, on fresh output folders."""
    res: dict = {}
    o1 = outdir / f"one{i}"
    args = [*base, f"outdir={o1}", "save_path=cold"]
    r = run([sys.executable, "main.py", *args], o1 / "cold.glb")
    s1, s2 = report(o1 / "cold_report.json"), report(o1 / "cold_final_report.json")
    r["before_first_phase_s"] = s1["started_unix"] - r["start_unix"]
    r["stage1"], r["stage2"] = s1["seconds"], s2["seconds"]
    res["one_command"] = r
    if not two:
        return res
    o2 = outdir / f"two{i}"
    args = [*base, f"outdir={o2}", "save_path=cold"]
    g = run([sys.executable, "main_gs.py", *args], None)
    g["before_first_phase_s"] = report(o2 / "cold_report.json")["started_unix"] - g["start_unix"]
    g["phases"] = report(o2 / "cold_report.json")["seconds"]
    m = run([sys.executable, "main_mesh.py", *args], o2 / "cold.glb")
    m["before_first_phase_s"] = report(o2 / "cold_final_report.json")["started_unix"] - m["start_unix"]
    m["phases"] = report(o2 / "cold_final_report.json")["seconds"]
    res["two_commands"] = {"main_gs": g, "main_mesh": m, "total_s": g["exit_s"] + m["glb_s"]}
    return res


def summary(runs: list[dict]) -> dict:
    """Medians over repeats of the headline figures."""

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 3)

    one = [r["one_command"] for r in runs]
    out = {
        "one_command_glb_s": med([r["glb_s"] for r in one]),
        "one_command_before_first_phase_s": med([r["before_first_phase_s"] for r in one]),
        "one_command_load_model_s": med([r["stage1"]["load_model"] for r in one]),
    }
    if "two_commands" not in runs[0]:
        return out
    two = [r["two_commands"] for r in runs]
    return out | {
        "two_commands_total_s": med([r["total_s"] for r in two]),
        "main_gs_load_model_s": med([r["main_gs"]["phases"]["load_model"] for r in two]),
        "main_mesh_load_model_s": med([r["main_mesh"]["phases"]["load_model"] for r in two]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the medians and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--image", default="../shared/data/images/cat_rgba.png")
    ap.add_argument("--config", default="configs/image.yaml")
    ap.add_argument(
        "--model-dir",
        default=str(Path(tempfile.gettempdir()) / "md_full_zero123"),
        help="'none': no model.path",
    )
    ap.add_argument("--set", action="append", default=[], help="key=value passed to every command")
    ap.add_argument("--one-only", action="store_true", help="time only the one-command run")
    ap.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed first run (kernels built and bytecode compiled by an earlier invocation)",
    )
    ap.add_argument("--out", default="", help="JSON path (default bench/results/cold_<gpu>.json)")
    args = ap.parse_args(argv)

    base = ["--config", args.config, f"input={args.image}", "quiet=true", *args.set]
    write_s = 0.0
    if args.model_dir != "none":  # "none": a config that needs no weights (the oracle), for a smoke test
        write_s = ensure_model(Path(args.model_dir))
        base.insert(3, f"model.path={args.model_dir}")
    with tempfile.TemporaryDirectory(prefix="md-cold-") as tmp:
        outdir = Path(tmp)
        if not args.no_warmup:  # builds the JIT kernels
            run([sys.executable, "main.py", *base, f"outdir={outdir / 'warmup'}", "save_path=w"], None)
        runs = [one_repeat(base, outdir, i, two=not args.one_only) for i in range(args.repeat)]
    result = {
        "benchmark": "cold",
        "commands": {
            "one_command": "python main.py " + " ".join(base),
            "two_commands": "python main_gs.py ... && python main_mesh.py ... (same arguments)",
        },
        "model_write_s": round(write_s, 2),
        "versions": versions(),
        "commit": git_commit(),
        "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}
        | {"PYTHONPYCACHEPREFIX": str(PYCACHE), "bytecode_next_to_sources": bytecode_next_to_sources()},
        "summary": summary(runs),
        "runs": runs,
    }
    print(json.dumps(result["summary"], indent=2))
    gpu = versions().get("gpu", "cpu").split()[-1].lower()
    out = Path(args.out or ROOT / "bench" / "results" / f"cold_{gpu}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
