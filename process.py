"""Prepare input images: remove the background (rembg) where there is no alpha, recentre, save RGBA.

    python process.py cat.jpg                      # -> cat_rgba.png beside it
    python process.py photos/ --out inputs/        # every image in the folder (not its *_rgba.png)
    python process.py cat.jpg --size 512 --border_ratio 0.1 --no-recenter

The same functions load images inside the stages (core/images.py), so an image prepared here and
one given directly to main_gs.py are treated alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.errors import UserError, exit_code
from core.images import IMAGE_SUFFIXES, BackgroundRemovalError, read_rgba, recenter, save_rgba

OUTPUT_SUFFIX = "_rgba.png"


def output_path(src: Path, out_dir: Path | None) -> Path:
    """``<dir>/<stem>_rgba.png``: beside the input, or in ``out_dir``."""
    return (out_dir or src.parent) / f"{src.stem}{OUTPUT_SUFFIX}"


def collect_inputs(path: Path) -> list[Path]:
    """The images to process: the file itself, or a folder's images except our own outputs."""
    if not path.exists():
        raise UserError(f"not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(OUTPUT_SUFFIX)
    )
    if not files:
        raise UserError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path} other than *{OUTPUT_SUFFIX} outputs"
        )
    return files


def process_file(
    src: Path,
    dst: Path,
    size: int = 256,
    border_ratio: float = 0.2,
    recenter_image: bool = True,
    model: str = "u2net",
) -> Path:
    """Background removal (if no alpha) + optional recentring of one image, written to ``dst``."""
    rgba = read_rgba(src, model)
    if recenter_image:
        try:
            rgba = recenter(rgba, size, border_ratio)
        except UserError as e:
            raise UserError(f"{src}: {e}") from None
    return save_rgba(rgba, dst)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="process.py",
        description="Remove backgrounds (rembg, for images without alpha) and recentre objects; "
        f"writes <name>{OUTPUT_SUFFIX}.",
    )
    p.add_argument("path", type=Path, help="an image file or a folder of images")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: beside each input)")
    p.add_argument("--size", type=int, default=256, help="output canvas size in pixels (default 256)")
    p.add_argument(
        "--border_ratio", type=float, default=0.2, help="empty border around the object (default 0.2)"
    )
    p.add_argument(
        "--recenter",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="crop to the object and centre it on a size x size canvas (default on); "
        "--no-recenter keeps the image as it is",
    )
    p.add_argument(
        "--model",
        default="u2net",
        help="rembg model name (default u2net) or a local .onnx file; downloaded models live in "
        "$U2NET_HOME (default ~/.u2net)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 some files failed, 2 usage/setup error)."""
    args = build_parser().parse_args(argv)
    return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """The tool behind :func:`main`; raises UserError on a usage/setup error."""
    if args.size <= 0:
        raise UserError(f"--size must be positive, got {args.size}")
    if not 0.0 <= args.border_ratio < 1.0:
        raise UserError(f"--border_ratio must be in [0, 1), got {args.border_ratio}")
    files = collect_inputs(args.path)
    failed = 0
    for src in files:
        dst = output_path(src, args.out)
        t0 = time.perf_counter()
        try:
            process_file(src, dst, args.size, args.border_ratio, args.recenter, args.model)
        except BackgroundRemovalError:
            raise  # the model is missing for every file alike: stop instead of repeating the message
        except UserError as e:
            if len(files) == 1:
                raise
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{src} -> {dst} ({time.perf_counter() - t0:.2f} s)")
    if failed:
        print(f"{failed} of {len(files)} images failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
