"""process.py on real images: recentred RGBA outputs, folders, its own outputs skipped, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.images as images
import process
from core.images import BackgroundRemovalError, composite_white, read_image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "images"
NAMES = ["cat_rgba.png", "00_zero123_lysol_rgba.png", "teapot_rgba.png"]

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason="../shared/data/images is missing")


def bbox(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > 0)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def check_recentred(path: Path, size: int, border: float) -> None:
    out = np.asarray(Image.open(path))
    assert out.shape == (size, size, 4)
    y0, y1, x0, x1 = bbox(out[..., 3])
    assert abs(max(y1 - y0, x1 - x0) - int(size * (1 - border))) <= 1
    assert abs((y0 + y1) / 2 - size / 2) <= 1.0 and abs((x0 + x1) / 2 - size / 2) <= 1.0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Real inputs under plain names, plus an earlier output that must be skipped."""
    d = tmp_path / "in"
    d.mkdir()
    for name in NAMES:
        shutil.copy(IMAGES / name, d / name.replace("_rgba", ""))
    shutil.copy(IMAGES / "cat_rgba.png", d / "old_rgba.png")
    (d / "notes.txt").write_text("not an image, not even by extension")
    return d


def test_single_file_beside_input(tmp_path):
    src = tmp_path / "cat.png"
    shutil.copy(IMAGES / "cat_rgba.png", src)
    assert process.main([str(src), "--size", "128", "--border_ratio", "0.25"]) == 0
    check_recentred(tmp_path / "cat_rgba.png", 128, 0.25)


def test_folder_skips_own_outputs(folder, tmp_path):
    out = tmp_path / "out"
    assert process.main([str(folder), "--out", str(out)]) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(n.replace("_rgba", "").replace(".png", "_rgba.png") for n in NAMES)
    assert "old_rgba_rgba.png" not in made
    for p in out.iterdir():
        check_recentred(p, 256, 0.2)
    # Re-running beside the inputs does not process the outputs it wrote.
    assert process.main([str(folder)]) == 0
    assert not list(folder.glob("*_rgba_rgba.png"))
    assert process.collect_inputs(folder) == sorted(folder / n.replace("_rgba", "") for n in NAMES)


def test_no_recenter_keeps_the_image(tmp_path):
    src = tmp_path / "teapot.png"
    shutil.copy(IMAGES / "teapot_rgba.png", src)
    assert process.main([str(src), "--no-recenter"]) == 0
    a, _ = read_image(src)
    b, _ = read_image(tmp_path / "teapot_rgba.png")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1 / 255 + 1e-6


def test_rgb_input_uses_rembg_and_failure_is_clear(tmp_path, monkeypatch, capsys):
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    jpg = tmp_path / "cat.jpg"
    Image.fromarray((composite_white(rgba) * 255).astype(np.uint8)).save(jpg, quality=95)
    # rembg works (faked): the matte is used and the output is recentred.
    monkeypatch.setattr(images, "remove_background", lambda rgb, model="u2net": rgba)
    assert process.main([str(jpg), "--size", "96"]) == 0
    check_recentred(tmp_path / "cat_rgba.png", 96, 0.2)

    # rembg's model cannot be fetched: one clear line, exit 2, no traceback.
    def no_model(rgb, model="u2net"):
        raise BackgroundRemovalError(
            images._rembg_help(model, "download failed, no internet? ConnectionError")
        )

    monkeypatch.setattr(images, "remove_background", no_model)
    assert process.main([str(jpg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "U2NET_HOME" in err[0] and "alpha" in err[0]


def test_folder_with_a_corrupt_file_goes_on(folder, tmp_path, capsys):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    assert process.main([str(folder), "--out", str(out)]) == 1
    assert len(list(out.iterdir())) == len(NAMES)
    assert "broken.png" in capsys.readouterr().err


def test_cli_errors_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "process.py", str(tmp_path / "missing.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: not found: {tmp_path / 'missing.png'}"]
    assert process.main([str(tmp_path), "--size", "0"]) == 2
    assert process.main([str(tmp_path)]) == 2  # a folder with no images
