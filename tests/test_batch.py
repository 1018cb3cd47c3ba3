"""batch.py: item collection, sharding, resume, failure isolation, summaries, the Ray pieces without Ray.

The batch logic is tested with fake stage functions (fast); the real end-to-end run over the
oracle CPU config is marked ``slow``; a stage that fails to import fails it.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import batch
from core.errors import UserError
from pipeline.batch_jobs import BatchWorker, SetBytes, run_item, write_sets

ROOT = Path(__file__).resolve().parents[1]
ORACLE_CFG = str(ROOT / "configs" / "oracle_cpu.yaml")
SHARED_IMAGES = ROOT / ".." / "shared" / "data" / "images"


def _write_inputs(folder: Path) -> Path:
    """3 inputs: two real RGBA images and one corrupt PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("a_rgba", (255, 0, 0)), ("c_rgba", (0, 0, 255))):
        img = np.zeros((32, 32, 4), np.uint8)
        img[8:24, 8:24] = (*colour, 255)
        Image.fromarray(img).save(folder / f"{name}.png")
    (folder / "b_rgba.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


class FakeStages:
    """Stand-ins for image_to_3d/load_denoiser that write the real output names of both stages."""

    def __init__(self) -> None:
        self.loads = 0
        self.calls: list[tuple[str, str]] = []
        self.fail_stage2: set[str] = set()  # save_paths whose stage 2 raises

    def image_to_3d(self, cfg, denoiser):
        r1 = self.run_stage1(cfg, denoiser)
        if cfg.save_path in self.fail_stage2:
            raise RuntimeError("stage 2 broke")
        return {"stage1": r1, "stage2": self.run_stage2(cfg, denoiser)}

    def load_denoiser(self, cfg, device):
        self.loads += 1
        return object()

    def run_stage1(self, cfg, denoiser):
        self.calls.append(("s1", cfg.save_path))
        Image.open(cfg.input).load()  # the corrupt input fails here, as in the real stage
        out = Path(cfg.outdir)
        (out / f"{cfg.save_path}_model.ply").write_text("ply")
        (out / f"{cfg.save_path}_mesh.glb").write_text("mesh")
        rep = {
            "seconds": {"sir": 1.5, "export": 0.5},
            "nfe": 10,
            "outputs": {
                "ply": str(out / f"{cfg.save_path}_model.ply"),
                "mesh": str(out / f"{cfg.save_path}_mesh.glb"),
            },
        }
        (out / f"{cfg.save_path}_report.json").write_text(json.dumps(rep))
        return rep

    def run_stage2(self, cfg, denoiser):
        self.calls.append(("s2", cfg.save_path))
        out = Path(cfg.outdir)
        (out / f"{cfg.save_path}.glb").write_text("glb")
        rep = {"seconds": {"sir": 0.75}, "nfe": 5, "outputs": {"glb": str(out / f"{cfg.save_path}.glb")}}
        (out / f"{cfg.save_path}_final_report.json").write_text(json.dumps(rep))
        return rep


@pytest.fixture
def fake(monkeypatch) -> FakeStages:
    f = FakeStages()
    monkeypatch.setattr(batch, "load_stages", lambda: (f.image_to_3d, f.load_denoiser))
    return f


def _summary(out: Path, stem: str = "batch_summary") -> tuple[dict, list[dict]]:
    doc = json.loads((out / f"{stem}.json").read_text())
    with open(out / f"{stem}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return doc, rows


def test_stage2_failure_keeps_this_runs_stage1_figures(tmp_path, fake):
    """A stage-2 failure records stage 1's figures from the report it just wrote (not a stale one)."""
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    (inp / "b_rgba.png").unlink()
    out.mkdir()
    # A stale stage-1 report of an earlier run of c_rgba must not be taken for this run's.
    stale = out / "c_rgba_report.json"
    stale.write_text(json.dumps({"seconds": {"x": 9.0}, "nfe": 99, "outputs": {}}))
    fake.fail_stage2 = {"a_rgba"}
    rc = batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"])
    assert rc == 1
    by = {r["name"]: r for r in _summary(out)[0]["items"]}
    assert by["a_rgba"]["status"] == "failed" and "stage 2 broke" in by["a_rgba"]["error"]
    assert by["a_rgba"]["nfe_stage1"] == 10 and by["a_rgba"]["nfe_stage2"] is None
    assert by["c_rgba"]["status"] == "ok" and by["c_rgba"]["nfe"] == 15
    assert batch._fresh_json(stale, stale.stat().st_mtime + 1) is None


# ------------------------------------------------------------------------------------ item logic
def test_collect_items_rules(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ["a.png", "a_rgba.png", "b.jpg", "c_preview.png", "c_mesh_albedo.png", "notes.txt"]:
        (d / name).write_bytes(b"x")
    items = batch.collect_items([str(d)])
    assert [(it.name, it.input.name) for it in items] == [("a_rgba", "a_rgba.png"), ("b", "b.jpg")]
    # the same file twice is one item; two files with one stem are an error
    assert len(batch.collect_items([str(d), str(d / "b.jpg")])) == 2
    # two files with one stem get distinct names (stable: the first by path keeps the stem)
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.png").write_bytes(b"x")
    both = batch.collect_items([str(other), str(d)])
    names = [it.name for it in both]
    assert names[:2] == ["a_rgba", "b"] and re.fullmatch(r"b-[0-9a-f]{8}", names[2])
    assert {it.name: it.input.parent.name for it in both}["b"] == "in"
    assert [it.name for it in batch.collect_items([str(d), str(other)])] == names
    with pytest.raises(UserError, match="no such file"):
        batch.collect_items([str(tmp_path / "missing.png")])


def test_item_names_are_confined(tmp_path):
    """Names become file names in --out: no separators, no leading dots, nothing outside [\\w.-]."""
    assert batch.item_name("cat photo (1)") == "cat_photo__1_"
    assert batch.item_name("..\\..\\evil") == "_.._evil"
    assert batch.item_name("...") == "item" and batch.item_name("-x") == "x"
    assert batch.item_name("ünï.v2") == "ünï.v2"
    (tmp_path / "a b.png").write_bytes(b"x")
    (tmp_path / "a_b.png").write_bytes(b"x")
    names = [it.name for it in batch.collect_items([str(tmp_path)])]
    assert names[0] == "a_b" and re.fullmatch(r"a_b-[0-9a-f]{8}", names[1])


#: The files one item ``<name>`` may write into --out (mesh_format glb, video on).
ITEM_FILES = ("_model.ply", "_mesh.glb", "_preview.png", "_gaussians.mp4", "_report.json", ".glb", ".mp4")
ITEM_FILES += ("_final_preview.png", "_final_report.json", "_error.log")


def _clashing(names: list[str]) -> set[str]:
    """The output file names two of the items would share."""
    seen: dict[str, str] = {}
    shared = set()
    for n in names:
        for f in (n + s for s in ITEM_FILES):
            if seen.setdefault(f, n) != n:
                shared.add(f)
    return shared


def test_items_never_share_output_files(tmp_path):
    """``car`` and ``car_final`` would share ``car_final_report.json`` (car's final report, car_final's
    stage-1 one: car would even count as done after car_final's stage 1); ``car_mesh.glb`` likewise."""
    d, other = tmp_path / "in", tmp_path / "other"
    d.mkdir()
    other.mkdir()
    for stem in ("car", "car_final", "car_mesh", "car_gaussians", "car_model", "boat_final"):
        (d / f"{stem}.png").write_bytes(b"x")
    (other / "boat.png").write_bytes(b"x")  # after in/boat_final.png by path: boat itself is renamed
    names = [it.name for it in batch.collect_items([str(d), str(other)])]
    assert len(names) == 7 and not _clashing(names)
    assert {"car", "car_model", "boat_final"} <= set(names)  # no clash: the names are kept
    assert re.fullmatch(r"car_final-[0-9a-f]{8}", names[names.index("car") + 1])
    assert _clashing(["car", "car_final"]) == {"car_final_preview.png", "car_final_report.json"}
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na cat final\na cat mesh\n")
    slugs = [it.name for it in batch.collect_prompt_items([str(prompts)])]
    assert slugs == ["a_cat", "a_cat_final_2", "a_cat_mesh_2"] and not _clashing(slugs)


def test_shards_partition_sorted_items():
    items = [batch.Item(f"item{i}", Path(f"item{i}.png")) for i in (5, 3, 0, 6, 1, 4, 2)]
    parts = [batch.shard_items(items, i, 3) for i in range(3)]
    names = [[it.name for it in p] for p in parts]
    assert names[0] == ["item0", "item3", "item6"] and names[1] == ["item1", "item4"]
    assert sorted(n for p in names for n in p) == sorted(it.name for it in items)  # disjoint and complete
    assert names == [[it.name for it in batch.shard_items(list(reversed(items)), i, 3)] for i in range(3)]
    assert batch.parse_shard("1/3") == (1, 3) and batch.parse_shard(None) == (0, 1)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(UserError):
            batch.parse_shard(bad)


def test_split_args():
    inputs, overrides = batch.split_args(["in/", "sir.iters=2", "x.png", "quiet=true"])
    assert inputs == ["in/", "x.png"] and overrides == ["sir.iters=2", "quiet=true"]


# ----------------------------------------------------------------------------- fake-stage batches
def test_batch_failure_isolation_summary_and_resume(tmp_path, fake, capsys):
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    rc = batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress", "seed=3"])
    assert rc == 1  # one item failed
    assert fake.loads == 1  # the model is loaded once for the whole batch
    doc, rows = _summary(out)
    assert doc["counts"] == {"total": 3, "ok": 2, "failed": 1, "skipped": 0, "pending": 0}
    by = {r["name"]: r for r in doc["items"]}
    assert by["a_rgba"]["status"] == by["c_rgba"]["status"] == "ok"
    assert (
        by["a_rgba"]["nfe"] == 15
        and by["a_rgba"]["seconds_stage1"] == 2.0
        and by["a_rgba"]["seconds_stage2"] == 0.75
    )
    assert by["a_rgba"]["seconds"] >= 0 and by["a_rgba"]["outputs"]["stage2"]["glb"] == str(
        out / "a_rgba.glb"
    )
    bad = by["b_rgba"]
    assert bad["status"] == "failed" and "UnidentifiedImageError" in bad["error"]
    assert "Traceback" in Path(bad["error_log"]).read_text()
    assert not (out / "b_rgba.glb").exists()
    assert [r["name"] for r in rows] == ["a_rgba", "b_rgba", "c_rgba"]
    assert rows[0]["status"] == "ok" and rows[0]["nfe"] == "15" and rows[0]["glb"] == str(out / "a_rgba.glb")
    assert rows[1]["status"] == "failed" and rows[1]["error"]
    assert doc["overrides"] == ["seed=3"]
    assert "b_rgba" in capsys.readouterr().err

    # Re-run: finished items are skipped (figures read back from their reports), the failed one retried.
    fake.calls.clear()
    rc = batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"])
    assert rc == 1
    assert fake.calls == [("s1", "b_rgba")]
    doc, rows = _summary(out)
    assert doc["counts"]["skipped"] == 2 and doc["counts"]["failed"] == 1
    assert {r["name"]: r["status"] for r in doc["items"]} == {
        "a_rgba": "skipped",
        "b_rgba": "failed",
        "c_rgba": "skipped",
    }
    assert {r["name"]: r["nfe"] for r in doc["items"]}["a_rgba"] == 15

    # Once the input is fixed, only it runs and the batch succeeds; --force re-runs everything.
    shutil.copy(inp / "a_rgba.png", inp / "b_rgba.png")
    fake.calls.clear()
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"]) == 0
    assert fake.calls == [("s1", "b_rgba"), ("s2", "b_rgba")] and not (out / "b_rgba_error.log").exists()
    fake.calls.clear()
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress", "--force"]) == 0
    assert len(fake.calls) == 6


def test_shard_writes_its_own_summary(tmp_path, fake):
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    assert (
        batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--shard", "1/2", "--no-progress"])
        == 1
    )
    assert fake.calls == [("s1", "b_rgba")]  # sorted a, b, c -> shard 1 of 2 is b
    doc, _ = _summary(out, "batch_summary.shard-1-of-2")
    assert [r["name"] for r in doc["items"]] == ["b_rgba"] and doc["shard"] == "1/2"
    assert not (out / "batch_summary.json").exists()


def test_model_load_error_stops_batch(tmp_path, monkeypatch, capsys):
    def broken_loader(cfg, device):
        raise UserError("cannot load model x")

    f = FakeStages()
    monkeypatch.setattr(batch, "load_stages", lambda: (f.image_to_3d, broken_loader))
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"]) == 2
    assert "cannot load model x" in capsys.readouterr().err and not f.calls


def test_usage_errors(tmp_path, capsys):
    inp = _write_inputs(tmp_path / "in")
    assert batch.main(["--config", ORACLE_CFG, str(inp), "no_such_key=1", "--no-progress"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert batch.main(["--config", ORACLE_CFG, str(inp), "input=x.png"]) == 2
    assert batch.main(["--config", ORACLE_CFG, str(tmp_path / "nothing")]) == 2
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--shard", "2/2"]) == 2


def test_dry_run_lists_items(tmp_path, fake, capsys):
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "a_rgba.glb").write_text("glb")
    (out / "c_rgba.glb").write_text("glb")  # a .glb alone is not a finished item
    (out / "a_rgba_final_report.json").write_text(json.dumps({"outputs": {"glb": str(out / "a_rgba.glb")}}))
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[::2] for ln in lines] == [
        ["a_rgba", "done"],
        ["b_rgba", "todo"],
        ["c_rgba", "todo"],
    ]
    assert not fake.calls


# ------------------------------------------------------------------- Ray pieces, without Ray
class _Cfg(SimpleNamespace):
    """The few config keys the fake stages and run_item use (an OmegaConf copy/open_dict stand-in)."""

    def copy(self):
        return _Cfg(**vars(self))

    def get(self, key, default=None):
        return getattr(self, key, default)


def _fake_worker(fake: FakeStages) -> BatchWorker:
    worker = BatchWorker()
    worker.stages = lambda cfg: fake.image_to_3d(cfg, None)
    return worker


@pytest.fixture
def no_open_dict(monkeypatch):
    import contextlib

    import omegaconf

    monkeypatch.setattr(omegaconf, "open_dict", lambda cfg: contextlib.nullcontext())


def test_run_item_returns_sets_and_driver_writes_them_whole(tmp_path, no_open_dict):
    fake = FakeStages()
    png = tmp_path / "cat.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(png)
    cfg = _Cfg(save_path="cat", input="/nowhere/cat.png", outdir="/nowhere", quiet=False)
    result = run_item(cfg, png.read_bytes(), "cat.png", _fake_worker(fake))
    assert result.status == "ok" and result.error is None and set(result.sets) == {"stage1", "stage2"}
    s1 = result.sets["stage1"]
    assert s1.files == {"cat_model.ply": b"ply", "cat_mesh.glb": b"mesh"}
    assert s1.report["outputs"] == {"ply": "cat_model.ply", "mesh": "cat_mesh.glb"}  # bare names

    out = tmp_path / "out"
    out.mkdir()
    (out / "cat_final_report.json").write_text(json.dumps({"outputs": {"glb": str(out / "cat.glb")}}))
    (out / "cat.glb").write_text("old")
    written = write_sets(out, "cat", result.sets, "/data/cat.png")
    assert (out / "cat.glb").read_text() == "glb" and (out / "cat_model.ply").read_text() == "ply"
    assert written["stage2"]["outputs"] == {
        "glb": str(out / "cat.glb"),
        "report": str(out / "cat_final_report.json"),
    }
    assert json.loads((out / "cat_report.json").read_text())["outputs"]["ply"] == str(out / "cat_model.ply")
    assert batch.item_done(out, "cat") and not [p for p in out.iterdir() if p.name.startswith(".")]

    # stage 2 fails: the worker sends stage 1's set only; writing it retires the old final set
    fake.fail_stage2 = {"cat"}
    failed = run_item(cfg, png.read_bytes(), "cat.png", _fake_worker(fake))
    assert failed.status == "failed" and failed.error == "RuntimeError: stage 2 broke"
    assert "Traceback" in failed.traceback and set(failed.sets) == {"stage1"} and not failed.fatal
    write_sets(out, "cat", failed.sets)
    assert not batch.item_done(out, "cat") and not (out / "cat.glb").exists()
    with pytest.raises(ValueError, match="not a file name"):
        write_sets(out, "cat", {"stage1": SetBytes({"../cat.ply": b"x"}, {"outputs": {}})})


def test_run_item_model_load_error_is_fatal(tmp_path, no_open_dict):
    worker = BatchWorker()

    def broken(cfg):
        worker.tried_load = True
        raise UserError("cannot load model x")

    worker.stages = broken
    cfg = _Cfg(save_path="cat", input="", outdir="", quiet=False)
    result = run_item(cfg, b"png", "cat.png", worker)
    assert result.status == "failed" and result.fatal and result.error == "cannot load model x"


def test_a_ray_worker_reports_a_model_that_cannot_load_as_the_local_workers_do(tmp_path):
    """A Ray worker loads its model as batch.load_stages does (pipeline.both_stages.load_model): a
    model folder that does not load is one fatal UserError line, not a per-item traceback with the
    load tried again at every item."""
    png = tmp_path / "cat.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(png)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{not json")  # a model folder whose files do not load
    item = batch.Item("cat", png)
    cfg = batch.item_config(
        str(ROOT / "configs" / "image.yaml"), [f"model.path={model}"], tmp_path / "o", item
    )
    worker = BatchWorker()
    result = run_item(cfg, png.read_bytes(), "cat.png", worker)
    assert result.status == "failed" and result.fatal, (result.error, result.fatal)
    assert re.match(r"cannot load the zero123 model from .*model\.path", result.error), result.error


class _FakeRay:
    def __init__(self, **res) -> None:
        self.res = res

    def cluster_resources(self) -> dict:
        return self.res


def test_ray_pool_plan():
    with pytest.raises(UserError, match="device=cuda but the Ray cluster has no GPU"):
        batch._ray_pool_plan(_FakeRay(CPU=16.0), "cuda", None, 10)
    assert batch._ray_pool_plan(_FakeRay(CPU=16.0, GPU=2.0), "auto", None, 10) == (2, {"num_gpus": 1})
    assert batch._ray_pool_plan(_FakeRay(CPU=16.0, GPU=8.0), "cuda:0", None, 3) == (3, {"num_gpus": 1})
    assert batch._ray_pool_plan(_FakeRay(CPU=16.0, GPU=2.0), "cpu", None, 10) == (4, {"num_cpus": 4})
    assert batch._ray_pool_plan(_FakeRay(CPU=2.0), "auto", 2, 10) == (2, {"num_cpus": 1})
    assert batch._ray_pool_plan(_FakeRay(CPU=2.0), "cpu", None, 10) == (1, {"num_cpus": 2})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_ray_cuda_config_without_cuda_is_one_line_error(tmp_path, capsys):
    """No silent CPU workers: a CUDA config on a CUDA-less machine stops before Ray starts."""
    import sys

    inp = _write_inputs(tmp_path / "in")
    args = ["--config", ORACLE_CFG, str(inp), "--out", str(tmp_path / "out"), "--ray", "device=cuda"]
    assert batch.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ray: device=cuda but this machine has no CUDA GPU (pass device=cpu)"]
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_ray_address_must_answer():
    """A head address that does not answer fails at once (Ray itself would retry for minutes)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        batch._check_reachable(f"127.0.0.1:{port}")
        batch._check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"--ray 127.0.0.1:{port}: no Ray head answers there"):
        batch._check_reachable(f"127.0.0.1:{port}")
    batch._check_reachable("auto")  # no host:port: Ray finds (or fails to find) the cluster itself


def test_ray_cli_address_and_options(tmp_path, monkeypatch, capsys):
    inp, out = _write_inputs(tmp_path / "in"), tmp_path / "out"
    calls = []

    def fake_run_ray(items, config, overrides, out, shard, force, show_progress, meta, **kw):
        calls.append(([it.name for it in items], kw))
        return [{"name": it.name, "status": "ok"} for it in items]

    monkeypatch.setattr(batch, "run_ray", fake_run_ray)
    # a bare --ray followed by an input: the input stays an input, Ray starts locally
    assert batch.main(["--config", ORACLE_CFG, "--ray", str(inp), "--out", str(out)]) == 0
    assert calls[-1] == (
        ["a_rgba", "b_rgba", "c_rgba"],
        {"address": "local", "workers": None, "max_retries": 2},
    )
    args = ["--config", ORACLE_CFG, str(inp), "--out", str(out), "--ray", "auto", "--workers", "3"]
    assert batch.main([*args, "--max-retries", "0", "--shard", "1/2"]) == 0
    assert calls[-1] == (["b_rgba"], {"address": "auto", "workers": 3, "max_retries": 0})
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--ray", "ray://head:10001"]) == 0
    assert calls[-1][1]["address"] == "ray://head:10001"
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert batch.main(["--config", ORACLE_CFG, str(inp), "--ray", "--workers", "0"]) == 2
    assert len(calls) == 3


# --------------------------------------------------------------------------------- real stages
@pytest.mark.slow
def test_batch_real_stages_oracle(tmp_path):
    """Both real stages over 3 inputs (one corrupt) with the oracle CPU config, then a resume (~50 s on 2 cores)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in ("00_zero123_lysol_rgba.png", "01_wild_hydrant_rgba.png"):
        shutil.copy(SHARED_IMAGES / name, inp / name)
    (inp / "02_broken_rgba.png").write_bytes(b"not a png")
    rc = batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"])
    assert rc == 1
    doc, rows = _summary(out)
    assert doc["counts"]["ok"] == 2 and doc["counts"]["failed"] == 1 and len(rows) == 3
    by = {r["name"]: r for r in doc["items"]}
    assert by["02_broken_rgba"]["status"] == "failed" and Path(by["02_broken_rgba"]["error_log"]).is_file()
    for name in ("00_zero123_lysol_rgba", "01_wild_hydrant_rgba"):
        rec = by[name]
        assert rec["status"] == "ok" and (out / f"{name}.glb").is_file()
        assert rec["nfe"] > 0 and rec["seconds"] > 0
        assert Path(rec["outputs"]["stage1"]["ply"]).is_file()
    rc = batch.main(["--config", ORACLE_CFG, str(inp), "--out", str(out), "--no-progress"])
    doc, _ = _summary(out)
    assert doc["counts"]["skipped"] == 2 and doc["counts"]["failed"] == 1
