"""The web front end: a gradio page and an HTTP API over one long-lived :class:`Generator`.

Library API::

    gen = Generator(["configs/image.yaml"], overrides=["sir.iters=10"], workdir="logs/app")
    result = gen.run(png_bytes, "cat.png", Settings(seed=1))   # -> JobResult (outputs, reports)
    app = build_app(gen)                                       # FastAPI: /api/* + the page at /

Nothing in the product packages imports this package; ``app.py`` is its command line.
"""

from webapp.jobs import MAX_UPLOAD_BYTES, Generator, JobResult, Settings
from webapp.server import build_app

__all__ = ["MAX_UPLOAD_BYTES", "Generator", "JobResult", "Settings", "build_app"]
