"""One batch item away from the output folder: run it in a private folder, carry its sets back as bytes.

A batch worker (a Ray actor, possibly on another machine) runs :func:`run_item` into a temporary
folder and returns an :class:`ItemResult`: the complete output sets (each set's files as bytes and
its report as a dict). The driver then writes each set into the batch's ``--out`` with
:func:`write_sets` as a whole set (:class:`core.outputs.OutputSet`, report last), so no worker needs
the driver's file system and nothing half-written ever appears in ``--out``.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.outputs import OutputSet, set_complete

__all__ = ["STAGE_SETS", "BatchWorker", "ItemResult", "SetBytes", "pack_sets", "run_item", "write_sets"]

# The sets of one item, in the order they are written: (set key, report suffix, sets it replaces).
# Stage 1's commit retires the final set built on an older coarse mesh, as in the stages themselves.
STAGE_SETS = (("stage1", "_report.json", ("_final_report.json",)), ("stage2", "_final_report.json", ()))


@dataclass
class SetBytes:
    """One complete output set: its files (``<name><suffix>`` -> bytes) and its report (outputs by file name)."""

    files: dict[str, bytes]
    report: dict[str, Any]


@dataclass
class ItemResult:
    """What a worker sends back for one item: status, error, seconds, and the complete sets it made."""

    name: str
    status: str  # ok | failed
    seconds: float
    error: str | None = None
    traceback: str | None = None
    fatal: bool = False  # the model itself could not load: every item would fail alike
    sets: dict[str, SetBytes] = field(default_factory=dict)


def pack_sets(outdir: Path, name: str) -> dict[str, SetBytes]:
    """The complete sets of ``name`` in ``outdir`` as bytes; report ``outputs`` become bare file names."""
    sets: dict[str, SetBytes] = {}
    for key, suffix, _ in STAGE_SETS:
        report_path = outdir / f"{name}{suffix}"
        if not set_complete(report_path):
            continue
        report = json.loads(report_path.read_text())
        files: dict[str, bytes] = {}
        outputs: dict[str, Any] = {}
        for k, v in report["outputs"].items():
            if not isinstance(v, str):
                outputs[k] = v
                continue
            fname = Path(v).name
            outputs[k] = fname
            if Path(v) != report_path:  # the report is rewritten by the driver, never copied
                files[fname] = Path(v).read_bytes()
        report["outputs"] = outputs
        sets[key] = SetBytes(files, report)
    return sets


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, UserError):
        return text.splitlines()[0] if text else type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def run_item(cfg: Any, image: bytes | None, input_name: str | None, worker: BatchWorker) -> ItemResult:
    """Run both stages on one item in a temporary folder; returns its complete sets as bytes.

    ``cfg``: the item's finished config (``save_path`` is the item name); ``image``: the input
    file's bytes, written as ``input_name`` in the temporary folder, so the input need not exist here
    (None for a prompt item of a text config: ``cfg.prompt`` is its input).
    """
    from omegaconf import open_dict

    name = str(cfg.save_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="microdreamer-item-") as tmp:
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.outdir, cfg.quiet = str(outdir), True
            if image is not None:
                src = Path(tmp) / Path(input_name or "input.png").name
                src.write_bytes(image)
                cfg.input = str(src)
        result = ItemResult(name=name, status="ok", seconds=0.0)
        try:
            worker.stages(cfg)
        except Exception as e:  # a failed item is a record, not a dead worker
            result.status, result.error = "failed", _first_line(e)
            result.traceback = traceback.format_exc()
            result.fatal = isinstance(e, UserError) and worker.denoiser is None and worker.tried_load
        result.sets = pack_sets(outdir, name)
        result.seconds = round(time.perf_counter() - t0, 3)
        return result


class BatchWorker:
    """A batch worker (the body of a Ray actor): loads the model at its first item and keeps it."""

    def __init__(self) -> None:
        self.denoiser: Any = None
        self.tried_load = False

    def stages(self, cfg: Any) -> dict[str, dict]:
        """Both stages on ``cfg`` with this worker's model (loaded here on first use)."""
        from core.device import resolve_device
        from pipeline.both_stages import image_to_3d, load_model

        if self.denoiser is None:
            self.tried_load = True
            # As batch.load_stages: with the GPU warm-up, and a model that cannot load is a UserError.
            self.denoiser = load_model(cfg, resolve_device(cfg.device))
        return image_to_3d(cfg, self.denoiser)

    def run(
        self, cfg: Any, image: bytes | None, input_name: str | None, cwd: str | None = None
    ) -> ItemResult:
        """One item (see :func:`run_item`); relative paths in ``cfg`` resolve from ``cwd`` if it exists here."""
        import os

        if cwd and Path(cwd).is_dir():  # e.g. a model path relative to the checkout, as on the driver
            os.chdir(cwd)
        result = run_item(cfg, image, input_name, self)
        import torch

        if result.status == "failed" and torch.cuda.is_available():
            torch.cuda.empty_cache()  # a failed item may leave big tensors (e.g. after OOM)
        return result

    def pid(self) -> int:
        """This worker's process id (to tell workers apart, and for tests)."""
        import os

        return os.getpid()


def _write_report(path: Path, report: dict[str, Any], outdir: Path, input_path: str | None) -> None:
    from core.fileio import atomic_write_text

    report = dict(report)
    if isinstance(report.get("config"), dict):  # the worker's temporary paths mean nothing here
        report["config"] = {**report["config"], "outdir": str(outdir)}
        if input_path is not None:
            report["config"]["input"] = input_path
    report["outputs"] = {
        k: str(outdir / v) if isinstance(v, str) else v for k, v in report["outputs"].items()
    }
    report["outputs"]["report"] = str(path)
    atomic_write_text(path, json.dumps(report, indent=2, default=str))


def write_sets(
    outdir: Path, name: str, sets: dict[str, SetBytes], input_path: str | None = None
) -> dict[str, dict]:
    """Write an item's sets into ``outdir``, each whole (staged, moved in, report last).

    Returns the reports as written (``outputs`` as paths in ``outdir``), by set key.
    """
    written: dict[str, dict] = {}
    for key, suffix, replaces in STAGE_SETS:
        got = sets.get(key)
        if got is None:
            continue
        for fname in got.files:
            if Path(fname).name != fname or not fname.startswith(name):
                raise ValueError(f"{fname!r} is not a file name of item {name!r}")  # never outside outdir
        with OutputSet(outdir, name, suffix, replaces=replaces) as out:
            for fname, data in got.files.items():
                out.path(fname[len(name) :]).write_bytes(data)
            report_path = out.commit(lambda p, rep=got.report: _write_report(p, rep, outdir, input_path))
        written[key] = json.loads(report_path.read_text())
    return written
