"""The server: the HTTP API and the gradio page on one FastAPI app, sharing one :class:`Generator`."""

from __future__ import annotations

from fastapi import FastAPI

from webapp.api import add_api_routes
from webapp.jobs import Generator

__all__ = ["build_app"]


def build_app(gen: Generator, queue_size: int = 32) -> FastAPI:
    """FastAPI app: ``/api/...`` routes, the page at ``/`` (gradio's queue: one job at a time)."""
    import gradio as gr

    from webapp.ui import build_ui

    app = FastAPI(title="MicroDreamer")
    add_api_routes(app, gen)
    demo = build_ui(gen).queue(max_size=queue_size, default_concurrency_limit=1)
    # The job folders are served (their names are random uuids: one user cannot list another's).
    return gr.mount_gradio_app(
        app,
        demo,
        path="/",
        allowed_paths=[str(gen.workdir)],
        max_file_size=gen.max_upload_bytes,
        footer_links=["api"],
    )
