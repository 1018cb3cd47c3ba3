"""The HTTP API for scripts: ``POST /api/generate`` (an image, or a prompt for a text model, in; the
``.glb`` or a JSON out), files, health."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from core.errors import UserError
from webapp.jobs import Generator, JobResult, Settings, UploadTooLarge

__all__ = ["add_api_routes", "result_json"]

log = logging.getLogger("microdreamer")
#: Media types of the files a job serves.
MEDIA = {
    ".glb": "model/gltf-binary",
    ".ply": "application/octet-stream",
    ".png": "image/png",
    ".mp4": "video/mp4",
    ".json": "application/json",
    ".obj": "text/plain",
    ".mtl": "text/plain",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def result_json(result: JobResult, base: str = "") -> dict[str, Any]:
    """The JSON answer: job id, links to every output (``/api/files/<id>/<name>``), times, reports."""
    return {
        "id": result.job_id,
        "files": {k: f"{base}/api/files/{result.job_id}/{p.name}" for k, p in result.outputs.items()},
        "summary": result.summary,
        "reports": result.reports,
    }


def _opt(form: Any, key: str, kind: type) -> Any:
    """A form field as ``kind`` (None when absent or blank); UserError names the field when malformed."""
    raw = form.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if kind is bool:
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise UserError(f"form field {key}={raw!r} is not a {kind.__name__}") from None


def add_api_routes(app: FastAPI, gen: Generator) -> None:
    """Register ``/api/health``, ``/api/generate`` and ``/api/files/<id>/<name>`` on ``app``."""

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """The server is up and its models are loaded."""
        return {"status": "ok", "models": gen.model_names()}

    @app.post("/api/generate", response_model=None)
    async def generate(request: Request) -> Any:
        """Multipart ``image`` (+ optional model, seed, elevation, iters, prompt, video, format=json);
        a text model (e.g. mvdream) takes ``prompt`` (required) and no ``image``."""
        declared = int(request.headers.get("content-length") or 0)
        if declared > gen.max_upload_bytes + 64 * 1024:
            return _error(413, f"the upload is over the {gen.max_upload_bytes / 2**20:.0f} MiB limit")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as e:  # malformed multipart, or not multipart at all
            return _error(400, f"send the image as multipart form field 'image' ({e})")
        upload = form.get("image")
        model = form.get("model")
        model = model.strip() if isinstance(model, str) and model.strip() else gen.default_model
        text = model in gen.models and gen.is_text(model)  # a text model takes a prompt, no image
        if isinstance(upload, str) and not upload:  # curl -F image= : no file
            upload = None
        if not text and (upload is None or isinstance(upload, str)):
            return _error(400, "no file in form field 'image': curl -F image=@cat.png ...")
        if isinstance(upload, str):
            return _error(400, "form field 'image' must be a file: curl -F image=@cat.png ...")
        try:
            data = await upload.read(gen.max_upload_bytes + 1) if upload is not None else None
            settings = Settings(
                model=_opt(form, "model", str),
                seed=_opt(form, "seed", int),
                elevation=_opt(form, "elevation", float),
                iters=_opt(form, "iters", int),
                prompt=_opt(form, "prompt", str),
                video=bool(_opt(form, "video", bool)),
            )
            as_json = (_opt(form, "format", str) or request.query_params.get("format", "")) == "json"
            filename = upload.filename if upload is not None else None
            result = await run_in_threadpool(gen.run, data, filename, settings)
        except UploadTooLarge as e:
            return _error(413, str(e))
        except UserError as e:
            return _error(400, str(e))
        except Exception as e:  # the server keeps serving; the client gets one line
            log.exception("job failed")
            return _error(500, f"the job failed: {type(e).__name__}: {e}")
        if as_json:
            return result_json(result)
        glb = result.outputs["glb"]
        return FileResponse(
            glb, media_type=MEDIA[".glb"], filename=glb.name, headers={"X-Job-Id": result.job_id}
        )

    @app.get("/api/files/{job_id}/{name}", response_model=None)
    def files(job_id: str, name: str) -> Any:
        """One output file of a job (only files directly in its output folder)."""
        try:
            out = gen.job_folder(job_id) / "out"
        except UserError as e:
            return _error(404, str(e))
        path = out / name
        if Path(name).name != name or name.startswith(".") or not path.is_file():
            return _error(404, f"no such file: {name}")
        return FileResponse(
            path, media_type=MEDIA.get(path.suffix, "application/octet-stream"), filename=name
        )
