"""The web app: a gradio page and an HTTP API that keep the models loaded between requests.

    python app.py --config configs/image.yaml [--host 127.0.0.1] [--port 7860] [key=value ...]
    python app.py --config configs/oracle_cpu.yaml          # runs on a CPU, no weights needed

The models load once, before the server answers; on a GPU a throw-away warm-up job follows
(``--warmup``), so that the first request does not pay the one-off kernel and CUDA-graph costs. Then open http://HOST:PORT/ in a browser, or::

    curl -F image=@cat.png -o cat.glb http://HOST:PORT/api/generate          # the textured .glb
    curl -F image=@cat.png -F format=json http://HOST:PORT/api/generate     # links + report
    curl -F prompt="a cute corgi" -o corgi.glb http://HOST:PORT/api/generate   # a text model (configs/text.yaml)

``--config`` may be given more than once (e.g. image.yaml and imagedream.yaml): each loads its model
and the page offers them; ``key=value`` overrides apply to every config. The library is :mod:`webapp`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from core.errors import UserError, exit_code
from pipeline.cli import setup_logging

log = logging.getLogger("microdreamer")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The server's options; everything not an option is a ``key=value`` config override."""
    p = argparse.ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=[], help="config file; repeat to load several models")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--workdir", default="logs/app", help="one folder per request is made under it")
    p.add_argument("--keep", type=int, default=50, help="keep the outputs of this many most recent requests")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (MiB)")
    p.add_argument("--queue-size", type=int, default=32, help="most requests waiting in the page's queue")
    p.add_argument(
        "--warmup",
        choices=("auto", "on", "off"),
        default="auto",
        help="run one throw-away job per model before serving, so the first request is warm "
        "(auto: on when a model runs on a GPU)",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. sir.iters=10)")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"not a key=value override: {bad[0]}")
    if not args.config:
        args.config = ["configs/image.yaml"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Load the models, then serve until interrupted; returns the exit status."""

    def body() -> int:
        args = parse_args(argv)
        setup_logging(quiet=False)
        import uvicorn

        from webapp import Generator, build_app

        gen = Generator(
            args.config,
            args.overrides,
            workdir=args.workdir,
            keep=args.keep,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
        )
        if args.warmup == "on" or (args.warmup == "auto" and gen.on_gpu()):
            gen.warm_up()
        app = build_app(gen, queue_size=args.queue_size)
        log.info("serving on http://%s:%d/ (API: POST /api/generate)", args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
