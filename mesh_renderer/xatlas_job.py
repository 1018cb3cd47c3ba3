"""xatlas in a separate, killable process: ``python xatlas_job.py IN.npz OUT.npz``, or ``--serve``.

Run by :func:`mesh_renderer.uv.unwrap_uv` so that a slow unwrap can be stopped at its time budget
(xatlas holds the GIL in-process, so a thread could neither be stopped nor let the caller go on).
With ``workers > 1`` one process runs per part of the mesh, all at once (xatlas is single-threaded
here, so parallel processes are what use the cores).
Imports only numpy and xatlas (no torch). ``--serve`` keeps one process for many jobs
(:mod:`mesh_renderer.xatlas_pool`): it reads ``IN OUT`` lines on stdin and answers each with one
line, ``ok`` or ``err <message>``, on stdout (whatever else is printed there goes to stderr); it
exits at the end of stdin, so it never outlives its parent's pipe. A process start with these
imports is 0.25-0.35 s on a GPU host, as long as the unwrap of a 19k-face coarse mesh itself.
IN holds ``v`` float32 [N,3], ``f`` uint32 [F,3] and the options; OUT gets ``vmap``, ``idx``,
``uvs`` and ``charts``.
"""

from __future__ import annotations

import sys


def main(src: str, dst: str) -> None:
    """Unwrap the mesh in ``src`` and write the atlas to ``dst``."""
    import numpy as np
    import xatlas

    d = np.load(src)
    atlas = xatlas.Atlas()
    atlas.add_mesh(d["v"], d["f"])
    chart = xatlas.ChartOptions()
    chart.max_iterations = int(d["max_iterations"])
    if float(d["max_chart_area"]) > 0:
        chart.max_chart_area = float(d["max_chart_area"])
    pack = xatlas.PackOptions()
    pack.resolution = int(d["tex_size"])
    pack.padding = int(d["padding"])
    pack.bilinear = True
    atlas.generate(chart, pack)
    vmap, idx, uvs = atlas[0]
    np.savez(dst, vmap=vmap, idx=idx, uvs=uvs, charts=np.int64(atlas.chart_count))


def serve() -> None:
    """Run :func:`main` for each ``IN OUT`` line of stdin, answering ``ok`` / ``err ...`` per line."""
    import os

    import numpy  # noqa: F401  (imported before the first job: that is what the pool saves)
    import xatlas  # noqa: F401

    # xatlas prints its warnings (and release-build assertion failures) with C printf on fd 1: the
    # answers get their own copy of the pipe and fd 1 becomes stderr, so no stray text (a whole
    # line, or half of one from a flushed C buffer) is ever read as an answer.
    answers = os.fdopen(os.dup(1), "w", errors="backslashreplace")  # the parent's encoding
    sys.stdout.flush()
    os.dup2(2, 1)
    for line in sys.stdin:
        src, _, dst = line.rstrip("\n").partition("\t")
        try:
            main(src, dst)
            answer = "ok"
        except Exception as exc:  # one bad job must not end the server; the caller raises it
            answer = "err " + " ".join(f"{type(exc).__name__}: {exc}".splitlines())
        answers.write(answer + "\n")
        answers.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(sys.argv[1], sys.argv[2])
