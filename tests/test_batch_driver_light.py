"""The batch driver never imports torch: on an H200 host that import (plus a CUDA context for the
GPU count) kept every worker from starting for ~3-4 s. Light on purpose: no torch at module level,
so the driver process below (and its workers, which run this module's fake stages) stay light."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _fake_image_to_3d(cfg, denoiser):
    """The final ``.glb`` and a stage-1 report (what the driver reads back), nothing else."""
    out, name = Path(cfg.outdir), str(cfg.save_path)
    (out / f"{name}.glb").write_text("glb")
    r = {"seconds": {"sir": 0.1}, "nfe": 1, "outputs": {"glb": str(out / f"{name}.glb")}}
    (out / f"{name}_final_report.json").write_text(json.dumps(r))
    return {"stage1": r, "stage2": r}


def _fake_load(cfg, device):
    return object()


def load_light():
    """The workers' stage loader: fake stages, a model that loads."""
    return _fake_image_to_3d, _fake_load


def test_the_batch_driver_never_imports_torch(tmp_path):
    from tests.fresh_python import imported_after

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        Image.new("RGBA", (16, 16), (60 * i, 0, 0, 255)).save(inp / f"im{i}.png")
    out = tmp_path / "out"
    code = (
        "import functools, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import batch, test_batch_driver_light as t\n"
        "batch.run_workers = functools.partial(batch.run_workers, load=t.load_light)\n"
        f"rc = batch.main(['--config', 'configs/oracle_cpu.yaml', '--no-progress', {str(inp)!r}, "
        f"'--out', {str(out)!r}, '--workers', '2', 'device=auto'])\n"
        "assert rc == 0, rc\n"
    )
    heavy, _ = imported_after(code, ("torch", "pipeline.stage1", "guidance.models.oracle"), timeout=120)
    assert heavy == []
    doc = json.loads((out / "batch_summary.json").read_text())
    assert doc["counts"]["ok"] == 3 and doc["workers"]["count"] == 2
