"""Preview grid (and turntable video) of any .glb/.obj/.ply: ``python -m tools.render FILE [--video]``.

Writes ``<stem>_preview.png`` (8 views at elevation 0, azimuths 0..315, white background) and with
``--video`` a 120-frame turntable ``<stem>.mp4`` into ``--out`` (default: beside the file).
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS
from core.errors import exit_code


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m tools.render", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE", help=".glb, .obj (meshes) or .ply (3D Gaussians)")
    p.add_argument("--video", action="store_true", help="also write a turntable <stem>.mp4")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    p.add_argument("--out", default=None, help="output folder (default: beside each file)")
    p.add_argument("--views", type=int, default=8, help="views in the preview grid (default 8)")
    p.add_argument("--frames", type=int, default=120, help="turntable frames (default 120 = 3 degrees each)")
    p.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    p.add_argument(
        "--elevation", type=float, default=0.0, help="camera elevation in degrees, negative = above"
    )
    p.add_argument(
        "--radius", type=float, default=DEFAULT_RADIUS, help="camera distance (default: the stages' radius)"
    )
    p.add_argument("--fovy", type=float, default=DEFAULT_FOVY, help="vertical field of view in degrees")
    p.add_argument(
        "--normalize",
        action="store_true",
        help="centre the object and fit it in [-0.9,0.9]^3 first (for files not made by this project)",
    )
    p.add_argument("--chunk", type=int, default=8, help="views per renderer call (lower it to save memory)")
    p.add_argument("--backend", default="auto", help="renderer backend: auto | torch | gsplat | nvdiffrast")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    """Render each file; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipeline.previews import render_file

    def body() -> int:
        for f in args.files:
            outputs = render_file(
                f,
                out_dir=args.out,
                size=args.size,
                video=args.video,
                n_views=args.views,
                n_frames=args.frames,
                fps=args.fps,
                elevation=args.elevation,
                radius=args.radius,
                fovy=args.fovy,
                normalize=args.normalize,
                chunk=args.chunk,
                backend=args.backend,
                device=args.device,
            )
            for name, path in outputs.items():
                print(f"{name}: {path}")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
