"""One command: image -> final textured ``.glb`` (both stages in one process, the model loaded once).

    python main.py --config configs/image.yaml input=cat.png [key=value ...]

Takes the same config and ``key=value`` overrides as ``main_gs.py``/``main_mesh.py`` and writes
what both write (``<outdir>/<save_path>_model.ply``, ``_mesh.*``, ``.glb``, previews and the two
reports). The library call is :func:`pipeline.image_to_3d`.
"""

from __future__ import annotations

import sys

from pipeline import cli, image_to_3d


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return cli(image_to_3d, argv)


if __name__ == "__main__":
    sys.exit(main())
