"""core.fileio: atomic writes leave the usual permissions, correct content and no temporary files."""

from __future__ import annotations

import os
import stat

import pytest

from core import fileio


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_text_content_and_permissions(tmp_path, umask_022):
    path = fileio.atomic_write_text(tmp_path / "sub" / "a.json", '{"x": "\u00e9"}\n')
    assert path == tmp_path / "sub" / "a.json"
    assert path.read_text(encoding="utf-8") == '{"x": "\u00e9"}\n'
    assert _mode(path) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_write_bytes_replaces_and_follows_umask(tmp_path):
    target = tmp_path / "b.bin"
    target.write_bytes(b"old")
    old = os.umask(0o027)
    try:
        fileio.atomic_write_bytes(target, b"\x00new\xff")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"\x00new\xff"
    assert _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["b.bin"]


def test_atomic_path_keeps_suffix_and_permissions(tmp_path, umask_022):
    with fileio.atomic_path(tmp_path / "c.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name != "c.png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "c.png").read_bytes() == b"png"
    assert _mode(tmp_path / "c.png") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_error_leaves_target_untouched_and_no_temp(tmp_path):
    target = tmp_path / "d.txt"
    target.write_text("keep")
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["d.txt"]

    with pytest.raises(RuntimeError), fileio.atomic_path(tmp_path / "new.txt") as tmp:
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["d.txt"]


def test_ctrl_c_as_the_temporary_file_is_made_leaves_none(tmp_path, monkeypatch):
    """Ctrl-C lands between any two steps: once the temporary file exists (here: as its descriptor
    is closed, before the body runs), it is still removed."""
    real_close = os.close

    def interrupted(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt), fileio.atomic_path(tmp_path / "e.json") as tmp:
        tmp.write_text("never")
    assert list(tmp_path.iterdir()) == []


def test_writers_in_the_project_use_it(tmp_path, umask_022):
    """The former private copies (config, images, run report) now give 0644 files too."""
    import numpy as np
    from omegaconf import OmegaConf

    from core.config import save_config
    from core.images import save_rgba
    from pipeline import reports

    assert reports.atomic_write_text is fileio.atomic_write_text  # the run report's writer
    cfg = save_config(OmegaConf.create({"a": 1}), tmp_path / "cfg.yaml")
    png = save_rgba(np.ones((4, 4, 4), np.float32), tmp_path / "img.png")
    for p in (cfg, png):
        assert _mode(p) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "img.png"]
