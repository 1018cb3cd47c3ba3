"""Input images: read any common format, remove the background if needed, recentre, resize.

The pipeline's view of an input is ``rgb float [3,H,W]`` composited on **white** and
``mask float [1,H,W]`` (the alpha), both in [0,1] at ``ref_size``. Arrays inside this module are
``float32 [H,W,4]`` straight (not premultiplied) RGBA in [0,1].

Recentring follows the authors' ``process.py`` (docs/method.md#input-image): bounding box of ``alpha > 0``, its longer
side scaled to ``size * (1 - border_ratio)``, area resize, pasted centred on a transparent
``size x size`` canvas. Two deliberate differences: the box is inclusive (the authors' exclusive max
drops one row and column), and resizing is done on premultiplied colour so transparent pixels'
hidden colour cannot bleed into the edges as dark fringes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import UserError
from core.fileio import atomic_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "BackgroundRemovalError",
    "OnnxMaskModel",
    "composite_white",
    "load_image",
    "read_image",
    "read_rgba",
    "recenter",
    "remove_background",
    "resize_square",
    "save_rgba",
]

log = logging.getLogger(__name__)

#: Upscaling the object by more than this to reach ``ref_size`` logs a warning (blurry reference).
MAX_UPSCALE = 8.0

#: File suffixes treated as images when scanning folders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class BackgroundRemovalError(UserError):
    """rembg or its model is unavailable: a setup problem that affects every RGB input."""


#: What reading a broken, truncated, non-image or decompression-bomb file can raise.
IMAGE_READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@contextlib.contextmanager
def opened_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` with the pixels loaded and decompression bombs refused (raises IMAGE_READ_ERRORS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            yield img


def error_reason(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """Decode an image file: ``(float32 [H,W,4] RGBA in [0,1], has_alpha)``.

    Handles 8/16-bit, grayscale, palette (with transparency) and EXIF rotation. Images without an
    alpha channel get alpha 1. Missing, empty, corrupt or non-image files raise :class:`UserError`.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"input image not found: {path}")
    if path.is_dir():
        raise UserError(f"input image is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"input image is an empty file: {path}")
    try:
        with opened_image(path) as img:
            rgba, has_alpha = _to_rgba(ImageOps.exif_transpose(img))
    except IMAGE_READ_ERRORS as e:
        raise UserError(f"cannot read image {path}: not an image or corrupt ({error_reason(e)})") from None
    if rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise UserError(f"input image {path} has no pixels ({rgba.shape[1]}x{rgba.shape[0]})")
    return rgba, has_alpha


def _to_rgba(img: Image.Image) -> tuple[np.ndarray, bool]:
    """PIL image of any mode -> (float32 [H,W,4] in [0,1], has_alpha)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale: PIL's convert() would clip to 8 bits badly.
        a = np.asarray(img, dtype=np.float32)
        if mode == "F":
            g = np.clip(a, 0.0, 1.0) if a.max() <= 1.0 else a / max(float(a.max()), 1.0)
        else:
            g = a / (65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0)
        g = np.clip(g, 0.0, 1.0)
        return np.stack([g, g, g, np.ones_like(g)], axis=-1), False
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    img = img.convert("RGBA" if has_alpha else "RGB")
    a = np.asarray(img, dtype=np.float32) / 255.0
    if not has_alpha:
        a = np.concatenate([a, np.ones_like(a[..., :1])], axis=-1)
    return np.ascontiguousarray(a), has_alpha


_SESSIONS: dict[str, object] = {}


def _rembg_model_files(model: str) -> list[str]:
    """Where rembg looks for a downloaded model: ``$U2NET_HOME/<m>.onnx`` (default ``~/.u2net``)
    and ``$REMBG_HOME/models/<m>/<m>.onnx`` (default ``~/.rembg``)."""
    legacy = os.getenv("U2NET_HOME", os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net"))
    xdg = os.getenv("XDG_DATA_HOME")
    home = (
        os.getenv("U2NET_HOME")
        or os.getenv("REMBG_HOME")
        or (os.path.join(xdg, "rembg") if xdg else "~/.rembg")
    )
    files = [os.path.join(legacy, f"{model}.onnx"), os.path.join(home, "models", model, f"{model}.onnx")]
    return [os.path.expanduser(f) for f in files]


def _rembg_help(model: str, reason: str) -> str:
    where = " or ".join(_rembg_model_files(model))
    return (
        f"background removal for an image without alpha needs rembg and its '{model}' model, which could "
        f"not be loaded ({reason}). Either give an RGBA image with the background removed (a PNG with "
        f"alpha, e.g. made by `python process.py IMAGE` on a machine with internet), or put the model "
        f"file at {where} (U2NET_HOME sets the folder), or pass a local model file "
        f"(process.py --model /path/to/{model}.onnx)"
    )


def _short_reason(e: BaseException) -> str:
    """One short clause for an exception; network failures say so plainly."""
    text = str(e).splitlines()[0] if str(e) else ""
    if any(w in f"{type(e).__name__} {text}" for w in ("Connection", "NameResolution", "Timeout", "HTTP")):
        return f"download failed, no internet? {type(e).__name__}"
    return f"{type(e).__name__}: {text[:160]}"


class OnnxMaskModel:
    """A u2net-style salient-object model (``.onnx``) loaded from any path with onnxruntime.

    rembg 2.0.86 refuses model files outside its own models folder, so a local file is run here
    with u2net's pre/post-processing (as rembg does it): resize to the model's input size (320 px),
    divide by the image maximum, ImageNet mean/std, NCHW float32 in; first output ``[1,1,h,w]``,
    min-max normalised, resized back (Lanczos) as the alpha.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in ort.get_available_providers() if p in wanted] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ValueError(f"input {inp.name} has shape {shape}, not [N,3,H,W] like u2net")
        self.input_name = inp.name
        # Fixed spatial sizes come from the model; dynamic ones use u2net's 320.
        self.size = tuple(d if isinstance(d, int) and d > 0 else 320 for d in shape[2:])

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability float32 ``[H,W]`` in [0,1] for RGB float ``[H,W,3]`` in [0,1]."""
        h, w = rgb.shape[:2]
        u8 = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        x = np.asarray(u8.resize((self.size[1], self.size[0]), Image.Resampling.LANCZOS), np.float64)
        x = x / max(float(x.max()), 1e-6)
        x = (x - np.array(self.MEAN)) / np.array(self.STD)
        x = x.transpose(2, 0, 1)[None].astype(np.float32)
        out = np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)
        if out.ndim not in (3, 4) or (out.ndim == 4 and out.shape[1] != 1):
            raise ValueError(f"output shape {out.shape} is not a [1,1,H,W] mask")
        pred = out.reshape(-1, *out.shape[-2:])[0]
        lo, hi = float(pred.min()), float(pred.max())
        pred = (pred - lo) / (hi - lo) if hi - lo > 1e-12 else np.clip(pred, 0.0, 1.0)
        m8 = Image.fromarray((pred * 255).astype(np.uint8), "L").resize((w, h), Image.Resampling.LANCZOS)
        return np.asarray(m8, dtype=np.float32) / 255.0


def _rembg_session(model: str):
    """A cached session; ``model`` is a rembg model name or a path to a .onnx file (any folder)."""
    if model in _SESSIONS:
        return _SESSIONS[model]
    if model.lower().endswith(".onnx"):
        try:
            if not Path(model).is_file():
                raise FileNotFoundError(f"no such model file {model}")
            session = OnnxMaskModel(model)
        except Exception as e:  # missing file, onnxruntime errors, a model of another layout
            raise BackgroundRemovalError(_rembg_help(Path(model).stem, _short_reason(e))) from None
        _SESSIONS[model] = session
        return session
    try:
        # rembg calls sys.exit() when onnxruntime is missing, hence BaseException here.
        import rembg
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise BackgroundRemovalError(
            _rembg_help(model, f"cannot import rembg ({type(e).__name__}); pip install onnxruntime rembg")
        ) from None
    try:
        session = rembg.new_session(model)
    except Exception as e:  # download, network and onnx errors all mean "no usable model here"
        raise BackgroundRemovalError(_rembg_help(model, _short_reason(e))) from None
    _SESSIONS[model] = session
    return session


def remove_background(rgb: np.ndarray, model: str = "u2net") -> np.ndarray:
    """Cut the object out of ``float [H,W,3]`` RGB: float32 ``[H,W,4]`` straight RGBA in [0,1].

    ``model`` is a rembg model name (downloaded by rembg) or the path of a u2net-style ``.onnx``
    file anywhere on disk (run by :class:`OnnxMaskModel`).
    """
    session = _rembg_session(model)
    if isinstance(session, OnnxMaskModel):
        try:
            alpha = session.mask(rgb)
        except Exception as e:  # onnxruntime errors on a model of another layout
            raise BackgroundRemovalError(_rembg_help(session.path.stem, _short_reason(e))) from None
        return np.concatenate([np.clip(rgb, 0, 1), alpha[..., None]], axis=-1).astype(np.float32)
    import rembg

    u8 = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = rembg.remove(Image.fromarray(u8, "RGB"), session=session)
    return np.asarray(out.convert("RGBA"), dtype=np.float32) / 255.0


def read_rgba(path: str | Path, rembg_model: str = "u2net") -> np.ndarray:
    """Read an image as float32 ``[H,W,4]`` RGBA; images without alpha go through rembg."""
    rgba, has_alpha = read_image(path)
    if not has_alpha:
        try:
            rgba = remove_background(rgba[..., :3], rembg_model)
        except BackgroundRemovalError as e:
            raise BackgroundRemovalError(f"{path} has no alpha channel; {e}") from None
    elif not (rgba[..., 3] < 0.5).any():
        # Usable (the whole image is the object) but almost always a mistake: a PNG saved with an
        # alpha channel and its background still in place.
        log.warning(
            "%s has an alpha channel but no transparent pixel: was its background removed? "
            "(the whole image is taken as the object)",
            path,
        )
    return rgba


def upscale_factor(rgba: np.ndarray, size: int, border_ratio: float = 0.2, recenter: bool = True) -> float:
    """How much :func:`load_image` enlarges the object (``alpha > 0`` box, or the whole image)."""
    if recenter:
        mask = rgba[..., 3] > 0
        if not mask.any():
            return 1.0
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        return int(size * (1 - border_ratio)) / side
    return size / max(rgba.shape[:2])


def _resize(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize RGBA on premultiplied colour: area average when shrinking, bilinear when enlarging."""
    h, w = rgba.shape[:2]
    if (h, w) == (height, width):
        return rgba.copy()
    shrink = width < w or height < h
    # BOX in PIL is an exact area average (like cv2.INTER_AREA when shrinking).
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    a = rgba[..., 3:]
    premul = np.concatenate([rgba[..., :3] * a, a], axis=-1)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(premul[..., c]), "F").resize((width, height), method))
        for c in range(4)
    ]
    out = np.clip(np.stack(chans, axis=-1), 0.0, 1.0)
    alpha = out[..., 3:]
    rgb = np.where(alpha > 1e-6, out[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return np.concatenate([np.clip(rgb, 0.0, 1.0), alpha], axis=-1).astype(np.float32)


def recenter(rgba: np.ndarray, size: int = 256, border_ratio: float = 0.2) -> np.ndarray:
    """Centre the object (``alpha > 0``) on a transparent ``size x size`` canvas (docs/method.md#input-image).

    The bounding box's longer side becomes ``int(size * (1 - border_ratio))`` pixels, the aspect is
    kept, and the box is centred (integer offset ``(size - side) // 2``).
    """
    if not 0.0 <= border_ratio < 1.0:
        raise UserError(f"border_ratio must be in [0, 1), got {border_ratio}")
    mask = rgba[..., 3] > 0
    if not mask.any():
        raise UserError("the image has no visible object: its alpha channel is zero everywhere")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = y1 - y0, x1 - x0
    desired = int(size * (1 - border_ratio))
    scale = desired / max(h, w)
    h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((size, size, 4), dtype=np.float32)
    top, left = (size - h2) // 2, (size - w2) // 2
    out[top : top + h2, left : left + w2] = _resize(rgba[y0:y1, x0:x1], w2, h2)
    return out


_recenter = recenter  # load_image's argument is called ``recenter`` (the contract in ARCHITECTURE.md)


def resize_square(rgba: np.ndarray, size: int) -> np.ndarray:
    """Pad to a centred square (transparent) so the aspect survives, then resize to ``size``."""
    h, w = rgba.shape[:2]
    if h != w:
        n = max(h, w)
        sq = np.zeros((n, n, 4), dtype=np.float32)
        sq[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = rgba
        rgba = sq
    return _resize(rgba, size, size)


def composite_white(rgba: np.ndarray) -> np.ndarray:
    """Straight RGBA ``[H,W,4]`` -> RGB ``[H,W,3]`` over a white background."""
    a = rgba[..., 3:]
    return rgba[..., :3] * a + (1.0 - a)


def load_image(
    path: str | Path,
    ref_size: int = 256,
    border_ratio: float = 0.2,
    recenter: bool = True,
    rembg_model: str = "u2net",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an input image for the pipeline: ``(rgb float [3,S,S] on white, mask float [1,S,S])``.

    ``S = ref_size``. With ``recenter`` the object is recentred with ``border_ratio`` (docs/method.md#input-image);
    without, the image is padded to a square and resized. Raises :class:`UserError` for missing or
    unreadable files and when an RGB image needs rembg but it is unavailable.
    """
    import torch  # here, so process.py starts without loading torch

    if int(ref_size) <= 0:
        raise UserError(f"ref_size must be a positive number of pixels, got {ref_size}")
    rgba = read_rgba(path, rembg_model)
    factor = upscale_factor(rgba, int(ref_size), border_ratio, recenter)
    if factor > MAX_UPSCALE:
        log.warning(
            "%s: the object is only %dx%d px, upscaled %.1fx to ref_size %d: the reference will be blurry "
            "(use a larger image)",
            path,
            *_object_size(rgba, recenter),
            factor,
            int(ref_size),
        )
    if recenter:
        try:
            rgba = _recenter(rgba, int(ref_size), border_ratio)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    else:
        rgba = resize_square(rgba, int(ref_size))
    rgb = torch.from_numpy(np.ascontiguousarray(composite_white(rgba))).permute(2, 0, 1).contiguous()
    mask = torch.from_numpy(np.ascontiguousarray(rgba[..., 3:])).permute(2, 0, 1).contiguous()
    return rgb.float(), mask.float()


def _object_size(rgba: np.ndarray, recenter: bool) -> tuple[int, int]:
    """Width and height of the object box (``alpha > 0``) or of the image."""
    mask = rgba[..., 3] > 0
    if not recenter or not mask.any():
        return rgba.shape[1], rgba.shape[0]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def save_rgba(rgba: np.ndarray, path: str | Path) -> Path:
    """Write float ``[H,W,4]`` RGBA in [0,1] as an 8-bit PNG, atomically (temp file + rename)."""
    path = Path(path)
    u8 = (np.clip(rgba, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(u8, "RGBA").save(tmp, format="PNG")
    return path
