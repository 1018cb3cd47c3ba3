"""The server's one worker: models loaded once, each request run in its own folder, one at a time."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from core import config as C
from core.errors import UserError
from core.images import read_image
from pipeline import image_to_3d, prompt_slug
from pipeline.config import DEFAULT_CONFIG, config_rules, finalize_config

__all__ = ["MAX_UPLOAD_BYTES", "Generator", "JobResult", "Settings", "UploadTooLarge", "output_files"]

log = logging.getLogger("microdreamer")

#: Largest upload accepted (bytes); bigger ones are refused before they are decoded.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest image accepted (pixels): far above any useful input (the pipeline works at <=512 px).
MAX_PIXELS = 40_000_000
#: Job folders are uuid4 hex: the only names the file routes accept.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: Output kinds a result may hold, in the order the page and the JSON list them.
OUTPUT_KINDS = ("glb", "ply", "mesh", "preview", "final_preview", "video", "report", "final_report")


class UploadTooLarge(UserError):
    """The upload is over the size cap (HTTP 413)."""


@dataclass
class Settings:
    """What a user may tune per request; ``None`` keeps the model's config value."""

    model: str | None = None  # name of a loaded model (its config's ``guidance``)
    seed: int | None = None
    elevation: float | None = None
    iters: int | None = None  # stage-1 SIR iterations (``sir.iters``)
    prompt: str | None = None  # text prompt, for models that take one (ImageDream; required for text models)
    video: bool = False

    def overrides(self) -> list[str]:
        """The ``key=value`` overrides these settings make."""
        out = [f"video={str(bool(self.video)).lower()}"]
        if self.seed is not None:
            out.append(f"seed={int(self.seed)}")
        if self.elevation is not None:
            out.append(f"elevation={float(self.elevation)}")
        if self.iters is not None:
            out.append(f"sir.iters={int(self.iters)}")
        return out


@dataclass
class JobResult:
    """A finished request: its id, folder, output files (kind -> path) and both stages' reports."""

    job_id: str
    folder: Path
    outputs: dict[str, Path]
    reports: dict[str, dict]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Model:
    config_path: str
    cfg: DictConfig  # the base config (no input)
    denoiser: Any


def output_files(reports: dict[str, dict]) -> dict[str, Path]:
    """Kind -> path of every output file both stages wrote (``final_*`` for stage 2's preview/report)."""
    found: dict[str, Path] = {}
    for stage, rep in reports.items():
        for kind, path in (rep.get("outputs") or {}).items():
            if not path:
                continue
            key = f"final_{kind}" if stage == "stage2" and kind in ("preview", "report") else kind
            if stage == "stage2" and kind == "video":
                key = "video"  # the final (textured) turntable wins over stage 1's
            found[key] = Path(path)
    return {k: found[k] for k in OUTPUT_KINDS if k in found and found[k].is_file()}


def _summary(reports: dict[str, dict], seconds: float) -> dict[str, Any]:
    """Times and diffusion calls of a run, for the page and the JSON answer (``started``/``finished``,
    wall-clock epoch seconds of the locked run, are added by the caller)."""
    out: dict[str, Any] = {"total_seconds": round(seconds, 3)}
    for stage, rep in reports.items():
        secs = rep.get("seconds") or {}
        out[stage] = {
            "seconds": {k: round(float(v), 3) for k, v in secs.items() if isinstance(v, int | float)},
            "nfe": rep.get("nfe"),
        }
    return out


def safe_name(filename: str | None) -> str:
    """An output name from an upload's file name: its stem, letters/digits/_/- only (else ``model``)."""
    stem = Path(filename or "").stem
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40]
    return name or "model"


class _IterationLog(logging.Handler):
    """Turns the stages' per-iteration log lines ("stage 1 (Gaussians) 3/11 loss ...") into calls."""

    def __init__(self, on_progress: Callable[[str, int, int], None]) -> None:
        super().__init__(logging.INFO)
        self.on_progress = on_progress

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 4 and str(record.msg).startswith("%s %d/%d"):
            try:
                self.on_progress(str(args[0]), int(args[1]), int(args[2]))
            except Exception:  # a progress display must never fail a job
                log.debug("progress callback failed", exc_info=True)


class _NotATerminal:
    """stderr as seen by the stages during a job: writes pass through, ``isatty()`` is False, so the
    stages log one line per iteration (which the page turns into progress) instead of a rich bar."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _progress_reports(on_progress: Callable[[str, int, int], None] | None) -> Iterator[None]:
    """Route the stages' iteration lines to ``on_progress`` while a job runs."""
    if on_progress is None:
        yield
        return
    logger = logging.getLogger("microdreamer")
    handler, level, stderr = _IterationLog(on_progress), logger.level, sys.stderr
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    sys.stderr = _NotATerminal(stderr)
    try:
        yield
    finally:
        sys.stderr = stderr
        logger.removeHandler(handler)
        logger.setLevel(level)


class Generator:
    """Loads each config's model once; ``run`` turns one uploaded image into a result folder.

    ``configs``: one or more config files (the first is the default model); a model is named by its
    config's ``guidance`` key. ``overrides``: ``key=value`` applied to every config (validated at
    start-up). ``workdir``: one uuid-named folder per request under it; ``keep`` most recent kept.
    Jobs run one at a time (a lock shared by the page's queue and the HTTP API).
    """

    def __init__(
        self,
        configs: Sequence[str],
        overrides: Sequence[str] = (),
        workdir: str | Path = "logs/app",
        keep: int = 50,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        load: bool = True,
    ) -> None:
        from pipeline.both_stages import load_model
        from pipeline.setup import stage_device

        if not configs:
            raise UserError("no config given: pass --config configs/image.yaml")
        self.overrides = list(overrides)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, int(keep))
        self.max_upload_bytes = int(max_upload_bytes)
        self.lock = threading.Lock()
        self.models: dict[str, _Model] = {}
        for path in configs:
            # The base config has no input yet, so the stages' "input is required" step is skipped here;
            # every request re-parses it with its input and settings (full validation then).
            cfg = C.load_config(
                ["--config", str(path), *self.overrides], defaults_path=DEFAULT_CONFIG, rules=config_rules()
            )
            name = str(cfg.guidance)
            if name in self.models:
                raise UserError(f"two configs load the same model {name!r}: {self.models[name].config_path}")
            t0 = time.perf_counter()
            # With the GPU warm-up a run's own load gets: the first request does not pay it.
            denoiser = load_model(cfg, stage_device(cfg.device)) if load else None
            log.info("model %s loaded from %s in %.1f s", name, path, time.perf_counter() - t0)
            self.models[name] = _Model(str(path), cfg, denoiser)
        self.default_model = next(iter(self.models))

    # ---- queries the front ends use ----
    def model_names(self) -> list[str]:
        """Names of the loaded models, the default first."""
        return list(self.models)

    def takes_prompt(self, model: str) -> bool:
        """Whether ``model`` is conditioned on a text prompt (as well as the image, or alone)."""
        return self.is_text(model) or hasattr(self.models[model].denoiser, "set_prompt")

    def is_text(self, model: str) -> bool:
        """Whether ``model`` makes 3D from a prompt alone (text-conditioned: no image, prompt required)."""
        import guidance

        return guidance.registry.get(str(self.models[model].cfg.guidance)).conditioning == "text"

    def defaults(self, model: str | None = None) -> dict[str, Any]:
        """The config's values of the tunable settings."""
        cfg = self.models[model or self.default_model].cfg
        return {
            "seed": int(cfg.seed),
            "elevation": float(cfg.elevation),
            "iters": int(cfg.sir.iters),
            "prompt": str(cfg.get("prompt", "") or ""),
            "video": bool(cfg.get("video", False)),
        }

    def job_folder(self, job_id: str) -> Path:
        """The folder of a job id (UserError for anything that is not a job id of this server)."""
        if not JOB_ID.match(job_id or "") or not (self.workdir / job_id).is_dir():
            raise UserError(f"no such job: {job_id}")
        return self.workdir / job_id

    # ---- one request ----
    def check_upload(self, data: bytes) -> None:
        """Refuse an empty or over-size upload (UserError / UploadTooLarge), before decoding it."""
        if not data:
            raise UserError("the upload is empty: choose an image file (PNG with alpha, or RGB/JPG)")
        if len(data) > self.max_upload_bytes:
            raise UploadTooLarge(
                f"the upload is {len(data) / 2**20:.1f} MiB; the limit is {self.max_upload_bytes / 2**20:.0f} MiB"
            )

    def new_job(self, data: bytes, filename: str | None) -> tuple[str, Path]:
        """Check an upload and store it as ``<workdir>/<uuid>/<name><ext>``; returns (job id, path)."""
        self.check_upload(data)
        job_id = uuid.uuid4().hex
        folder = self.workdir / job_id
        folder.mkdir()
        suffix = Path(filename or "").suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".png"
        path = folder / f"{safe_name(filename)}{suffix}"
        path.write_bytes(data)
        with _removed_on_error(folder):
            _check_image(path)
        return job_id, path

    def new_text_job(self) -> tuple[str, Path]:
        """A fresh job folder for a prompt (no upload); returns (job id, folder)."""
        job_id = uuid.uuid4().hex
        folder = self.workdir / job_id
        folder.mkdir()
        return job_id, folder

    def _text_prompt(self, name: str, data: bytes | None, settings: Settings) -> str:
        """The prompt of a text model's request (UserError when it is missing or an image came too)."""
        if data:
            raise UserError(
                f"model {name} makes 3D from a text prompt and takes no image; send only the prompt"
            )
        prompt = (settings.prompt or "").strip() or str(self.models[name].cfg.get("prompt") or "").strip()
        if not prompt:
            raise UserError(
                f'model {name} makes 3D from text: the prompt is required (e.g. "a wooden chair")'
            )
        return prompt

    def run(
        self,
        data: bytes | None,
        filename: str | None,
        settings: Settings | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> JobResult:
        """Upload bytes (a text model: none, ``settings.prompt`` instead) -> both stages in a fresh
        folder -> :class:`JobResult` (UserError if bad)."""
        settings = settings or Settings()
        name = settings.model or self.default_model
        if name not in self.models:
            raise UserError(f"model {name!r} is not loaded; this server has {', '.join(self.models)}")
        model = self.models[name]
        text_prompt = self._text_prompt(name, data, settings) if self.is_text(name) else None
        if text_prompt is not None:
            job_id, folder = self.new_text_job()
            source = [f"save_path={prompt_slug(text_prompt)}"]
        else:
            job_id, image = self.new_job(data or b"", filename)
            folder = image.parent
            source = [f"input={image}", f"save_path={image.stem}"]
        try:
            with _removed_on_error(folder):
                cfg = C.load_config(
                    [
                        "--config",
                        model.config_path,
                        *self.overrides,
                        *settings.overrides(),
                        *source,
                        f"outdir={folder / 'out'}",
                        # the page's progress comes from the stages' per-iteration log lines
                        *(["quiet=false"] if on_progress is not None else []),
                    ],
                    defaults_path=DEFAULT_CONFIG,
                    rules=config_rules(),
                )
                if text_prompt is not None:
                    from omegaconf import open_dict

                    with open_dict(cfg):  # set as is: a key=value word would unquote or parse the text
                        cfg.prompt = text_prompt
                cfg = finalize_config(cfg)
                with self.lock:
                    started, t0 = time.time(), time.perf_counter()
                    if text_prompt is None and self.takes_prompt(name):
                        prompt = (
                            settings.prompt if settings.prompt is not None else str(cfg.get("prompt", ""))
                        )
                        model.denoiser.set_prompt(prompt)
                    with _progress_reports(on_progress):
                        reports = image_to_3d(cfg, model.denoiser)
                    seconds, finished = time.perf_counter() - t0, time.time()
        finally:
            self._prune()
        log.info("job %s done in %.2f s", job_id, seconds)
        summary = {**_summary(reports, seconds), "started": started, "finished": finished}
        return JobResult(job_id, folder, output_files(reports), reports, seconds, summary)

    # ---- start-up ----
    def on_gpu(self) -> bool:
        """Whether any loaded model runs on a CUDA device."""
        from pipeline.setup import stage_device

        return any(stage_device(m.cfg.device).type == "cuda" for m in self.models.values())

    def warm_up(self) -> float:
        """One throw-away job per model (a drawn ball, or a short prompt); returns the seconds.

        The first job in a process pays one-off costs (CUDA kernels loaded, CUDA graphs captured,
        allocator growth) that would otherwise land on the first user's request. Its folder is removed.
        """
        t0 = time.perf_counter()
        for name in self.models:
            if self.is_text(name):
                result = self.run(None, None, Settings(model=name, prompt="a wooden chair"))
            else:
                result = self.run(warmup_image(), "warmup.png", Settings(model=name))
            shutil.rmtree(result.folder, ignore_errors=True)
        seconds = time.perf_counter() - t0
        log.info("warm-up done in %.1f s", seconds)
        return seconds

    def _prune(self) -> None:
        """Keep the ``keep`` most recent job folders (bounded disk for a long-lived server)."""
        jobs = sorted(
            (p for p in self.workdir.iterdir() if p.is_dir() and JOB_ID.match(p.name)),
            key=lambda p: p.stat().st_mtime,
        )
        for old in jobs[: max(0, len(jobs) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


def warmup_image(size: int = 256) -> bytes:
    """PNG bytes of a shaded orange ball on a transparent background (the warm-up job's input)."""
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    r2 = xx**2 + yy**2
    inside = r2 < 0.5**2
    shade = np.clip(1.0 - 0.8 * (xx + 0.5 * yy + 0.5), 0.3, 1.0)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = (255 * shade).astype(np.uint8)
    rgba[..., 1] = (150 * shade).astype(np.uint8)
    rgba[..., 2] = (40 * shade).astype(np.uint8)
    rgba[..., 3] = np.where(inside, 255, 0)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def _removed_on_error(folder: Path) -> Iterator[None]:
    """Remove a job's ``folder`` when the block fails (nothing half-made stays); a UserError is
    re-raised without the server's folder path in its message."""
    try:
        yield
    except UserError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise _without_folder(e, folder) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _without_folder(e: UserError, folder: Path) -> UserError:
    """The same error with the server's job folder cut from its message (users see file names only)."""
    return type(e)(str(e).replace(f"{folder}{os.sep}", "").replace(str(folder), "<job>"))


def _check_image(path: Path) -> None:
    """Decode the upload once (UserError for non-images) and refuse absurd pixel counts."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        w = h = 0  # read_image below gives the user-facing message
    if w * h > MAX_PIXELS:
        raise UploadTooLarge(
            f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels"
        )
    read_image(path)
