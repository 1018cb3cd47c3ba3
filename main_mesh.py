"""Stage 2: refine the coarse mesh's UV texture -> final textured ``.glb``.

    python main_mesh.py --config configs/image.yaml input=cat.png [key=value ...]

Reads ``mesh=`` or stage 1's ``<outdir>/<save_path>_mesh.<glb|obj>`` and writes
``<outdir>/<save_path>.glb``, ``_final_preview.png`` and ``_final_report.json``. The library call
is :func:`pipeline.run_stage2`.
"""

from __future__ import annotations

import sys

from pipeline import cli, run_stage2


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return cli(run_stage2, argv)


if __name__ == "__main__":
    sys.exit(main())
