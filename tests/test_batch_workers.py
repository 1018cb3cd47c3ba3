"""batch.py --workers N without Ray: worker processes on this machine, the driver keeping the summary.

The plumbing (spread, a killed worker, a model that cannot load, resume) runs fake stages in real
spawned workers (the loaders below are module-level, so a worker imports them by name); one slow
test runs the real stages (oracle, tiny sizes) and checks the outputs are those of the plain path.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch
from core.errors import UserError
from core.outputs import remove_stale

ROOT = Path(__file__).resolve().parents[1]
ORACLE_CFG = str(ROOT / "configs" / "oracle_cpu.yaml")
TINY_CFG = str(ROOT / "tests" / "data" / "oracle_tiny.yaml")
SHARED_IMAGES = ROOT / ".." / "shared" / "data" / "images"
DIE_ON = "MD_TEST_WORKER_DIES_ON"  # the fake stages end their process with code 3 on these items (a,b)
INTERRUPT_ON = "MD_TEST_INTERRUPT_ON"  # the fake stages press Ctrl-C in the driver on this item
DIE_AFTER = "MD_TEST_WORKER_DIES_AFTER"  # the fake stages end their process 0.3 s after these items
LOAD_LOG = "MD_TEST_LOAD_LOG"  # the dying model load appends its pid to this file
SIGNAL = "MD_TEST_SIGNAL"  # the signal the fake stages send the driver then (default SIGINT)
PROBE = "MD_TEST_PROBE"  # the fake stages copy it into their report (the driver's environment reaches them)
DRIVER_PID = "MD_TEST_DRIVER_PID"  # the driver's pid (a forked worker's parent is the fork server)
PROBE_MODULE = "MD_TEST_PROBE_MODULE"  # the fake stages copy this module's VALUE into their report
KILL_SERVER_ON = (
    "MD_TEST_KILL_SERVER_ON"  # the fake stages SIGKILL their fork server on this item, then run on
)


# ------------------------------------------------------------------ fake stages (run in the workers)
def _fake_image_to_3d(cfg, denoiser):
    """Both stages' real output names, with the worker's pid in the reports; dies on ``$DIE_ON``."""
    name, out = str(cfg.save_path), Path(cfg.outdir)
    Image.open(cfg.input).load()
    (out / f"{name}_model.ply").write_text("ply")
    r1 = {
        "seconds": {"sir": 1.5},
        "nfe": 10,
        "pid": os.getpid(),
        "probe": os.environ.get(PROBE),
        "outputs": {"ply": str(out / f"{name}_model.ply")},
    }
    if os.environ.get(PROBE_MODULE):
        import importlib

        r1["module_value"] = importlib.import_module(os.environ[PROBE_MODULE]).VALUE
    (out / f"{name}_report.json").write_text(json.dumps(r1))
    if name in os.environ.get(DIE_ON, "").split(","):
        os._exit(3)  # as a segfault or the OOM killer would: no answer, no cleanup
    if name == os.environ.get(KILL_SERVER_ON):  # the OOM killer (or a pkill) takes the fork server
        import signal
        import time

        from core.fileio import atomic_path

        (out / f"{name}.pid").write_text(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)
        with atomic_path(out / f"{name}.glb") as tmp:
            tmp.write_text("half a glb")
            time.sleep(60)  # computing on, its exit status gone with the server
    if name == os.environ.get(INTERRUPT_ON):
        import signal
        import time

        from core.fileio import atomic_path

        (out / f"{name}.pid").write_text(str(os.getpid()))
        with atomic_path(out / f"{name}.glb") as tmp:  # mid-write, as a real stage would be
            tmp.write_text("half a glb")
            sig = getattr(signal, os.environ.get(SIGNAL, "SIGINT"))
            os.kill(int(os.environ[DRIVER_PID]), sig)
            time.sleep(60)  # busy until the driver ends this worker
    if name in os.environ.get(DIE_AFTER, "").split(","):
        import threading

        threading.Timer(0.3, os._exit, (3,)).start()  # dies just after answering, before its next message
    (out / f"{name}.glb").write_text("glb")
    r2 = {"seconds": {"sir": 0.5}, "nfe": 5, "pid": os.getpid(), "outputs": {"glb": str(out / f"{name}.glb")}}
    (out / f"{name}_final_report.json").write_text(json.dumps(r2))
    return {"stage1": r1, "stage2": r2}


def _fake_load_denoiser(cfg, device):
    return object()


def _broken_load_denoiser(cfg, device):
    raise UserError("cannot load model x")


def _dying_load_denoiser(cfg, device):
    """A model load that ends its process (a crash in native code, the OOM killer), noted in ``$LOAD_LOG``."""
    with open(os.environ[LOAD_LOG], "a") as f:
        f.write(f"{os.getpid()}\n")
    os._exit(7)


def load_dying():
    """The workers' stage loader: a model whose load kills the process."""
    return _fake_image_to_3d, _dying_load_denoiser


def _first_load_only(cfg, device):
    """Only the first model load of the batch succeeds (the one to create ``$LOAD_LOG.first``)."""
    try:
        os.close(os.open(os.environ[LOAD_LOG] + ".first", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        _dying_load_denoiser(cfg, device)
    return object()


def load_once():
    """The workers' stage loader: the first model load works, every later one kills its process."""
    return _fake_image_to_3d, _first_load_only


def load_fake():
    """The workers' stage loader: fake stages, a model that loads."""
    return _fake_image_to_3d, _fake_load_denoiser


def load_broken():
    """The workers' stage loader: a model that cannot load."""
    return _fake_image_to_3d, _broken_load_denoiser


def _inputs(folder: Path, names=("a_rgba", "b_rgba", "c_rgba", "d_rgba")) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        img = np.zeros((16, 16, 4), np.uint8)
        img[4:12, 4:12] = (40 * i, 0, 0, 255)
        Image.fromarray(img).save(folder / f"{name}.png")
    return folder


def _main(monkeypatch, load, *args: str) -> int:
    """``batch.main(args)`` with the workers' stages loaded by ``load``."""
    monkeypatch.setattr(batch, "run_workers", functools.partial(batch.run_workers, load=load))
    return batch.main(["--config", ORACLE_CFG, "--no-progress", *args])


def _summary(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text())


@pytest.fixture
def fresh_fork_server():
    """No fork server left running by an earlier test: the test's batch starts its own (its preload)."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()
    yield
    forkserver._forkserver._stop()


def _module(folder: Path, name: str, source: str, monkeypatch) -> None:
    """Module ``name`` of ``source`` in ``folder``, importable here (and so in the fork server and workers)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))


# --------------------------------------------------------------------------------------- pure parts
def test_worker_gpus_spread_and_map_inside_the_users_list():
    assert batch.worker_gpus(4, 2, None) == ["0", "1", "0", "1"]
    assert batch.worker_gpus(3, 1, None) == ["0", "0", "0"]  # several workers share the one GPU
    assert batch.worker_gpus(3, 2, "5, 7") == ["5", "7", "5"]  # inside the user's CUDA_VISIBLE_DEVICES
    assert batch.worker_gpus(2, 2, "GPU-aa,GPU-bb,GPU-cc") == ["GPU-aa", "GPU-bb"]  # torch saw 2 of them
    assert batch.worker_gpus(2, 0, "0,1") == [None, None]  # CPU (or cuda:N): environment unchanged


def test_worker_threads_share_the_cores_unless_the_user_chose():
    assert batch.worker_threads(3, 16, {}) == 5
    assert batch.worker_threads(4, 2, {}) == 1
    assert batch.worker_threads(2, 16, {"OMP_NUM_THREADS": "3"}) is None


def test_environ_sets_and_restores(monkeypatch):
    monkeypatch.setenv("MD_X", "old")
    monkeypatch.delenv("MD_Y", raising=False)
    with batch._environ({"MD_X": "new", "MD_Y": "y", "MD_Z": None}):
        assert os.environ["MD_X"] == "new" and os.environ["MD_Y"] == "y" and "MD_Z" not in os.environ
    assert os.environ["MD_X"] == "old" and "MD_Y" not in os.environ


def test_apply_environ_replaces_the_environment_and_sets_torch_threads(monkeypatch):
    import torch

    saved, threads = dict(os.environ), torch.get_num_threads()
    try:
        batch._apply_environ({"MD_ONLY": "1", "OMP_NUM_THREADS": "3", "PATH": saved.get("PATH", "")})
        assert os.environ.get("MD_ONLY") == "1" and "HOME" not in os.environ
        assert torch.get_num_threads() == 3
    finally:
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)


def test_fork_server_preload_starts_no_cuda():
    """The fork server imports the stages and every model module, then forks workers: none of those
    imports may ask CUDA anything (torch then refuses CUDA in every forked worker: "Cannot
    re-initialize CUDA in forked subprocess")."""
    import subprocess
    import sys

    from guidance.models import BUILTIN

    mods = [*batch.STAGE_MODULES, *(spec.load.module for spec in BUILTIN)]
    code = (
        "import sys, torch\n"
        "calls = []\n"
        "for name in ('_cuda_getDeviceCount', '_cuda_init'):\n"
        "    if hasattr(torch._C, name):\n"
        "        f = getattr(torch._C, name)\n"
        "        setattr(torch._C, name, lambda *a, f=f, n=name: (calls.append(n), f(*a))[1])\n"
        "for m in sys.argv[1:]:\n"
        "    __import__(m)\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('calls', calls)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *mods], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "calls []" in r.stdout, r.stdout


def test_preload_is_the_stages_and_the_configs_model_for_the_default_loader():
    assert batch._preload_modules(ORACLE_CFG, [], None) == [*batch.STAGE_MODULES, "guidance.models.oracle"]
    assert batch._preload_modules(ORACLE_CFG, ["guidance=zero123"], None)[-1] == "guidance.models.zero123"
    assert batch._preload_modules(ORACLE_CFG, [], load_fake) == []  # a custom loader imports its own


def test_death_message():
    assert batch._death_message(3) == "worker process died (exit code 3)"
    assert batch._death_message(-9) == "worker process died (exit code -9, SIGKILL)"


# ---------------------------------------------------------------------------- workers, fake stages
@pytest.mark.slow  # five worker processes, each importing torch (~3 s on 2 cores)
def test_workers_one_summary_spread_and_resume(tmp_path, monkeypatch, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 0
    doc = _summary(out)
    assert doc["counts"] == {"total": 4, "ok": 4, "failed": 0, "skipped": 0, "pending": 0}
    assert doc["workers"]["count"] == 2 and doc["workers"]["gpus"] == [None, None]
    by = {r["name"]: r for r in doc["items"]}
    assert all(r["nfe"] == 15 and r["seconds_stage1"] == 1.5 and r["seconds"] >= 0 for r in by.values())
    assert by["a_rgba"]["outputs"]["stage2"]["glb"] == str(out / "a_rgba.glb")
    pids = {json.loads((out / f"{n}_report.json").read_text())["pid"] for n in by}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, neither the driver
    assert "4 ok, 0 skipped, 0 failed of 4" in capsys.readouterr().out

    # Workers forked by a fork server started earlier still run in the driver's environment of now.
    monkeypatch.setenv(PROBE, "set after the fork server started")
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2", "--force") == 0
    probes = {json.loads((out / f"{n}_report.json").read_text())["probe"] for n in by}
    assert probes == {"set after the fork server started"}

    # Resume: complete items are skipped (figures read back), one redone; no worker runs a skipped item.
    (out / "c_rgba.glb").unlink()
    stamp = (out / "a_rgba_report.json").stat().st_mtime_ns
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 0
    doc = _summary(out)
    assert {r["name"]: r["status"] for r in doc["items"]} == {
        "a_rgba": "skipped",
        "b_rgba": "skipped",
        "c_rgba": "ok",
        "d_rgba": "skipped",
    }
    assert doc["workers"]["count"] == 1  # never more workers than items to run
    assert (out / "a_rgba_report.json").stat().st_mtime_ns == stamp and doc["items"][0]["nfe"] == 15

    # With the shard's items only: shard 1/2 of a, b, c, d is b, d.
    assert (
        _main(
            monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "3", "--shard", "1/2", "--force"
        )
        == 0
    )
    shard = json.loads((out / "batch_summary.shard-1-of-2.json").read_text())
    assert [r["name"] for r in shard["items"]] == ["b_rgba", "d_rgba"] and shard["counts"]["ok"] == 2


@pytest.mark.slow  # four worker processes
def test_killed_workers_fail_their_items_and_fresh_ones_carry_on(tmp_path, monkeypatch, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    # Each of the 2 first workers is handed one of a, b at its start and dies on it, so c and d
    # can only finish on replacement workers.
    monkeypatch.setenv(DIE_ON, "a_rgba,b_rgba")
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 1
    doc = _summary(out)
    assert doc["counts"] == {"total": 4, "ok": 2, "failed": 2, "skipped": 0, "pending": 0}
    by = {r["name"]: r for r in doc["items"]}
    for name in ("a_rgba", "b_rgba"):
        bad = by[name]
        assert bad["status"] == "failed" and bad["error"] == "worker process died (exit code 3)"
        assert "worker process died (exit code 3)" in Path(bad["error_log"]).read_text()
        assert bad["nfe_stage1"] == 10 and bad["nfe_stage2"] is None  # stage 1 finished in this run
        assert not (out / f"{name}.glb").exists()
    assert by["c_rgba"]["status"] == by["d_rgba"]["status"] == "ok"
    assert batch.item_done(out, "c_rgba") and batch.item_done(out, "d_rgba")
    pids = {json.loads((out / f"{n}_rgba_report.json").read_text())["pid"] for n in "abcd"}
    assert len(pids) >= 3  # two dead workers and at least one replacement
    err = capsys.readouterr().err
    assert "failed: a_rgba: worker process died (exit code 3)" in err and "failed: b_rgba" in err


@pytest.mark.slow  # two worker processes
def test_a_worker_dying_after_its_last_answer_is_no_crash(tmp_path, monkeypatch, capsys):
    """Told to stop after its answer was read, a worker already dead is simply retired."""
    import time

    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba")), tmp_path / "out"
    monkeypatch.setenv(DIE_AFTER, "a_rgba")
    log_result = batch._log_result

    def slow_log(rec, idx, total, name):  # the driver busy with a's answer while a's worker dies
        if name == "a_rgba":
            time.sleep(1.5)
        log_result(rec, idx, total, name)

    monkeypatch.setattr(batch, "_log_result", slow_log)
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 0
    assert _summary(out)["counts"]["ok"] == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow  # two worker processes
def test_ctrl_c_stops_the_workers_and_writes_the_summary(tmp_path, monkeypatch, capsys):
    import multiprocessing
    import time

    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba")), tmp_path / "out"
    monkeypatch.setenv(INTERRUPT_ON, "b_rgba")
    monkeypatch.setenv(DRIVER_PID, str(os.getpid()))
    t0 = time.perf_counter()
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 130
    assert time.perf_counter() - t0 < 50  # the sleeping worker was ended, not waited for
    assert not multiprocessing.active_children()
    assert "interrupted" in capsys.readouterr().err
    statuses = {r["name"]: r["status"] for r in _summary(out)["items"]}
    assert statuses["b_rgba"] == "pending" and statuses["a_rgba"] in ("ok", "pending")
    # The ended worker cleaned up after itself: no half-written temporary file is left in --out.
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert not (out / "b_rgba.glb").exists()


def test_model_that_cannot_load_stops_the_batch_with_one_line(tmp_path, monkeypatch, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    assert _main(monkeypatch, load_broken, str(inp), "--out", str(out), "--workers", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot load model x"]
    doc = _summary(out)
    assert doc["counts"]["failed"] >= 1 and doc["counts"]["ok"] == 0
    assert "cannot load model x" in {r.get("error") for r in doc["items"]}
    assert not list(out.glob("*.ply"))


@pytest.mark.slow  # three worker processes
def test_workers_dying_while_loading_the_model_stop_the_batch(tmp_path, monkeypatch, capsys):
    """A model whose load kills the process fails no item; after one fresh worker per worker the batch
    stops with one line and exit 2 (as a model that cannot load), instead of a fresh worker (and
    model load) per item, each item failed."""
    inp, out = _inputs(tmp_path / "in", names=[f"{c}_rgba" for c in "abcdef"]), tmp_path / "out"
    monkeypatch.setenv(LOAD_LOG, str(tmp_path / "loads.txt"))
    assert _main(monkeypatch, load_dying, str(inp), "--out", str(out), "--workers", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: worker processes died while loading the model 4 times (last: worker process died "
        "(exit code 7)); see the log lines above"
    )
    # 2 workers, then a fresh one for each that died, not one worker per item (6).
    assert len((tmp_path / "loads.txt").read_text().split()) == 4
    doc = _summary(out)
    assert doc["counts"]["pending"] == 6 and doc["counts"]["failed"] == 0  # no item ran
    assert not list(out.glob("*_error.log"))


@pytest.mark.slow  # four worker processes
def test_workers_dying_while_loading_leave_the_items_to_the_workers_left(tmp_path, monkeypatch):
    """One worker loaded the model, the others die loading it: it runs every item, none fails."""
    inp, out = _inputs(tmp_path / "in", names=[f"{c}_rgba" for c in "abcdef"]), tmp_path / "out"
    monkeypatch.setenv(LOAD_LOG, str(tmp_path / "loads.txt"))
    assert _main(monkeypatch, load_once, str(inp), "--out", str(out), "--workers", "2") == 0
    assert _summary(out)["counts"]["ok"] == 6
    # The second worker, then at most one fresh worker per worker (none when the first was idle).
    assert 1 <= len((tmp_path / "loads.txt").read_text().split()) <= 3
    pids = {json.loads((out / f"{c}_rgba_report.json").read_text())["pid"] for c in "abcdef"}
    assert len(pids) == 1


def test_workers_usage_errors(tmp_path, capsys):
    inp = _inputs(tmp_path / "in")
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --workers must be >= 1 and --max-retries >= 0"
    ]


def test_workers_1_is_the_plain_path(tmp_path, monkeypatch):
    """``--workers 1`` runs in this process (run_items), as without --workers."""
    calls = []
    monkeypatch.setattr(batch, "run_items", lambda items, *a, **k: calls.append("plain") or [])
    monkeypatch.setattr(batch, "run_workers", lambda items, *a, **k: calls.append("workers") or [])
    inp = _inputs(tmp_path / "in")
    for extra in ([], ["--workers", "1"], ["--workers", "2"]):
        assert batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(tmp_path / "o"), *extra]) == 0
    assert calls == ["plain", "plain", "workers"]


# ------------------------------------------------------------------------------------- real stages
@pytest.mark.slow
def test_workers_outputs_match_the_plain_path(tmp_path, monkeypatch):
    """The same two images, seed and thread count (1) with --workers 2 and in one process: same bytes."""
    import torch

    inp = tmp_path / "in"
    inp.mkdir()
    names = ("00_zero123_lysol_rgba", "01_wild_hydrant_rgba")
    for n in names:
        shutil.copy(SHARED_IMAGES / f"{n}.png", inp / f"{n}.png")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers keep it (as a user's setting)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["--config", TINY_CFG, str(inp), "--no-progress", "seed=7"]
        assert batch.main([*args, "--out", str(tmp_path / "plain")]) == 0
        assert batch.main([*args, "--out", str(tmp_path / "workers"), "--workers", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = _summary(tmp_path / "workers")
    assert doc["counts"]["ok"] == 2 and doc["workers"]["threads"] is None
    for n in names:
        for suffix in (".glb", "_model.ply"):
            plain = (tmp_path / "plain" / f"{n}{suffix}").read_bytes()
            assert len(plain) > 1000
            assert (tmp_path / "workers" / f"{n}{suffix}").read_bytes() == plain, f"{n}{suffix}"


DRIVER = (  # batch.main in a child process, its workers on the fake stages of this module
    "import functools, os, sys, batch, test_batch_workers as t; "
    "os.environ[t.DRIVER_PID] = str(os.getpid()); "
    "batch.run_workers = functools.partial(batch.run_workers, load=t.load_fake); "
    "sys.exit(batch.main(sys.argv[1:]))"
)


def _driver_run(tmp_path: Path, signal_name: str) -> tuple[Path, dict, list[str]]:
    """A two-item, two-worker batch for :data:`DRIVER` whose fake stage sends the driver ``signal_name``
    at item ``b_rgba``; -> (out folder, environment, batch arguments)."""
    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba")), tmp_path / "out"
    env = {**os.environ, INTERRUPT_ON: "b_rgba", SIGNAL: signal_name}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    return out, env, ["--config", ORACLE_CFG, "--no-progress", str(inp), "--out", str(out), "--workers", "2"]


@pytest.mark.slow  # a driver process and two workers
def test_sigterm_to_the_driver_stops_its_workers(tmp_path):
    """``kill PID`` (a scheduler's cancel) ends the batch as Ctrl-C does: workers stopped, temp files gone."""
    import subprocess
    import sys
    import time

    out, env, argv = _driver_run(tmp_path, "SIGTERM")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert time.perf_counter() - t0 < 50, proc.stderr  # the sleeping worker was ended, not waited for
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    pid = int((out / "b_rgba.pid").read_text())
    assert not batch._running(pid)  # gone, or a zombie: ended
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    statuses = {r["name"]: r["status"] for r in _summary(out)["items"]}
    assert statuses["b_rgba"] == "pending"


@pytest.mark.slow  # a driver process and two workers
def test_workers_end_when_the_driver_is_killed(tmp_path):
    """The driver SIGKILLed (the OOM killer, ``kill -9``): its workers end too instead of running on."""
    import subprocess
    import sys
    import time

    out, env, argv = _driver_run(tmp_path, "SIGKILL")
    with open(tmp_path / "stderr.txt", "w") as err:  # a pipe would stay open while any worker lives
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *argv], cwd=ROOT, env=env, stderr=err)
        assert proc.wait(timeout=60) == -9
    pid = int((out / "b_rgba.pid").read_text())
    deadline = time.monotonic() + 20
    while batch._running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    # A zombie has ended: its fork server may have exited first, leaving it to an init that reaps late.
    assert not batch._running(pid), "the worker outlived its driver"
    # The worker removed its temporaries. The driver, killed outright, may have been writing its
    # summary: that temporary carries its pid, and the next run in the folder removes it.
    left = [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert all(f".pid{proc.pid}." in n for n in left), left
    remove_stale(out)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


# ------------------------------------------------------------------------------ the fork server
SLOW_IMPORT_DRIVER = (  # a fork server whose preload is still importing gets Ctrl-C, then forks a worker
    "import os, signal, sys, time, batch\n"
    "from multiprocessing import forkserver\n"
    "ctx = batch._worker_context(['md_test_slow_import'], 2)\n"
    "while not os.path.exists(os.environ['MD_TEST_MARK']):\n"
    "    time.sleep(0.02)\n"
    "os.kill(forkserver._forkserver._forkserver_pid, signal.SIGINT)  # Ctrl-C reaches the process group\n"
    "p = ctx.Process(target=os.getpid)\n"
    "p.start()\n"
    "p.join()\n"
    "print('worker exit code', p.exitcode)\n"
)


def test_ctrl_c_while_the_fork_server_imports_is_no_traceback(tmp_path):
    """Ctrl-C in the first seconds of a batch reaches the fork server while it imports torch: it must
    neither print a KeyboardInterrupt traceback nor die (the driver then met ``EOFError`` forking)."""
    import subprocess
    import sys

    mark = tmp_path / "importing"
    (tmp_path / "md_test_slow_import.py").write_text(
        f"import time\nopen({str(mark)!r}, 'w').close()\ntime.sleep(1.0)\n"
    )
    env = {**os.environ, "MD_TEST_MARK": str(mark), "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    r = subprocess.run(
        [sys.executable, "-c", SLOW_IMPORT_DRIVER],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "KeyboardInterrupt" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0 and "worker exit code 0" in r.stdout, r.stderr


@pytest.mark.slow  # two spawned worker processes
def test_a_fork_server_that_cannot_import_leaves_spawned_workers(tmp_path, monkeypatch, fresh_fork_server):
    """A preloaded module that raises (not an ImportError: a broken install) ends the fork server as it
    imports; the batch goes on with spawned workers instead of dying with ``EOFError``."""
    _module(tmp_path / "mods", "md_test_broken_import", "raise RuntimeError('broken install')\n", monkeypatch)
    monkeypatch.setattr(batch, "_preload_modules", lambda *a: ["md_test_broken_import"])
    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba")), tmp_path / "out"
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 0
    assert _summary(out)["counts"]["ok"] == 2


@pytest.mark.slow  # four worker processes
def test_a_second_batch_in_one_process_runs_the_code_of_then(tmp_path, monkeypatch, fresh_fork_server):
    """Two batches in one process (a notebook, a long-lived host): the second one's workers run the code
    as it is on disk now, not as the first batch's fork server imported it (nor its environment)."""
    mods = tmp_path / "mods"
    _module(mods, "md_test_probe_mod", "VALUE = 'first'\n", monkeypatch)
    monkeypatch.setattr(batch, "_preload_modules", lambda *a: ["md_test_probe_mod"])
    monkeypatch.setenv(PROBE_MODULE, "md_test_probe_mod")
    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba")), tmp_path / "out"

    def values() -> set:
        return {
            json.loads((out / f"{n}_report.json").read_text())["module_value"] for n in ("a_rgba", "b_rgba")
        }

    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 0
    assert values() == {"first"}
    (mods / "md_test_probe_mod.py").write_text("VALUE = 'edited since'\n")
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2", "--force") == 0
    assert values() == {"edited since"}


@pytest.mark.slow  # one worker process
def test_the_fork_server_starts_for_the_items_left_only(tmp_path, monkeypatch, fresh_fork_server):
    """A resumed batch with nothing left starts no fork server (it would import torch for nothing,
    holding this process's output pipes after it ended); else its torch threads are those of the
    workers of the items left (one here: all the cores), not of every item."""
    from multiprocessing import forkserver

    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    for n in ("a_rgba", "b_rgba", "c_rgba", "d_rgba"):
        (out / f"{n}.glb").write_text("glb")
        (out / f"{n}_final_report.json").write_text(json.dumps({"outputs": {"glb": str(out / f"{n}.glb")}}))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    started = []
    ensure_running = forkserver.ensure_running
    monkeypatch.setattr(
        forkserver,
        "ensure_running",
        lambda: (started.append(os.environ.get("OMP_NUM_THREADS")), ensure_running()),
    )
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "4") == 0
    assert _summary(out)["counts"]["skipped"] == 4 and started == []

    (out / "c_rgba.glb").unlink()
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "4") == 0
    doc = _summary(out)
    assert doc["counts"]["ok"] == 1 and doc["workers"]["threads"] == batch.cpu_count()
    assert started and set(started) == {str(batch.cpu_count())}  # at the start, and at each worker's


def test_the_fork_server_imports_from_the_drivers_path(tmp_path):
    """``python /repo/batch.py`` run from another folder: the fork server imports the preloaded modules
    from the driver's ``sys.path`` (the script's folder first; Python 3.11's forkserver ignores the path
    it is handed), not from its working folder or another installed copy, which its workers would run."""
    import subprocess
    import sys

    code, here = tmp_path / "code", tmp_path / "here"
    source = "VALUE = {!r}\n\ndef report():\n    print('worker sees', VALUE, flush=True)\n"
    for folder, value in ((code, "the driver's"), (here, "the working folder's")):
        folder.mkdir()
        (folder / "md_test_where.py").write_text(source.format(value))
    (code / "driver.py").write_text(
        "import batch, md_test_where\n"
        "if __name__ == '__main__':\n"
        "    ctx = batch._worker_context(['md_test_where'], 2)\n"
        "    p = ctx.Process(target=md_test_where.report)\n"
        "    p.start()\n"
        "    p.join()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(code / "driver.py")],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "worker sees the driver's", r.stdout


@pytest.mark.slow  # three worker processes
def test_workers_of_a_killed_fork_server_are_ended(tmp_path, monkeypatch, fresh_fork_server):
    """The fork server killed (the OOM killer, a pkill): its workers read as dead (exit code 255, their
    status went with it) but run on; each is ended (its temporary files removed), not left computing
    beside the fresh workers, and its item fails."""
    import time

    inp, out = _inputs(tmp_path / "in", names=("a_rgba", "b_rgba", "c_rgba")), tmp_path / "out"
    monkeypatch.setenv(KILL_SERVER_ON, "a_rgba")
    t0 = time.perf_counter()
    assert _main(monkeypatch, load_fake, str(inp), "--out", str(out), "--workers", "2") == 1
    assert time.perf_counter() - t0 < 50
    pid = int((out / "a_rgba.pid").read_text())
    assert not batch._running(pid)  # gone, or a zombie: ended
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    items = {r["name"]: r for r in _summary(out)["items"]}
    assert items["a_rgba"]["status"] == "failed" and "fork server died" in items["a_rgba"]["error"]
    # The other worker is orphaned too: an item it runs when its death is seen fails alike (b, or c
    # if b's answer came first and c went to it); an item on a fresh worker runs. Nothing is pending.
    for r in (items["b_rgba"], items["c_rgba"]):
        assert r["status"] == "ok" or "fork server died" in r["error"], r
    assert "ok" in (items["b_rgba"]["status"], items["c_rgba"]["status"])
