"""Whole output sets (core.outputs): staged files move in together, the report last."""

import json
import os
import subprocess
import sys

import pytest

from core.outputs import OutputSet, remove_stale, set_complete


def _report_writer(outputs: dict):
    def write(path):
        outputs["report"] = str(path)
        path.write_text(json.dumps({"outputs": outputs}))

    return write


def test_commit_moves_files_and_writes_report_last(tmp_path):
    outputs = {}
    with OutputSet(tmp_path, "cat", "_report.json") as out:
        out.path("_model.ply").write_text("new ply")
        outputs["ply"] = str(out.final_path("_model.ply"))
        assert not (tmp_path / "cat_model.ply").exists()  # nothing visible before the commit
        out.commit(_report_writer(outputs))
    assert (tmp_path / "cat_model.ply").read_text() == "new ply"
    assert set_complete(tmp_path / "cat_report.json")
    assert {p.name for p in tmp_path.iterdir()} == {"cat_model.ply", "cat_report.json"}


def test_failed_stage_leaves_the_old_set_untouched(tmp_path):
    outputs = {}
    with OutputSet(tmp_path, "cat", "_report.json") as out:
        out.path("_preview.png").write_text("old")
        outputs["preview"] = str(out.final_path("_preview.png"))
        out.commit(_report_writer(outputs))
    with pytest.raises(RuntimeError), OutputSet(tmp_path, "cat", "_report.json") as out:
        out.path("_preview.png").write_text("new")
        raise RuntimeError("stage failed")
    assert (tmp_path / "cat_preview.png").read_text() == "old"
    assert set_complete(tmp_path / "cat_report.json")
    assert {p.name for p in tmp_path.iterdir()} == {"cat_preview.png", "cat_report.json"}  # staging gone


def test_new_stage1_set_retires_the_old_final_set_and_old_extras(tmp_path):
    s1, s2 = {}, {}
    with OutputSet(tmp_path, "cat", "_report.json") as out:
        for suffix in ("_mesh.glb", "_gaussians.mp4"):
            out.path(suffix).write_text("old")
            s1[suffix] = str(out.final_path(suffix))
        out.commit(_report_writer(s1))
    with OutputSet(tmp_path, "cat", "_final_report.json") as out:
        out.path(".glb").write_text("old final")
        s2["glb"] = str(out.final_path(".glb"))
        out.commit(_report_writer(s2))
    new = {}
    with OutputSet(tmp_path, "cat", "_report.json", replaces=("_final_report.json",)) as out:
        out.path("_mesh.glb").write_text("new")  # no video this time
        new["mesh"] = str(out.final_path("_mesh.glb"))
        out.commit(_report_writer(new))
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"cat_mesh.glb", "cat_report.json"}  # old .glb, final report and old video gone
    assert not set_complete(tmp_path / "cat_final_report.json")


def test_report_listing_a_missing_file_is_not_complete(tmp_path):
    (tmp_path / "a_report.json").write_text(json.dumps({"outputs": {"glb": str(tmp_path / "a.glb")}}))
    assert not set_complete(tmp_path / "a_report.json")
    (tmp_path / "a.glb").write_text("x")
    assert set_complete(tmp_path / "a_report.json")
    (tmp_path / "b_report.json").write_text("{not json")
    assert not set_complete(tmp_path / "b_report.json")
    assert not set_complete(tmp_path / "missing_report.json")


def test_stale_leftovers_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale_dir = tmp_path / f".staging-cat.pid{pid}.abcd1234"
    stale_dir.mkdir()
    (stale_dir / "cat.glb").write_text("half")
    stale_tmp = tmp_path / f".cat.pid{pid}.xyz.tmp.glb"
    stale_tmp.write_text("half")
    live_tmp = tmp_path / f".cat.pid{os.getpid()}.xyz.tmp.glb"
    live_tmp.write_text("being written")
    keep = tmp_path / "cat.glb"
    keep.write_text("done")
    removed = remove_stale(tmp_path)
    assert set(removed) == {stale_dir, stale_tmp}
    assert live_tmp.exists() and keep.exists()


def test_report_outside_paths_never_deleted(tmp_path):
    victim = tmp_path / "elsewhere" / "cat_keep.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "cat_report.json").write_text(json.dumps({"outputs": {"x": str(victim)}}))
    with OutputSet(out_dir, "cat", "_report.json") as out:
        out.commit(_report_writer({}))
    assert victim.read_text() == "precious"
