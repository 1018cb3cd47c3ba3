"""core/images.py on the real input images in ../shared/data/images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.images as images
from core.errors import UserError
from core.images import BackgroundRemovalError, composite_white, load_image, read_image, read_rgba, recenter

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
NAMES = [
    "cat_rgba.png",
    "00_zero123_lysol_rgba.png",
    "csm_luigi_rgba.png",
    "teapot_rgba.png",
    "astronaut_rgba.png",
]

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason="../shared/data/images is missing")


def bbox(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive-exclusive bounding box (y0, y1, x0, x1) of alpha > 0."""
    ys, xs = np.nonzero(alpha > 0)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def png16(path: Path, x: np.ndarray) -> None:
    """Write a 16-bit RGB/RGBA PNG (PIL cannot write these)."""
    h, w, c = x.shape
    raw = b"".join(b"\x00" + x[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("name", NAMES[:2])
def test_rgba_load_mask_from_alpha_rgb_on_white(name):
    path = IMAGES / name
    src = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    size = src.shape[0]
    rgb, mask = load_image(path, ref_size=size, recenter=False)
    assert rgb.shape == (3, size, size) and mask.shape == (1, size, size)
    assert rgb.dtype == mask.dtype == torch.float32
    assert (
        float(rgb.min()) >= 0.0
        and float(rgb.max()) <= 1.0
        and 0.0 <= float(mask.min()) <= float(mask.max()) <= 1.0
    )
    # Same size and no recentring: the mask is the alpha and the colour is composited on white.
    assert np.allclose(mask[0].numpy(), src[..., 3], atol=1e-6)
    expected = src[..., :3] * src[..., 3:] + (1 - src[..., 3:])
    assert np.allclose(rgb.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    background = src[..., 3] == 0
    assert background.any() and np.allclose(rgb.permute(1, 2, 0).numpy()[background], 1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size, border", [(256, 0.2), (128, 0.1), (200, 0.3)])
def test_recenter_keeps_aspect_centres_and_scales(name, size, border):
    rgba, has_alpha = read_image(IMAGES / name)
    assert has_alpha
    y0, y1, x0, x1 = bbox(rgba[..., 3])
    out = recenter(rgba, size, border)
    assert out.shape == (size, size, 4)
    Y0, Y1, X0, X1 = bbox(out[..., 3])
    h, w, H, W = y1 - y0, x1 - x0, Y1 - Y0, X1 - X0
    # Longer side = size * (1 - border) (within a pixel of resampling blur); aspect kept.
    assert abs(max(H, W) - int(size * (1 - border))) <= 1
    assert abs(H / W - h / w) <= 2.0 / min(H, W) + 1e-6
    # bbox centre at the canvas centre within 1 px.
    assert abs((Y0 + Y1) / 2 - size / 2) <= 1.0 and abs((X0 + X1) / 2 - size / 2) <= 1.0

    # The object's alpha-weighted mean colour survives (premultiplied resizing adds no dark fringes).
    def mean_colour(x: np.ndarray) -> np.ndarray:
        return (x[..., :3] * x[..., 3:]).reshape(-1, 3).sum(0) / x[..., 3].sum()

    assert np.allclose(mean_colour(out), mean_colour(rgba), atol=0.02)


def test_load_image_recentred_tensor():
    rgb, mask = load_image(IMAGES / "cat_rgba.png", ref_size=64, border_ratio=0.2, recenter=True)
    assert rgb.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    m = mask[0].numpy()
    y0, y1, x0, x1 = bbox(m)
    assert abs(max(y1 - y0, x1 - x0) - int(64 * 0.8)) <= 1
    # Outside the object everything is white.
    assert torch.allclose(rgb[:, m == 0], torch.ones(1))


def test_recentering_is_idempotent_on_recentred_inputs():
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    once = recenter(rgba, 256, 0.2)
    twice = recenter(once, 256, 0.2)
    assert bbox(once[..., 3]) == pytest.approx(bbox(twice[..., 3]), abs=1)


def test_non_square_without_recentring_keeps_aspect(tmp_path):
    img = np.zeros((40, 80, 4), dtype=np.uint8)
    img[10:30, 20:60] = [255, 0, 0, 255]
    p = tmp_path / "wide.png"
    Image.fromarray(img, "RGBA").save(p)
    rgb, mask = load_image(p, ref_size=80, recenter=False)
    y0, y1, x0, x1 = bbox(mask[0].numpy() > 0.5)
    assert (y1 - y0, x1 - x0) == (20, 40)  # padded to a square, not stretched
    assert torch.allclose(rgb[:, 30, 40], torch.tensor([1.0, 0.0, 0.0]))


def test_formats_and_bit_depths(tmp_path):
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    u8 = (rgba * 255 + 0.5).astype(np.uint8)
    # WebP with alpha (lossless) reads back the same.
    Image.fromarray(u8, "RGBA").save(tmp_path / "cat.webp", lossless=True, exact=True)
    webp, has_alpha = read_image(tmp_path / "cat.webp")
    assert has_alpha and np.abs(webp - u8 / 255.0).max() < 1e-6
    # 16-bit RGBA PNG.
    x16 = (rgba * 65535).astype(np.uint16)
    png16(tmp_path / "cat16.png", x16)
    r16, has_alpha = read_image(tmp_path / "cat16.png")
    assert has_alpha and np.abs(r16 - rgba).max() < 1.0 / 200
    # 16-bit grayscale: scaled by 65535, no alpha.
    g = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    r, has_alpha = read_image(tmp_path / "g16.png")
    assert not has_alpha and r.shape == (32, 32, 4)
    assert r[..., 0].max() == pytest.approx(1.0) and r[..., 0].min() == 0.0 and (r[..., 3] == 1).all()
    # Grayscale with alpha and palette with transparency count as having alpha.
    Image.fromarray(u8[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[1]
    Image.fromarray(u8[..., :3]).convert("P").save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png")[1]


def _no_rembg(model: str):
    raise BackgroundRemovalError(images._rembg_help(model, "download failed, no internet? ConnectionError"))


def test_rgb_input_without_rembg_gives_helpful_error(tmp_path, monkeypatch):
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    jpg = tmp_path / "cat.jpg"
    Image.fromarray((composite_white(rgba) * 255).astype(np.uint8)).save(jpg)
    monkeypatch.setattr(images, "_rembg_session", _no_rembg)
    with pytest.raises(UserError) as e:
        load_image(jpg, 64)
    msg = str(e.value)
    assert str(jpg) in msg and "alpha" in msg and "process.py" in msg and "u2net" in msg
    assert "U2NET_HOME" in msg and "\n" not in msg


def test_rembg_import_failure_is_a_user_error(tmp_path, monkeypatch):
    """rembg calls sys.exit() when onnxruntime is missing: that must become a UserError too."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "rembg":
            raise SystemExit(1)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(images, "_SESSIONS", {})
    with pytest.raises(BackgroundRemovalError, match="cannot import rembg"):
        images.remove_background(np.ones((8, 8, 3), dtype=np.float32), "u2net")


def test_rgb_input_goes_through_background_removal(tmp_path, monkeypatch):
    """With a (fake) rembg, an RGB photo gets its alpha from background removal."""
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    jpg = tmp_path / "cat.png"
    Image.fromarray((composite_white(rgba) * 255).astype(np.uint8)).save(jpg)
    seen = {}

    def fake_remove(rgb: np.ndarray, model: str = "u2net") -> np.ndarray:
        seen["shape"], seen["model"] = rgb.shape, model
        return rgba  # what a perfect matting model would return

    monkeypatch.setattr(images, "remove_background", fake_remove)
    out = read_rgba(jpg, rembg_model="isnet")
    assert seen == {"shape": rgba.shape[:2] + (3,), "model": "isnet"}
    assert np.array_equal(out, rgba)


def test_bad_files_are_user_errors(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(UserError, match=f"not found: {missing}"):
        load_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.png"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    with pytest.raises(UserError, match="notes.png.*not an image or corrupt"):
        load_image(text)
    # A PNG cut in half.
    data = (IMAGES / "cat_rgba.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.png"):
        load_image(cut)
    with pytest.raises(UserError, match="folder"):
        load_image(tmp_path)
    # A fully transparent image has nothing to recentre.
    Image.fromarray(np.zeros((16, 16, 4), dtype=np.uint8), "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(UserError, match="clear.png.*alpha channel is zero everywhere"):
        load_image(tmp_path / "clear.png", 32)


def test_save_rgba_roundtrip(tmp_path):
    rgba, _ = read_image(IMAGES / "cat_rgba.png")
    out = images.save_rgba(rgba, tmp_path / "sub" / "x_rgba.png")
    back, has_alpha = read_image(out)
    assert has_alpha and np.abs(back - rgba).max() <= 1 / 255 + 1e-6
    assert sorted(p.name for p in out.parent.iterdir()) == ["x_rgba.png"]
