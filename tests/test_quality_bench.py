"""bench/quality.py: the oracle reconstruction benchmark end to end on one small mesh (CPU, seconds).

The oracle CPU config is shrunk further (tests/data/oracle_tiny.yaml: a few SIR steps at 32-64 px), so the
figures are poor but must be finite and clearly better than an empty render; a broken second mesh
must be reported as failed without stopping the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import quality

ROOT = Path(__file__).resolve().parents[1]

MESH = ROOT / ".." / "shared" / "data" / "meshes" / "suzanne.obj"
TINY_CONFIG = ROOT / "tests" / "data" / "oracle_tiny.yaml"  # oracle_cpu shrunk to seconds
METRICS = [
    "psnr_e0",
    "ssim_e0",
    "psnr_e30",
    "ssim_e30",
    "iou_e0",
    "iou_e30",
    "chamfer_l1",
    "fscore@0.01",
    "fscore@0.02",
]


@pytest.mark.skipif(not MESH.is_file(), reason=f"reference mesh {MESH} not available")
def test_quality_benchmark_one_mesh(tmp_path):
    bad = tmp_path / "broken.obj"
    bad.write_text("this is not an obj file\nf 1 2 3\n")
    out = tmp_path / "quality.json"
    meshes = quality.collect_meshes([str(MESH), str(bad)])
    result = quality.run_benchmark(
        meshes,
        str(TINY_CONFIG),
        [],
        out=out,
        workdir=tmp_path / "work",
        eval_size=64,
        samples=2000,
    )

    data = json.loads(out.read_text())
    for key in (
        "device",
        "device_name",
        "versions",
        "commit",
        "config_path",
        "overrides",
        "config",
        "eval",
        "meshes",
        "means",
        "seconds_total",
        "table",
    ):
        assert key in data, key
    assert "torch" in data["versions"]
    assert data["config"]["guidance"] == "oracle"
    assert data["eval"]["elevations"] == {"e0": 0.0, "e30": -30.0}

    ok, failed = data["meshes"]
    assert failed["name"] == "broken" and failed["status"] == "failed" and failed["error"]
    assert ok["name"] == "suzanne" and ok["status"] == "ok", ok.get("traceback")
    for part in ("coarse", "final"):
        for k in METRICS:
            assert math.isfinite(ok[part][k]), (part, k, ok[part][k])
        assert len(ok[part]["psnr_e0_views"]) == 8 and len(ok[part]["psnr_e30_views"]) == 8
        assert 0.0 <= ok[part]["fscore@0.02"] <= 1.0 and ok[part]["fscore@0.01"] <= ok[part]["fscore@0.02"]
    for k in ("seconds_stage1", "seconds_stage2", "seconds_eval", "seconds"):
        assert ok[k] > 0
    assert Path(ok["outputs"]["final"]).is_file() and Path(ok["outputs"]["coarse"]).is_file()
    # Measured with these overrides: final PSNR e0 18.2 dB, empty render 14.8 dB, CD-L1 0.068.
    assert ok["final"]["psnr_e0"] > 16.0
    assert ok["final"]["psnr_e0"] > ok["baselines"]["psnr_e0_empty"] + 1.5
    assert ok["final"]["iou_e0"] > 0.4
    assert ok["final"]["chamfer_l1"] < 0.15
    assert data["means"]["meshes_ok"] == 1 and data["means"]["meshes_failed"] == 1
    assert data["means"]["final"]["psnr_e0"] == pytest.approx(ok["final"]["psnr_e0"])
    assert "suzanne" in result["table"] and "FAILED" in result["table"]


def test_collect_meshes_folder(tmp_path):
    for name in ("b.obj", "a.glb", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in quality.collect_meshes([str(tmp_path)])] == ["a.glb", "b.obj"]
    with pytest.raises(SystemExit):
        quality.collect_meshes([str(tmp_path / "missing.obj")])


def test_warmup_runs_the_first_mesh_once_untimed_and_unrecorded(tmp_path, monkeypatch):
    """With ``warmup`` the first mesh runs once before the timed loop, into its own folder, and
    is neither recorded nor timed; without it (the CPU default) no extra run happens."""
    calls = []

    def fake_run_one(mesh, config, overrides, outdir, eval_size, samples, quiet):
        calls.append(Path(outdir).name)
        raise RuntimeError("stub")  # recorded as a failed mesh, skipped by the warm-up

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    meshes = [MESH, MESH.with_name("cow.obj")]
    for warmup, expected in ((True, ["_warmup", "suzanne", "cow"]), (None, ["suzanne", "cow"])):
        calls.clear()
        result = quality.run_benchmark(
            meshes, str(TINY_CONFIG), [], out=tmp_path / "q.json", workdir=tmp_path / "w", warmup=warmup
        )
        assert calls == expected
        assert [r["name"] for r in result["meshes"]] == ["suzanne", "cow"]
        assert result["warmup"] is bool(warmup)
