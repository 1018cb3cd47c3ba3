"""batch.py --mps: an MPS control daemon for workers sharing a (faked) GPU, handed to real workers.

The GPU is faked in the driver (``batch._visible_gpus``); the control binary is the recording fake
of tests/mps_fake.py; the workers are real spawned processes running fake stages that write the
MPS environment they see into their reports.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch
from core.mps import CONTROL, LOG_ENV, PIPE_ENV
from tests import mps_fake

ROOT = Path(__file__).resolve().parents[1]
ORACLE_CFG = str(ROOT / "configs" / "oracle_cpu.yaml")


def _env_stages(cfg, denoiser):
    """Fake stages: a complete final set whose report holds the worker's MPS/GPU environment."""
    name, out = str(cfg.save_path), Path(cfg.outdir)
    seen = {k: os.environ.get(k) for k in (PIPE_ENV, LOG_ENV, "CUDA_VISIBLE_DEVICES")}
    r1 = {"seconds": 1.0, "nfe": 1, "outputs": {}}
    (out / f"{name}_report.json").write_text(json.dumps(r1))
    (out / f"{name}.glb").write_text("glb")
    r2 = {"seconds": 1.0, "nfe": 1, "env": seen, "outputs": {"glb": str(out / f"{name}.glb")}}
    (out / f"{name}_final_report.json").write_text(json.dumps(r2))
    return {"stage1": r1, "stage2": r2}


def load_env_stages():
    """The workers' stage loader: :func:`_env_stages` and a model that loads."""
    return _env_stages, lambda cfg, device: object()


def _inputs(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 4), 255, np.uint8)).save(folder / f"{'abcd'[i]}_rgba.png")
    return folder


def _main(monkeypatch, *args: str, gpus: int = 1) -> int:
    """``batch.main(args)`` with ``gpus`` faked GPUs in the driver and the env-recording stages in the workers."""
    monkeypatch.setattr(batch, "_visible_gpus", lambda device: gpus)
    monkeypatch.setattr(batch, "run_workers", functools.partial(batch.run_workers, load=load_env_stages))
    return batch.main(["--config", ORACLE_CFG, "--no-progress", *args])


@pytest.mark.slow  # four worker processes
def test_workers_sharing_a_gpu_run_as_clients_of_a_daemon_started_and_stopped_for_them(
    tmp_path, monkeypatch, caplog
):
    calls = mps_fake.install(tmp_path, monkeypatch)
    # The daemon's server numbers the user's GPUs 0, 1, ...: a worker on the user's GPU 5 is told "0".
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="microdreamer.batch"):
        assert _main(monkeypatch, str(inp), "--out", str(out), "--workers", "2") == 0
    [(argv, _, pipe), quit_call] = mps_fake.calls(calls)
    assert argv == "-d" and quit_call == ("", "quit", pipe)  # started once, stopped with the same pipe
    assert Path(pipe).name == "pipe" and not Path(pipe).parent.exists()  # its private folder removed
    doc = json.loads((out / "batch_summary.json").read_text())
    assert doc["counts"]["ok"] == 2
    assert doc["mps"] == {
        "used": True,
        "started": True,
        "pipe_dir": pipe,
        "reason": "2 workers share 1 GPU(s)",
    }
    assert doc["workers"]["gpus"] == ["0", "0"]
    for name in ("a_rgba", "b_rgba"):  # each worker was an MPS client of that daemon
        seen = json.loads((out / f"{name}_final_report.json").read_text())["env"]
        assert seen == {PIPE_ENV: pipe, LOG_ENV: str(Path(pipe).parent / "log"), "CUDA_VISIBLE_DEVICES": "0"}
    assert f"MPS: 2 workers share GPU 0 through an MPS control daemon (pipe folder {pipe})" in caplog.messages
    assert PIPE_ENV not in os.environ  # the driver itself is no client

    # On the CPU (no GPU faked) the same batch starts nothing and says so in the summary.
    assert _main(monkeypatch, str(inp), "--out", str(out), "--workers", "2", "--force", gpus=0) == 0
    assert len(mps_fake.calls(calls)) == 2
    doc = json.loads((out / "batch_summary.json").read_text())
    assert doc["mps"]["used"] is False and doc["mps"]["reason"] == "the workers do not run on a CUDA GPU"
    seen = json.loads((out / "a_rgba_final_report.json").read_text())["env"]
    assert seen[PIPE_ENV] is None


def test_mps_on_without_the_binary_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no control binary (python itself runs by full path)
    monkeypatch.delenv(PIPE_ENV, raising=False)
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    assert _main(monkeypatch, str(inp), "--out", str(out), "--workers", "2", "--mps", "on") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --mps on: {CONTROL} is not on PATH (it comes with the NVIDIA driver)"
    ]


def test_mps_on_with_a_failing_daemon_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    calls = mps_fake.install(tmp_path, monkeypatch, mode="fail")
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    assert _main(monkeypatch, str(inp), "--out", str(out), "--workers", "3", "--mps", "on") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --mps on: cannot start the MPS control daemon: {CONTROL} -d exited with code 1: "
        "fake daemon: cannot start"
    ]
    assert [c[:2] for c in mps_fake.calls(calls)] == [("-d", ""), ("", "quit")]


def test_plain_and_ray_paths_never_start_mps(tmp_path, monkeypatch):
    calls = mps_fake.install(tmp_path, monkeypatch)
    monkeypatch.setattr(batch, "_visible_gpus", lambda device: 1)
    monkeypatch.setattr(batch, "run_ray", lambda items, *a, **k: [])
    inp = _inputs(tmp_path / "in")
    monkeypatch.setattr(batch, "load_stages", load_env_stages)  # the plain path's stages, in this process
    for extra in (["--workers", "1"], ["--ray", "--workers", "3"]):
        argv = [
            "--config",
            ORACLE_CFG,
            "--no-progress",
            str(inp),
            "--out",
            str(tmp_path / "o"),
            "--mps",
            "on",
        ]
        assert batch.main([*argv, *extra]) == 0
    assert mps_fake.calls(calls) == []
    doc = json.loads((tmp_path / "o" / "batch_summary.json").read_text())
    assert doc["counts"]["ok"] == 2 and "mps" not in doc


def _cuda_failing_stages(cfg, denoiser):
    """Fake stages failing as a CUDA client that cannot reach its MPS server would."""
    raise RuntimeError("CUDA error: MPS client failed to connect to the MPS control daemon or the MPS server")


def load_cuda_failing_stages():
    """The workers' stage loader: :func:`_cuda_failing_stages` and a model that loads."""
    return _cuda_failing_stages, lambda cfg, device: object()


def test_a_cuda_failure_under_our_daemon_points_to_mps_off_once(tmp_path, monkeypatch, caplog):
    mps_fake.install(tmp_path, monkeypatch)
    monkeypatch.setattr(batch, "_visible_gpus", lambda device: 1)
    monkeypatch.setattr(
        batch, "run_workers", functools.partial(batch.run_workers, load=load_cuda_failing_stages)
    )
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    hint = "the workers run as clients of an MPS daemon: if CUDA cannot start under MPS on this machine, run again with --mps off"
    with caplog.at_level(logging.INFO, logger="microdreamer.batch"):
        code = batch.main(
            ["--config", ORACLE_CFG, "--no-progress", str(inp), "--out", str(out), "--workers", "2"]
        )
    assert code != 0
    assert json.loads((out / "batch_summary.json").read_text())["counts"]["failed"] == 2
    assert caplog.messages.count(hint) == 1  # both items failed, said once
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="microdreamer.batch"):  # without MPS, no such hint
        batch.main(
            [
                "--config",
                ORACLE_CFG,
                "--no-progress",
                str(inp),
                "--out",
                str(out),
                "--workers",
                "2",
                "--mps",
                "off",
                "--force",
            ]
        )
    assert hint not in caplog.messages
