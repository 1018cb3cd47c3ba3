"""Text to 3D through batch.py (prompt files, plain and the Ray worker's item path) and the web app's
job runner: prompt -> <slug>.glb with the tiny random MVDream; mismatched inputs are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import batch
from pipeline.batch_jobs import BatchWorker, run_item, write_sets

ROOT = Path(__file__).resolve().parents[1]
TEXT = str(ROOT / "configs" / "text.yaml")
ORACLE_CFG = str(ROOT / "configs" / "oracle_cpu.yaml")
IMAGES = ROOT / ".." / "shared" / "data" / "images"


@pytest.fixture(scope="module")
def tiny_overrides() -> list[str]:
    from testing.random_mvdream import TINY_RUN, cached_tiny_mvdream

    return [f"model.path={cached_tiny_mvdream()}", *TINY_RUN]


def _prompts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "prompts.txt"
    f.write_text("# two prompts\na red Car!\n\n  a wooden chair  \n", encoding="utf-8")
    return f


def _summary(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text())


# ------------------------------------------------------------------------- items and errors
def test_prompt_items_across_files_get_unique_names(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.TXT"
    a.write_text("a cat\na dog\n")
    b.write_text("A cat!\n# skip\na bird\n")
    items = batch.collect_prompt_items([str(a), str(b), str(a)])
    assert [(i.name, i.prompt, i.input) for i in items] == [
        ("a_cat", "a cat", None),
        ("a_dog", "a dog", None),
        ("a_cat_2", "A cat!", None),
        ("a_bird", "a bird", None),
    ]
    assert [i.name for i in batch.shard_items(items, 0, 2)] == ["a_bird", "a_cat_2"]


def test_mismatched_inputs_are_one_line_errors_before_any_model(tmp_path, monkeypatch, capsys):
    def no_model():
        raise AssertionError("no model may load")

    monkeypatch.setattr(batch, "load_stages", no_model)
    prompts = _prompts(tmp_path)
    out = str(tmp_path / "out")
    assert batch.main(["--config", TEXT, str(IMAGES), "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("error: ") and "makes 3D from text (guidance=mvdream)" in err[0]
    )
    assert batch.main(["--config", ORACLE_CFG, str(prompts), "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a prompt file" in err[0] and "configs/text.yaml" in err[0]
    assert batch.main(["--config", TEXT, str(prompts), "prompt=a cat", "--out", out]) == 2
    assert "sets 'prompt' per item" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert batch.main(["--config", TEXT, str(empty), "--out", out]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert not (tmp_path / "out" / "batch_summary.json").exists()


def test_dry_run_lists_prompts(tmp_path, capsys):
    prompts = _prompts(tmp_path)
    assert batch.main(["--config", TEXT, str(prompts), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()]
    assert lines == [["a_red_car", "a red Car!", "todo"], ["a_wooden_chair", "a wooden chair", "todo"]]


# ------------------------------------------------------------------------- the tiny MVDream
@pytest.mark.slow
def test_batch_over_a_prompt_file_with_tiny_mvdream(tmp_path, tiny_overrides, capsys):
    """2 prompts -> 2 complete sets named by slug, one model load, the summary records the prompts;
    a re-run skips both."""
    import trimesh

    prompts, out = _prompts(tmp_path), tmp_path / "out"
    argv = ["--config", TEXT, str(prompts), *tiny_overrides, "--out", str(out), "--no-progress"]
    loads = []
    real = batch.load_stages

    def counting():
        image_to_3d, load = real()
        return image_to_3d, lambda cfg, dev: loads.append(1) or load(cfg, dev)

    batch.load_stages = counting
    try:
        assert batch.main(argv) == 0
    finally:
        batch.load_stages = real
    assert len(loads) == 1
    doc = _summary(out)
    assert doc["counts"] == {"total": 2, "ok": 2, "failed": 0, "skipped": 0, "pending": 0}
    recs = {r["name"]: r for r in doc["items"]}
    assert set(recs) == {"a_red_car", "a_wooden_chair"}
    for name, prompt in (("a_red_car", "a red Car!"), ("a_wooden_chair", "a wooden chair")):
        rec = recs[name]
        assert rec["status"] == "ok" and rec["prompt"] == prompt and rec["input"] == ""
        # NFEs of the tiny schedule (tests/test_text_to_3d.py): stage 1 33, stage 2 10
        assert (rec["nfe_stage1"], rec["nfe_stage2"], rec["nfe"]) == (33, 10, 43)
        assert batch.item_done(out, name) and Path(rec["final"]) == out / f"{name}.glb"
        assert len(trimesh.load(out / f"{name}.glb", force="mesh").faces) > 0
        rep = json.loads((out / f"{name}_report.json").read_text())
        assert rep["config"]["prompt"] == prompt and rep["config"]["input"] == ""
    csv_text = (out / "batch_summary.csv").read_text()
    assert csv_text.splitlines()[0].startswith("name,input,prompt,status") and "a red Car!" in csv_text
    capsys.readouterr()

    assert batch.main(argv) == 0  # resume: both sets complete
    doc = _summary(out)
    assert doc["counts"]["skipped"] == 2 and doc["counts"]["ok"] == 0
    assert {r["name"]: r["nfe"] for r in doc["items"]} == {"a_red_car": 43, "a_wooden_chair": 43}


def test_ray_item_path_runs_a_prompt_without_an_input_file(tmp_path, tiny_overrides):
    """A Ray worker's item (no Ray): a prompt item ships no image; its sets land in --out whole."""
    item = batch.Item("a_cat", None, "a cat")
    cfg = batch.item_config(TEXT, tiny_overrides, tmp_path / "driver", item)
    result = run_item(cfg, None, None, BatchWorker())
    assert result.status == "ok", result.traceback
    out = tmp_path / "out"
    out.mkdir()
    written = write_sets(out, "a_cat", result.sets, None)
    assert Path(written["stage2"]["outputs"]["glb"]) == out / "a_cat.glb" and batch.item_done(out, "a_cat")
    assert written["stage1"]["config"]["prompt"] == "a cat" and written["stage1"]["config"]["input"] == ""


# ------------------------------------------------------------------------- the web app
@pytest.fixture(scope="module")
def text_gen(tmp_path_factory, tiny_overrides):
    """The web app's job runner with the tiny MVDream as its one (text) model."""
    from webapp import Generator

    return Generator([TEXT], tiny_overrides, workdir=tmp_path_factory.mktemp("work"))


def test_web_job_runner_makes_a_glb_from_a_prompt(text_gen):
    from core.errors import UserError
    from webapp import Settings

    gen = text_gen
    assert gen.model_names() == ["mvdream"] and gen.is_text("mvdream") and gen.takes_prompt("mvdream")
    result = gen.run(None, None, Settings(prompt="a red Car!"))
    assert result.outputs["glb"].name == "a_red_car.glb" and result.outputs["glb"].is_file()
    rep = json.loads(result.outputs["report"].read_text())
    assert rep["config"]["prompt"] == "a red Car!" and rep["config"]["input"] == ""
    assert result.summary["stage1"]["nfe"] == 33
    with pytest.raises(UserError, match="the prompt is required"):
        gen.run(None, None, Settings(prompt="  "))
    with pytest.raises(UserError, match="takes no image"):
        gen.run(b"\x89PNG...", "cat.png", Settings(prompt="a cat"))
    assert [p for p in gen.workdir.iterdir()] == [result.folder]  # failed requests leave no folder


def test_api_generate_takes_a_prompt_and_no_image(text_gen):
    """``POST /api/generate`` with form field ``prompt`` (no image) for a text model; 400 without it."""
    pytest.importorskip("httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webapp.api import add_api_routes

    app = FastAPI()
    add_api_routes(app, text_gen)
    client = TestClient(app)
    r = client.post("/api/generate", data={"prompt": "a wooden chair", "format": "json"})
    assert r.status_code == 200, r.text
    assert r.json()["files"]["glb"].endswith("/a_wooden_chair.glb")
    glb = client.get(r.json()["files"]["glb"])
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    r = client.post("/api/generate", data={"seed": "1"})
    assert r.status_code == 400 and "the prompt is required" in r.json()["error"]
    r = client.post("/api/generate", files={"image": ("cat.png", b"png")}, data={"prompt": "a cat"})
    assert r.status_code == 400 and "takes no image" in r.json()["error"]


def test_page_hides_the_upload_and_requires_the_prompt_for_a_text_model(text_gen):
    pytest.importorskip("gradio")
    from webapp.ui import build_ui

    demo = build_ui(text_gen)
    by_id = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
    assert by_id["upload"]["visible"] is False
    assert by_id["prompt"]["visible"] is True and by_id["prompt"]["label"] == "Text prompt (required)"
