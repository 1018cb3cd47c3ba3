"""Cold-start helpers of the one-command run: stage 2's networks warmed during the UV unwrap, and
imports prefetched on a background thread."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cameras import orbit_cameras
from guidance.cuda_graphs import WARMUP_CALLS
from guidance.sir_step import refine
from pipeline import load_config
from pipeline.plans import stage2_plan
from pipeline.prefetch import prefetch
from pipeline.stage2 import warm_stage2_networks
from testing.oracle_tiny import oracle_tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _oracle_tiny_config():
    """tests/data/oracle_tiny.yaml on the shared spot mesh (a stage config that loads in a blink)."""
    return load_config(oracle_tiny_args())


@pytest.fixture
def slow_warmup_threads(monkeypatch) -> list:
    """setup_stage's GPU library warm-up replaced by a 0.5 s sleeping thread; the threads it started."""
    import threading
    import time

    import pipeline.setup

    threads: list = []

    def slow_warmup(device, dtype=torch.float16, preload=()):
        def work():
            time.sleep(0.5)
            for fn in preload:
                fn()

        t = threading.Thread(target=work, daemon=True)
        t.start()
        threads.append(t)
        return t

    monkeypatch.setattr(pipeline.setup, "start_library_warmup", slow_warmup)
    return threads


def _recording(den) -> list[tuple]:
    """Wrap the denoiser's three network runners; returns the list their input signatures go to."""
    seen: list[tuple] = []
    for name in ("_runner", "_vae_encoder", "_vae_decoder"):
        runner = getattr(den, name)
        fn = runner.fn

        def rec(_fn=fn, _name=name, **inputs):
            seen.append((_name, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))))
            return _fn(**inputs)

        runner.fn = rec
    return seen


def test_stage2_warm_up_runs_stage2_shapes_until_captured_and_leaves_no_trace():
    from guidance import load_denoiser
    from testing.random_zero123 import cached_tiny_zero123

    cfg = load_config(
        [
            "--config",
            str(ROOT / "configs" / "image.yaml"),
            f"model.path={cached_tiny_zero123()}",
            "model.dtype=fp32",
            "device=cpu",
            f"input={ROOT.parent / 'shared' / 'data' / 'images' / 'cat_rgba.png'}",
        ]
    )
    den = load_denoiser(cfg, torch.device("cpu"))
    S = den.image_size
    den.set_reference(torch.rand(3, S, S, generator=torch.Generator().manual_seed(1)), 0.0)
    seen = _recording(den)

    # The shapes a real stage-2 refine call sends through the networks.
    plan = stage2_plan(cfg, den)
    cams = orbit_cameras([0.0] * plan.views, np.arange(plan.views) * 45.0, height=S)
    t1, t2 = plan.t_pairs[0]
    refine(den, torch.rand(plan.views, 3, S, S), cams, t1, t2, plan.eta, plan.cfg, plan.grid_steps)
    real = set(seen)
    seen.clear()

    counters = (den.nfe, den.nfe_cfg, den.nfe_uncond, den.nfe_rows)
    rng = torch.get_rng_state()
    warm_stage2_networks(cfg, den)
    assert (den.nfe, den.nfe_cfg, den.nfe_uncond, den.nfe_rows) == counters  # reports unchanged
    assert torch.equal(torch.get_rng_state(), rng)  # no draw from the run's generators
    # Every signature of the real call, each through its eager warm-up calls and the capture.
    assert real and set(seen) == real
    for sig in real:
        assert seen.count(sig) >= WARMUP_CALLS + 1, sig


def test_prefetch_imports_in_the_background_and_ignores_failures():
    name = "json.tool"
    sys.modules.pop(name, None)
    t = prefetch(["no_such_module_here", name])
    t.join(30)
    assert not t.is_alive() and t.daemon
    assert name in sys.modules  # imported after the failed one


def test_library_warmup_is_cuda_only():
    from core.gpu_warmup import start_library_warmup

    assert start_library_warmup(torch.device("cpu")) is None


def test_setup_joins_the_library_warmup_before_any_graph_capture(slow_warmup_threads):
    """setup_stage returns only after the warm-up thread ends: no helper thread may make CUDA calls
    once the SIR loop captures CUDA graphs."""
    import pipeline.setup
    from guidance import load_denoiser

    threads = slow_warmup_threads
    st = pipeline.setup.setup_stage(_oracle_tiny_config(), None, load_denoiser)
    assert st.denoiser is not None and len(threads) == 1
    assert not threads[0].is_alive()
    # A given model (stage 2 of a one-command run) loads nothing: no warm-up thread at all.
    pipeline.setup.setup_stage(_oracle_tiny_config(), st.denoiser, load_denoiser)
    assert len(threads) == 1


def test_git_commit_flags_a_dirty_tree(tmp_path):
    """Benchmarks record the commit that ran; files that differ from it are flagged (a device copy
    of a working tree may carry an older .git)."""
    import os
    import shutil
    import subprocess

    from pipeline import reports

    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def run(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env={**os.environ, **env})

    run("init", "-q")
    run("add", "-A")
    run("commit", "-qm", "x")
    clean = reports.git_commit(repo)
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    (repo / "a.txt").write_text("b\n")
    assert reports.git_commit(repo) == clean + "-dirty"
    assert reports.git_commit(tmp_path) == ""  # not a checkout


def test_one_command_warms_stage2_only_for_a_model_on_cuda_graphs(monkeypatch):
    """The stage-2 warm-up runs for a denoiser that captures CUDA graphs, never for others (the
    oracle, CPU models): for them it would only cost time."""
    import importlib

    i3d = importlib.import_module("pipeline.both_stages")

    calls = []
    monkeypatch.setattr(i3d, "warm_stage2_networks", lambda cfg, den: calls.append(den))

    class Plain:
        pass

    class Graphed:
        cuda_graphs = True

    warm = i3d._warm_stage2(None)
    warm(Plain())
    assert calls == []
    g = Graphed()
    warm(g)
    assert calls == [g]


def test_a_cpu_model_never_reports_cuda_graphs():
    from guidance.models.zero123 import Zero123Denoiser
    from testing.random_zero123 import cached_tiny_zero123

    den = Zero123Denoiser(cached_tiny_zero123(), device="cpu", dtype="fp32", cuda_graph=True)
    assert den.cuda_graphs is False


def test_a_failed_stage2_warm_up_costs_no_stage1_output(tmp_path, monkeypatch, caplog):
    """The warm-up is a head start only: a failure there (e.g. out of memory at stage 2's batch)
    is logged and both stages still run; it used to abort stage 1 before its mesh was written."""
    import importlib

    from guidance import load_denoiser

    i3d = importlib.import_module("pipeline.both_stages")

    def boom(cfg, den):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(i3d, "warm_stage2_networks", boom)
    cfg = load_config(oracle_tiny_args(f"outdir={tmp_path}"))
    oracle = load_denoiser(cfg, torch.device("cpu"))
    oracle.cuda_graphs = True  # as a model on CUDA graphs: the warm-up is attempted
    with caplog.at_level("WARNING"):
        reports = i3d.image_to_3d(cfg, oracle)
    assert Path(reports["stage1"]["outputs"]["mesh"]).is_file()
    assert Path(reports["stage2"]["outputs"]["glb"]).is_file()
    assert any("warm-up" in r.getMessage() and "simulated" in r.getMessage() for r in caplog.records)


def test_setup_joins_the_library_warmup_when_it_fails(monkeypatch, slow_warmup_threads):
    """An error during setup (a full disk, a bad image, a broken checkpoint) still waits for the
    warm-up thread: none is left making CUDA calls while the process reports the error and exits."""
    import pipeline.setup
    from core.errors import UserError
    from guidance import load_denoiser

    threads = slow_warmup_threads

    def no_disk(cfg, device):
        raise UserError("not enough free disk space (simulated)")

    monkeypatch.setattr(pipeline.setup, "preflight", no_disk)
    with pytest.raises(UserError, match="simulated"):
        pipeline.setup.setup_stage(_oracle_tiny_config(), None, load_denoiser)
    assert len(threads) == 1 and not threads[0].is_alive()


def test_setup_runs_the_renderer_preloads_on_the_warmup_thread(slow_warmup_threads):
    """The preloads (the renderers' kernel loads) run on the warm-up thread, with the stage's
    device, and are finished when setup returns."""
    import threading
    import time

    import pipeline.setup
    from guidance import load_denoiser

    calls = []

    def record(device):
        time.sleep(0.2)
        calls.append((device, threading.current_thread() is threading.main_thread()))

    st = pipeline.setup.setup_stage(_oracle_tiny_config(), None, load_denoiser, [record, record])
    assert calls == [(st.device, False), (st.device, False)]


def test_the_real_warmup_survives_a_failing_preload(monkeypatch):
    """core.gpu_warmup swallows a preload's error (no head start, nothing else) and runs the next."""
    import threading

    import core.gpu_warmup as gw

    monkeypatch.setattr(gw, "_touch_libraries", lambda device, dtype: None)
    done = []

    def fails():
        raise RuntimeError("no kernels (simulated)")

    # A CUDA device object is fine here: the library touch is stubbed, nothing reaches a driver.
    t = gw.start_library_warmup(torch.device("cuda"), torch.float16, [fails, lambda: done.append(1)])
    assert isinstance(t, threading.Thread)
    t.join(10)
    assert done == [1]


def test_renderer_preloads_do_nothing_off_cuda(monkeypatch):
    """On a CPU device, or for the torch backends, the preloads import and build nothing."""
    import gs_renderer
    import mesh_renderer
    import mesh_renderer.raster as raster

    monkeypatch.setattr(raster, "_load_nvdiffrast", lambda: pytest.fail("loaded nvdiffrast"))
    monkeypatch.setattr(
        sys.modules["gs_renderer.render"], "gsplat_available", lambda: pytest.fail("loaded gsplat")
    )
    for backend in ("auto", "gsplat", "torch"):
        gs_renderer.preload_kernels(backend, torch.device("cpu"))
    gs_renderer.preload_kernels("torch", torch.device("cuda"))
    for backend in ("auto", "nvdiffrast", "torch"):
        mesh_renderer.preload_kernels(backend, "cpu")
    mesh_renderer.preload_kernels("torch", "cuda")


def test_a_failed_nvdiffrast_preload_is_not_tried_again(monkeypatch, caplog):
    """The warm-up thread's plugin load fails (e.g. a JIT build that cannot compile): the first
    render's availability check reuses that failure instead of paying the build again, reports it
    once, and an explicit nvdiffrast backend still raises it."""
    import torch.utils.cpp_extension  # noqa: F401  (imported before import_module is patched)

    import mesh_renderer.raster as raster

    tries = []
    real_import = raster.importlib.import_module

    def failing_import(name, *args):
        if not name.startswith("nvdiffrast"):
            return real_import(name, *args)
        tries.append(name)
        raise ImportError("plugin build failed (simulated)")

    monkeypatch.setattr(raster, "_DR", None)
    monkeypatch.setattr(raster, "_DR_ERROR", None)
    monkeypatch.setattr(raster, "_DR_LOAD_ERROR", None)
    monkeypatch.setattr(raster.importlib, "import_module", failing_import)
    monkeypatch.setattr(raster.torch.cuda, "is_available", lambda: True)
    raster.preload_kernels("auto", "cuda")
    with caplog.at_level("WARNING", logger="mesh_renderer.raster"):
        assert raster.nvdiffrast_available("cuda") is False
        assert raster.nvdiffrast_available("cuda") is False
    assert len(tries) == 1
    assert sum("nvdiffrast unavailable" in r.message for r in caplog.records) == 1
    with pytest.raises(ImportError, match="simulated"):
        raster._load_nvdiffrast()
    assert len(tries) == 1


def test_a_batch_worker_loads_its_model_with_the_warmup_and_both_renderers_preloads(
    monkeypatch, slow_warmup_threads
):
    """A batch worker keeps one model for many items, loaded outside any stage: its load gets the
    warm-up a stage's own load gets (GPU libraries, then the Gaussian and mesh renderers' kernel
    loads), joined before it returns, so its first item does not pay them (H200: ~2.7 s)."""
    import batch
    import gs_renderer
    import mesh_renderer

    loaded = []
    monkeypatch.setattr(gs_renderer, "preload_kernels", lambda backend, d: loaded.append(("gs", backend, d)))
    monkeypatch.setattr(
        mesh_renderer, "preload_kernels", lambda backend, d: loaded.append(("mesh", backend, d))
    )
    _, load = batch.load_stages()
    cfg = _oracle_tiny_config()
    den = load(cfg, torch.device("cpu"))
    assert den is not None and hasattr(den, "set_reference")
    assert len(slow_warmup_threads) == 1 and not slow_warmup_threads[0].is_alive()
    backends = (cfg.render.gs_backend, cfg.render.mesh_backend)
    assert loaded == [("gs", backends[0], torch.device("cpu")), ("mesh", backends[1], torch.device("cpu"))]


def _image(folder: Path) -> Path:
    """A tiny RGBA image in ``folder``."""
    from PIL import Image

    path = folder / "in.png"
    Image.new("RGBA", (8, 8), (200, 0, 0, 255)).save(path)
    return path


def test_a_batch_worker_model_that_cannot_load_is_one_user_error(tmp_path):
    """The batch worker's load reports a broken model folder as the stages do: one UserError line."""
    import batch
    from core.errors import UserError

    _, load = batch.load_stages()
    cfg = load_config(
        [
            "--config",
            str(ROOT / "configs" / "image.yaml"),
            f"input={_image(tmp_path)}",
            f"model.path={tmp_path}",
        ]
    )
    (tmp_path / "model_index.json").write_text("{not json")  # a model folder whose files do not load
    with pytest.raises(UserError, match=r"^cannot load the zero123 model from .*model\.path") as e:
        load(cfg, torch.device("cpu"))
    assert "\n" not in str(e.value)
