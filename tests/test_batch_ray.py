"""batch.py --ray: a local 2-CPU Ray cluster running real stages (oracle, tiny sizes) on CPU actors.

One module-scoped cluster (Ray starts slowly on 2 cores); its processes must all be gone after the
module. The killed-worker test kills real actor processes mid-item.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

import batch
from pipeline.batch_jobs import BatchWorker

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = str(ROOT / "tests" / "data" / "oracle_tiny.yaml")
SHARED_IMAGES = ROOT / ".." / "shared" / "data" / "images"
REAL = ("00_zero123_lysol_rgba.png", "01_wild_hydrant_rgba.png")
BROKEN = "02_zero123_spyro_rgba.png"  # a real file, truncated: it cannot decode

pytestmark = pytest.mark.slow
MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"  # Ray reads this exact (lower-case) name


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for the whole module; afterwards none of its processes lives."""
    # Ray's memory monitor kills workers when the (shared) machine runs short: not a worker death
    # these tests stage, so it is off for this cluster.
    saved = os.environ.get(MEMORY_MONITOR)
    os.environ[MEMORY_MONITOR] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    node = ray._private.worker._global_node
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop(MEMORY_MONITOR)
    else:
        os.environ[MEMORY_MONITOR] = saved
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive, f"Ray processes survived shutdown: {alive}"


def _inputs(folder: Path, names=REAL, broken: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(SHARED_IMAGES / name, folder / name)
    if broken:
        data = (SHARED_IMAGES / BROKEN).read_bytes()
        (folder / BROKEN).write_bytes(data[: len(data) // 3])
    return folder


def _run(inp: Path, out: Path, *extra: str) -> int:
    return batch.main(
        [
            "--config",
            TINY_CFG,
            str(inp),
            "--out",
            str(out),
            "--ray",
            "--workers",
            "2",
            "--no-progress",
            *extra,
        ]
    )


def _summary(out: Path) -> tuple[dict, list[dict]]:
    doc = json.loads((out / "batch_summary.json").read_text())
    with open(out / "batch_summary.csv", newline="") as fh:
        return doc, list(csv.DictReader(fh))


def _no_leftovers(out: Path) -> None:
    """Nothing half-written: no staging folders or temporaries in --out."""
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_ray_batch_sets_failure_summary_and_resume(cluster, tmp_path):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    assert _run(inp, out) == 1
    doc, rows = _summary(out)
    assert doc["counts"] == {"total": 3, "ok": 2, "failed": 1, "skipped": 0, "pending": 0}
    assert doc["ray"]["workers"] == 2 and doc["ray"]["resources"] == {"num_cpus": 1}
    by = {r["name"]: r for r in doc["items"]}
    for name in (Path(n).stem for n in REAL):
        rec = by[name]
        assert rec["status"] == "ok" and rec["attempts"] == 1 and rec["nfe"] > 0
        final = out / f"{name}_final_report.json"
        assert batch.item_done(out, name)
        report = json.loads(final.read_text())
        # the driver's paths, not the worker's temporary ones
        assert report["outputs"]["glb"] == str(out / f"{name}.glb") == rec["outputs"]["stage2"]["glb"]
        assert report["config"]["outdir"] == str(out) and report["config"]["input"] == str(
            inp / f"{name}.png"
        )
        assert Path(rec["outputs"]["stage1"]["ply"]).read_bytes()[:3] == b"ply"
        assert (out / f"{name}.glb").read_bytes()[:4] == b"glTF"
    bad = by[Path(BROKEN).stem]
    assert bad["status"] == "failed" and "Traceback" in Path(bad["error_log"]).read_text()
    assert not list(out.glob(f"{Path(BROKEN).stem}*.glb"))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    _no_leftovers(out)

    # Re-run: done items are skipped (figures read back), the broken one is tried again.
    assert _run(inp, out) == 1
    doc, _ = _summary(out)
    assert {r["name"]: r["status"] for r in doc["items"]} == {
        "00_zero123_lysol_rgba": "skipped",
        "01_wild_hydrant_rgba": "skipped",
        "02_zero123_spyro_rgba": "failed",
    }
    assert doc["items"][0]["nfe"] == by["00_zero123_lysol_rgba"]["nfe"]

    # A final set missing a file is not done (the next run redoes the item).
    (out / "01_wild_hydrant_rgba.glb").unlink()
    assert not batch.item_done(out, "01_wild_hydrant_rgba") and batch.item_done(out, "00_zero123_lysol_rgba")
    assert batch.main(["--config", TINY_CFG, str(inp), "--out", str(out), "--dry-run"]) == 0


def _killing_worker(markers: Path) -> type:
    """A worker that kills its own process mid-item: once for ``00_*``, at every attempt for ``01_*``.

    Defined in a function so Ray ships the class (and ``markers``) by value to the actor processes.
    """

    class KillingWorker(BatchWorker):
        def stages(self, cfg):
            name = str(cfg.save_path)
            flag = markers / name
            if name.startswith("01_") or not flag.exists():
                flag.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().stages(cfg)

    return KillingWorker


def test_ray_worker_killed_mid_item_is_retried(cluster, tmp_path):
    inp, out = _inputs(tmp_path / "in", broken=False), tmp_path / "out"
    markers = tmp_path / "markers"
    markers.mkdir()
    items = batch.collect_items([str(inp)])
    records = batch.run_ray(
        items,
        TINY_CFG,
        [],
        out,
        show_progress=False,
        workers=2,
        max_retries=1,
        worker_cls=_killing_worker(markers),
    )
    by = {r["name"]: r for r in records}
    ok, dead = by["00_zero123_lysol_rgba"], by["01_wild_hydrant_rgba"]
    assert ok["status"] == "ok" and ok["attempts"] == 2 and batch.item_done(out, ok["name"])
    assert dead["status"] == "failed" and dead["attempts"] == 2 and "worker died 2 times" in dead["error"]
    assert Path(dead["error_log"]).is_file() and not list(out.glob("01_*.glb"))
    doc, _ = _summary(out)
    assert doc["counts"]["ok"] == 1 and doc["counts"]["failed"] == 1
    _no_leftovers(out)
