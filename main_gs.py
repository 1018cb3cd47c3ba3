"""Stage 1: image -> 3D Gaussians -> coarse textured mesh.

    python main_gs.py --config configs/image.yaml input=cat.png [key=value ...]

Writes ``<outdir>/<save_path>_model.ply``, ``_mesh.<mesh_format>``, ``_preview.png`` and
``_report.json``. The library call is :func:`pipeline.run_stage1`.
"""

from __future__ import annotations

import sys

from pipeline import cli, run_stage1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return cli(run_stage1, argv)


if __name__ == "__main__":
    sys.exit(main())
