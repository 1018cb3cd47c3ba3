"""Run both stages over many images, with the diffusion model loaded once per worker.

    python batch.py --config configs/image.yaml inputs/ more/cat.png --out logs/ [key=value ...]
    python batch.py --config configs/image.yaml inputs/ --out logs/ --shard 0/4   # machine 0 of 4
    python batch.py --config configs/image.yaml inputs/ --out logs/ --workers 3   # 3 processes here, sharing the GPU(s)
    python batch.py --config configs/image.yaml inputs/ --out logs/ --ray         # local Ray, one actor per GPU
    python batch.py --config configs/image.yaml inputs/ --out logs/ --ray auto    # the cluster of `ray start`
    python batch.py --config configs/text.yaml prompts.txt --out logs/           # text to 3D: one prompt a line

Items: every image file named on the command line, and every image (``core.images.IMAGE_SUFFIXES``:
.png .jpg .jpeg .webp .bmp .tif .tiff) directly inside a named folder. In a folder, ``<name>.<ext>``
is skipped when ``<name>_rgba.png`` (``process.py``'s output) is beside it, and our own outputs
(``*_preview.png``, ``*_albedo.png``) are never inputs. An item's name is its file stem confined to
letters, digits, ``._-`` (:func:`item_name`); it becomes ``save_path``, so the outputs are ``<out>/<name>.glb``,
``<out>/<name>_model.ply``, ... Two files with one name get distinct names (``<name>-<hash>``), as do
names whose outputs would share files (``x`` and ``x_final``: both write ``x_final_report.json``).

Resume: an item whose final set is complete (``<out>/<name>_final_report.json`` and every file it
lists, :func:`core.outputs.set_complete`) is skipped (``--force`` re-runs it); its figures are read
back from its stage reports. A failing item is logged (traceback in ``<out>/<name>_error.log``)
and the batch goes on. After every item the summary is rewritten atomically:
``<out>/batch_summary.json`` and ``.csv`` (per item: status ok | failed | skipped, seconds, NFEs,
output paths, error).

``--shard i/n`` (0 <= i < n) takes items i, i+n, i+2n, ... of the name-sorted list, so machines
sharing a folder split it without talking to each other; a sharded run writes
``batch_summary.shard-i-of-n.json/.csv`` so shards never overwrite each other.

``--workers N`` (N > 1, without ``--ray``) runs the items on N worker processes of this machine
(:func:`run_workers`; forked from a fork server started for the batch, which imported torch and
the stages once, or spawned where there is none): each loads the model once, at its first item, and
takes the next item whenever it finishes one, so a slow item holds back no other. Workers write each item's outputs
straight into ``--out`` through the same item body as the plain path (:func:`run_one`); this process
(the driver) keeps the records, resume skips, progress bar, log and summary. With G visible GPUs
worker i runs on GPU ``i % G`` (its ``CUDA_VISIBLE_DEVICES``, picked inside the user's own list);
more workers than GPUs share them, which pays: one object's CPU work (Gaussian steps, UV unwrap,
file writes) overlaps another's GPU work (on one H200 with MPS, 16 images: 14.5 objects/min with
four workers, 15.3 with eight; README "Folders of images"). ``device=cuda:N`` keeps every worker on GPU N. Each worker gets
``max(1, cpu_count // N)`` torch threads unless ``OMP_NUM_THREADS`` is set (then it keeps that);
each worker keeps its own warm xatlas processes for the UV unwrap (``export.uv_workers``, default
min(4, cpu count); :mod:`mesh_renderer.xatlas_pool`), so with many workers ``export.uv_workers=1``
may suit a machine with few cores. Outputs are
byte-identical to the plain path's at the same seed and thread count. A worker that dies (killed,
out of memory, a crash in native code) fails its item with ``worker process died (exit code X)``
and an error log, and a fresh worker takes the items left; one that dies while loading the model
leaves its item to a fresh worker, once per worker; after that the workers left go on, and when
none is left the batch stops (exit 2), as with a model that cannot load. ``--workers 1`` (the default) runs everything in this process.
With more workers than GPUs, ``--mps auto`` (the default) starts a CUDA MPS control daemon for the
batch (:func:`core.mps.mps_daemon`, in a private temporary folder) and makes the workers its clients,
so their kernels run on a GPU at the same time instead of taking turns (one H200, 16 images: 3
workers 9.5 objects/min without MPS, 11.8 with it); it is stopped after the workers. It needs
``nvidia-cuda-mps-control`` on PATH; with ``CUDA_MPS_PIPE_DIRECTORY`` already set the user's daemon
is used as it is. ``--mps on`` makes a failure to start an error (exit 2), ``--mps off`` never
starts it. A driver killed outright leaves the daemon running: its pipe folder is in the log
(``echo quit | CUDA_MPS_PIPE_DIRECTORY=<it> nvidia-cuda-mps-control`` stops it).

``--ray [ADDRESS]`` runs the items on a pool of Ray actors (:mod:`pipeline.batch_jobs`): one per
GPU (``num_gpus=1``), or CPU actors for a ``device=cpu`` config (``--workers`` sets the count).
Each actor loads the model once, runs an item in a private temporary folder and returns its
complete output sets as bytes; this process (the driver) writes them into ``--out`` as whole sets,
report last, so workers need no shared file system. An item whose actor dies is retried on a fresh
actor (``--max-retries``, default 2), then failed. Without ADDRESS a local Ray instance is started.

Prompt files (text to 3D, a text-conditioned config such as ``configs/text.yaml``): a ``.txt``
input is a UTF-8 file of prompts, one per line (blank and ``#`` lines skipped,
:func:`pipeline.prompts.prompt_items`); each line is an item named by its slug, run with
``prompt=<line>`` and no input, through the same path (plain and ``--ray``), resume and summary
(each record has its ``prompt``). A text config with images, or an image config with a prompt file,
is a usage error before any model loads.

Exit status: 0 all items done, 1 some item failed, 2 a usage/config error (``error: ...``; a model
that cannot load stops the batch so, with or without workers), 130 Ctrl-C or SIGTERM (workers are
stopped and remove their temporary files, the summary lists the items finished so far; on Linux a
driver killed outright, e.g. by ``kill -9``, takes its workers with it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import UserError, exit_code
from core.images import IMAGE_SUFFIXES
from core.mps import MODES as MPS_MODES
from core.mps import MpsSession, mps_daemon

__all__ = [
    "Item",
    "collect_items",
    "name_clashes",
    "collect_prompt_items",
    "check_input_kinds",
    "parse_shard",
    "shard_items",
    "summary_paths",
    "run_one",
    "run_items",
    "run_workers",
    "worker_gpus",
    "worker_threads",
    "item_done",
    "run_ray",
    "write_summary",
    "main",
]

log = logging.getLogger("microdreamer.batch")

OUTPUT_SUFFIXES = ("_preview.png", "_albedo.png", "_clip_views.png")  # our own outputs, never inputs
# Item ``x`` writes ``x_final_report.json``, ``x_mesh.glb``, ``x_gaussians.mp4``: an item named
# ``x_final``, ``x_mesh`` or ``x_gaussians`` would write (and resume from) the same files.
CLASHING_TAILS = ("_final", "_mesh", "_gaussians")
OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*=")
RESERVED_KEYS = ("input", "save_path")  # set per item by the batch
CSV_FIELDS = [
    "name",
    "input",
    "prompt",
    "status",
    "seconds",
    "seconds_stage1",
    "seconds_stage2",
    "nfe",
    "nfe_stage1",
    "nfe_stage2",
    "glb",
    "ply",
    "coarse_mesh",
    "error",
]


@dataclass(frozen=True)
class Item:
    """One input: an image (``name``: its file stem) or a prompt (``input`` None, ``name``: its slug).

    ``name`` is the item's ``save_path``.
    """

    name: str
    input: Path | None
    prompt: str | None = None


def _record(item: Item) -> dict:
    """A pending summary record of ``item`` (``prompt`` only for a prompt item)."""
    rec = {"name": item.name, "input": "" if item.input is None else str(item.input), "status": "pending"}
    if item.prompt is not None:
        rec["prompt"] = item.prompt
    return rec


# ------------------------------------------------------------------------------------------ items
def item_name(stem: str) -> str:
    """A file stem confined to a safe output name: letters, digits, ``. _ -``; no separators, no leading dot."""
    name = re.sub(r"[^\w.\-]", "_", stem).lstrip(".-")
    return name or "item"


def name_clashes(name: str, taken: set[str] | dict[str, Any]) -> bool:
    """Whether an item ``name`` would share an output file with an item of ``taken``.

    The same name, or one that is another's plus ``_final``/``_mesh``/``_gaussians`` (``x`` and
    ``x_final`` both write ``x_final_report.json``).
    """
    if name in taken or any(name + tail in taken for tail in CLASHING_TAILS):
        return True
    return any(name.endswith(tail) and name[: -len(tail)] in taken for tail in CLASHING_TAILS)


def collect_items(inputs: list[str]) -> list[Item]:
    """Expand files and folders into items sorted by name (rules: module docstring).

    Two different files whose names confine to the same stem, or to stems whose outputs would
    share files (:func:`name_clashes`: ``x`` and ``x_final``), get distinct names: the first by
    resolved path keeps the stem, the others get ``<stem>-<8 hex digits of their path's hash>``.
    """
    files: dict[Path, Path] = {}  # resolved -> as given (the same file twice is one item)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            names = {p.name for p in found}
            found = [
                p
                for p in found
                if not p.name.endswith(OUTPUT_SUFFIXES)
                and not (not p.stem.endswith("_rgba") and f"{p.stem}_rgba.png" in names)
            ]
        elif path.is_file():
            found = [path]
        else:
            raise UserError(f"input {raw}: no such file or folder")
        for f in found:
            files.setdefault(f.resolve(), f)
    if not files:
        raise UserError(
            f"no input images found in {' '.join(inputs)} (looked for {' '.join(IMAGE_SUFFIXES)})"
        )
    items: dict[str, Item] = {}
    for resolved in sorted(files):
        name = item_name(resolved.stem)
        if name_clashes(name, items):
            name = f"{name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
        items[name] = Item(name, files[resolved])
    return sorted(items.values(), key=lambda it: it.name)


def is_prompt_file(path: str | Path) -> bool:
    """Whether an input names a prompt file (a ``.txt`` file, any case)."""
    return Path(path).suffix.lower() == ".txt"


def collect_prompt_items(files: list[str]) -> list[Item]:
    """The prompts of one or more prompt files as items, in file then line order.

    Names are the prompts' slugs; a slug already taken (in the same or an earlier file), or one
    whose outputs would share files with a taken one (:func:`name_clashes`), gets ``_2``, ``_3``,
    ..., so no two items share outputs.
    """
    from pipeline.prompts import prompt_items

    items: list[Item] = []
    used: set[str] = set()
    for f in dict.fromkeys(files):  # the same file twice is read once
        for p in prompt_items(f):
            base = p.save_path
            name, k = base, 1
            while name_clashes(name, used):
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            items.append(Item(name, None, p.prompt))
    return items


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_items(items: list[Item], index: int, count: int) -> list[Item]:
    """Items ``index, index+count, ...`` of the name-sorted list (round robin balances folders of mixed sizes).

    The result is sorted by name (prompt items too).
    """
    return sorted(items, key=lambda it: it.name)[index::count]


def summary_paths(out: Path, shard: tuple[int, int]) -> tuple[Path, Path]:
    """``batch_summary.json/.csv``, or ``batch_summary.shard-i-of-n.*`` for a shard."""
    stem = "batch_summary" if shard[1] == 1 else f"batch_summary.shard-{shard[0]}-of-{shard[1]}"
    return out / f"{stem}.json", out / f"{stem}.csv"


# ---------------------------------------------------------------------------------------- summary
def _atomic_write(path: Path, text: str) -> None:
    from core.fileio import atomic_write_text

    atomic_write_text(path, text)


def _total_seconds(value: Any) -> float | None:
    """A report's ``seconds`` (a number or a dict of phases) -> total seconds."""
    if value is None:
        return None
    if isinstance(value, dict):
        return round(float(sum(_total_seconds(v) or 0.0 for v in value.values())), 3)
    return round(float(value), 3)


def _counts(records: list[dict]) -> dict[str, int]:
    counts = {"total": len(records), "ok": 0, "failed": 0, "skipped": 0, "pending": 0}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def _csv_row(r: dict) -> dict:
    s1, s2 = (r.get("outputs") or {}).get("stage1", {}), (r.get("outputs") or {}).get("stage2", {})
    row = {k: r.get(k) for k in CSV_FIELDS}
    row.update(glb=s2.get("glb", r.get("final")), ply=s1.get("ply"), coarse_mesh=s1.get("mesh"))
    return {k: "" if v is None else v for k, v in row.items()}


def write_summary(out: Path, shard: tuple[int, int], records: list[dict], meta: dict) -> tuple[Path, Path]:
    """Write the JSON (meta + counts + items) and the CSV (one row per item), both atomically."""
    json_path, csv_path = summary_paths(out, shard)
    records = sorted(records, key=lambda r: r["name"])
    doc = {**meta, "counts": _counts(records), "items": records}
    _atomic_write(json_path, json.dumps(doc, indent=2, default=str))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(_csv_row(r) for r in records)
    _atomic_write(csv_path, buf.getvalue())
    return json_path, csv_path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fresh_json(path: Path, since: float) -> dict | None:
    """The JSON at ``path`` when it was written at or after ``since`` (epoch seconds), else None."""
    try:
        if path.stat().st_mtime < since:
            return None
    except OSError:
        return None
    return _read_json(path)


# ---------------------------------------------------------------------------------------- running
def load_stages() -> tuple[Callable, Callable]:
    """``(image_to_3d, load_model)``, imported on first use (heavy imports). The model loads with the
    GPU warm-up a one-shot run's load gets (:func:`pipeline.both_stages.load_model`)."""
    from pipeline.both_stages import image_to_3d, load_model

    return image_to_3d, load_model


def item_config(config: str, overrides: list[str], out: Path, item: Item | None):
    """The item's config: the file, the user's overrides, then ``outdir``/``input``/``save_path``.

    Checked by the stages' rules; without an item (the batch-wide check) nothing is finalized.
    """
    from core.config import load_config
    from pipeline.config import DEFAULT_CONFIG, config_rules, finalize_config

    argv = ["--config", config, *overrides, f"outdir={out}"]
    if item is not None:
        argv += [f"save_path={item.name}"]
        if item.input is not None:
            argv += [f"input={item.input}"]
    cfg = load_config(argv, defaults_path=DEFAULT_CONFIG, rules=config_rules())
    if item is not None and item.prompt is not None:
        from omegaconf import open_dict

        with open_dict(cfg):  # set as is: a key=value word would unquote or parse the text
            cfg.prompt = item.prompt
    return finalize_config(cfg) if item is not None else cfg


def is_text_config(cfg: Any) -> bool:
    """Whether the config's model is text-conditioned (its items are prompts, not images)."""
    import guidance

    return guidance.registry.get(cfg.get("guidance")).conditioning == "text"


def check_input_kinds(cfg: Any, config: str, inputs: list[str]) -> None:
    """A UserError when the inputs do not fit the config: prompt files for a text model, images otherwise."""
    name = cfg.get("guidance")
    if is_text_config(cfg):
        wrong = [i for i in inputs if not (is_prompt_file(i) and not Path(i).is_dir())]
        if wrong:
            raise UserError(
                f"{config} makes 3D from text (guidance={name}): pass prompt files (.txt, one prompt "
                f"per line), not {wrong[0]}"
            )
    else:
        wrong = [i for i in inputs if is_prompt_file(i) and not Path(i).is_dir()]
        if wrong:
            raise UserError(
                f"{wrong[0]} is a prompt file, but {config} makes 3D from images (guidance={name}); "
                "use a text config such as configs/text.yaml"
            )


def _stage_figures(rec: dict, r1: dict | None, r2: dict | None) -> None:
    """Copy seconds/NFEs/outputs of the two stage reports into an item record."""
    s1 = _total_seconds((r1 or {}).get("seconds"))
    s2 = _total_seconds((r2 or {}).get("seconds"))
    n1, n2 = (r1 or {}).get("nfe"), (r2 or {}).get("nfe")
    rec.update(
        seconds_stage1=s1,
        seconds_stage2=s2,
        nfe_stage1=n1,
        nfe_stage2=n2,
        nfe=None if n1 is None and n2 is None else (n1 or 0) + (n2 or 0),
        outputs={
            "stage1": dict((r1 or {}).get("outputs") or {}),
            "stage2": dict((r2 or {}).get("outputs") or {}),
        },
    )


def item_done(out: Path, name: str) -> bool:
    """True when the item's final set in ``out`` is complete (its report and every file it lists)."""
    from core.outputs import set_complete

    return set_complete(out / f"{name}_final_report.json")


def _skip(rec: dict, out: Path, name: str) -> None:
    """A finished item: its figures read back from the stage reports its run left."""
    _stage_figures(
        rec, _read_json(out / f"{name}_report.json"), _read_json(out / f"{name}_final_report.json")
    )
    rec.update(status="skipped", seconds=None, error=None)


class _Model:
    """This process's stage functions and denoiser, loaded at the first item that runs and kept.

    ``load``: returns ``(image_to_3d, load_denoiser)``; None: :func:`load_stages` (looked up at load
    time, so tests may replace it). A worker process gets ``load`` pickled by reference.
    """

    def __init__(self, load: Callable[[], tuple[Callable, Callable]] | None = None) -> None:
        self.load = load
        self.stages: tuple[Callable, Callable] | None = None
        self.denoiser: Any = None

    def get(self, cfg: Any) -> tuple[Callable, Any]:
        """``(image_to_3d, denoiser)``, loading either on first use (a UserError when the model cannot load)."""
        if self.stages is None:
            self.stages = (self.load or load_stages)()
        image_to_3d, load_denoiser = self.stages
        if self.denoiser is None:
            from core.device import resolve_device

            self.denoiser = load_denoiser(cfg, resolve_device(cfg.device))
        return image_to_3d, self.denoiser


def _error_text(e: BaseException) -> str:
    """A failed item's one-line error: a UserError's first line, else ``Type: first line``."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, UserError):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def run_one(cfg: Any, rec: dict, model: _Model, quiet: bool = False) -> None:
    """Run both stages on one item in this process and fill its record; the one item body of every path.

    ``cfg``: the item's finished config (:func:`item_config`); ``rec``: its summary record, updated
    with status ok | failed, error, seconds, the stage figures (stage 1's report of this run when
    stage 2 failed) and, on failure, ``error_log`` (the traceback, ``<out>/<name>_error.log``).
    ``quiet``: silence the stages' progress bars. Raises the UserError when the model itself
    cannot load (every item would fail alike), with the record marked failed.
    """
    error_log = Path(cfg.outdir) / f"{cfg.save_path}_error.log"
    if quiet:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.quiet = True
    t0 = time.perf_counter()
    started = time.time()
    r1 = r2 = None
    try:
        image_to_3d, denoiser = model.get(cfg)
        reports = image_to_3d(cfg, denoiser)
        r1, r2 = reports["stage1"], reports["stage2"]
        rec.update(status="ok", error=None)
        error_log.unlink(missing_ok=True)
    except UserError as e:
        if model.denoiser is None:  # the model itself cannot load: no item can run
            rec.update(status="failed", error=str(e))
            raise
        rec.update(status="failed", error=_error_text(e))
        _atomic_write(error_log, traceback.format_exc())
    except Exception as e:
        rec.update(status="failed", error=_error_text(e))
        _atomic_write(error_log, traceback.format_exc())
        _free_gpu_memory()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    if r1 is None:  # a failed item: stage 1 may have finished (its report is this run's)
        r1 = _fresh_json(Path(cfg.outdir) / f"{cfg.save_path}_report.json", started)
    _stage_figures(rec, r1, r2)
    if rec["status"] == "failed":
        rec["error_log"] = str(error_log)


def _free_gpu_memory() -> None:
    """Release cached GPU memory after a failed item (it may leave big tensors, e.g. after an OOM)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _log_result(rec: dict, idx: int, total: int, name: str) -> None:
    """The log line of a finished item (ok or failed) of every path (plain, workers, Ray)."""
    if rec["status"] == "failed":
        # A Ray item that failed before its worker answered has no time.
        after = "" if rec.get("seconds") is None else f" after {rec['seconds']:.1f} s"
        log.error(
            "[%d/%d] %s: FAILED%s: %s (traceback: %s)",
            idx + 1,
            total,
            name,
            after,
            rec["error"],
            rec.get("error_log"),
        )
    else:
        log.info(
            "[%d/%d] %s: ok in %.1f s, %s NFEs -> %s",
            idx + 1,
            total,
            name,
            rec["seconds"],
            rec["nfe"],
            rec["final"],
        )


class _Summary:
    """A running batch's records and summary meta; :meth:`flush` rewrites the summary files."""

    def __init__(self, items: list[Item], out: Path, shard: tuple[int, int], meta: dict | None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.shard = out, shard
        self.meta = dict(meta or {})
        self.meta.setdefault("started", datetime.now(UTC).isoformat(timespec="seconds"))
        self.records = [_record(it) for it in items]
        self.t0 = time.perf_counter()

    def flush(self) -> None:
        """Rewrite ``batch_summary`` (json and csv) with the records as they stand."""
        self.meta["seconds"] = round(time.perf_counter() - self.t0, 3)
        self.meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_summary(self.out, self.shard, self.records, self.meta)


def _queue_items(
    items: list[Item],
    summary: _Summary,
    config: str,
    overrides: list[str],
    force: bool,
    bar: "_ItemProgress",
) -> tuple[deque[int], dict[int, Any]]:
    """Skip the complete items (unless ``force``); -> the indices left to run and their configs."""
    out = summary.out
    todo: deque[int] = deque()
    cfgs: dict[int, Any] = {}
    for idx, (item, rec) in enumerate(zip(items, summary.records)):
        cfg = item_config(config, overrides, out, item)
        rec["final"] = str(out / f"{item.name}.glb")
        if item_done(out, item.name) and not force:
            _skip(rec, out, item.name)
            log.info("[%d/%d] %s: skipped (%s is complete)", idx + 1, len(items), item.name, rec["final"])
            bar.advance(item.name, "skipped")
        else:
            cfgs[idx] = cfg
            todo.append(idx)
    summary.flush()
    return todo, cfgs


def run_items(
    items: list[Item],
    config: str,
    overrides: list[str],
    out: Path,
    shard: tuple[int, int] = (0, 1),
    force: bool = False,
    show_progress: bool = True,
    meta: dict | None = None,
) -> list[dict]:
    """Run both stages on each item in this process (denoiser loaded once, at the first item to run).

    Returns one record per item; the summary is rewritten after every item. A UserError from
    loading the model stops the batch (every item would fail alike) and is re-raised.
    """
    summary = _Summary(items, out, shard, meta)
    records, flush = summary.records, summary.flush
    model = _Model()
    bar = _ItemProgress(len(items), enabled=show_progress)
    with bar:
        for idx, (item, rec) in enumerate(zip(items, records)):
            cfg = item_config(config, overrides, out, item)
            final = Path(cfg.outdir) / f"{cfg.save_path}.glb"
            rec["final"] = str(final)
            if item_done(out, item.name) and not force:
                _skip(rec, out, item.name)
                log.info("[%d/%d] %s: skipped (%s is complete)", idx + 1, len(items), item.name, final)
                bar.advance(item.name, "skipped")
                flush()
                continue
            try:
                # The batch bar is the one live display; nested stage bars would clash with it.
                run_one(cfg, rec, model, quiet=bar.enabled)
            except UserError:
                flush()
                raise
            _log_result(rec, idx, len(items), item.name)
            bar.advance(item.name, rec["status"])
            flush()
    if not items:
        flush()
    return records


class _ItemProgress:
    """A rich progress bar over items (silent when disabled or when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self) -> "_ItemProgress":
        if self.enabled:
            from rich.logging import RichHandler
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[last]}"),
                TimeElapsedColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("batch", total=self.total, last="")
            # Log lines go above the bar instead of tearing it.
            self._handler = RichHandler(console=self._progress.console, show_path=False, show_time=False)
            logging.getLogger().addHandler(self._handler)
            self._saved = [h for h in logging.getLogger().handlers if h is not self._handler]
            for h in self._saved:
                logging.getLogger().removeHandler(h)
        return self

    def advance(self, name: str, status: str, completed: int | None = None) -> None:
        """One more item finished (or set ``completed`` directly)."""
        if self._progress is not None:
            if completed is None:
                self._progress.advance(self._task)
            else:
                self._progress.update(self._task, completed=completed)
            self._progress.update(self._task, last=f"{name}: {status}" if name else "")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            root = logging.getLogger()
            root.removeHandler(self._handler)
            for h in self._saved:
                root.addHandler(h)
            self._progress.__exit__(*exc)


# --------------------------------------------------------------------------- worker processes
def cpu_count() -> int:
    """The CPU cores this process may use (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_threads(workers: int, cpus: int, environ: dict[str, str] | os._Environ) -> int | None:
    """Torch threads per worker: ``max(1, cpus // workers)``; None when the user set OMP_NUM_THREADS."""
    return None if environ.get("OMP_NUM_THREADS") else max(1, cpus // workers)


def worker_gpus(workers: int, gpus: int, visible: str | None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each worker: worker i gets visible GPU ``i % gpus`` (None: unchanged).

    ``gpus``: CUDA devices this process sees (0: leave every worker's environment as it is);
    ``visible``: the user's ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) the workers' GPUs are
    picked from, or None for all of the machine's (``0 .. gpus-1``).
    """
    if gpus <= 0:
        return [None] * workers
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible is not None else []
    ids = ids[:gpus] if visible is not None else [str(g) for g in range(gpus)]
    if not ids:
        return [None] * workers
    return [ids[i % len(ids)] for i in range(workers)]


def _visible_gpus(device: str) -> int:
    """How many GPUs the workers spread over: those torch sees for ``cuda``/``auto``, else 0.

    ``cuda:N`` pins every worker to that GPU (their environment is left alone), ``cpu`` uses none.
    """
    if device not in ("cuda", "auto"):
        return 0
    return _cuda_gpus()


def _cuda_gpus() -> int:
    """CUDA GPUs this process sees: NVML's count (no torch, no CUDA context: ~2-3 s less before the
    workers start); 0 without a CUDA driver; else torch's (a driver whose NVML cannot answer)."""
    from core.gpu_count import cuda_driver_present, cuda_gpus

    count = cuda_gpus()
    if count is not None:
        return count
    if not cuda_driver_present():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_gpus(device: str, visible: int) -> int:
    """GPUs the workers share, for MPS: the visible ones for cuda/auto, one for ``cuda:N``, none on CPU."""
    if device.startswith("cuda:"):
        return 1 if _cuda_gpus() > 0 else 0
    return visible


def _log_mps(mps: MpsSession, workers: int, gpus: list[str | None], device: str, shared: bool) -> None:
    """One log line on MPS: used (with the daemon's pipe folder, to stop it by hand if need be) or why
    not (at debug level when no GPU is shared: CPU, or a GPU per worker)."""
    on = ", ".join(dict.fromkeys(g for g in gpus if g is not None)) or device
    if mps.started:
        log.info(
            "MPS: %d workers share GPU %s through an MPS control daemon (pipe folder %s)",
            workers,
            on,
            mps.pipe_dir,
        )
    elif mps.used:
        log.info("MPS: %d workers share GPU %s through your MPS daemon (%s)", workers, on, mps.pipe_dir)
    else:
        (log.info if shared else log.debug)("MPS: not used (%s)", mps.reason)


@contextlib.contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables (None: leave as is) for the block: a spawned child inherits them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Modules every worker imports (through the default stage loader), imported once by the fork server.
STAGE_MODULES = ("torch", "pipeline.both_stages")


def _preload_modules(config: str, overrides: list[str], load: Callable | None) -> list[str]:
    """What the fork server imports before forking workers: the stages and the config's model
    module for the default loader (only the fork server's own imports for a custom ``load``)."""
    if load is not None:
        return []
    mods = list(STAGE_MODULES)
    try:
        from guidance.registry import LazyLoad, get

        spec_load = get(str(item_config(config, overrides, Path("."), None).guidance)).load
    except Exception:  # the items' configs report it
        return mods
    if isinstance(spec_load, LazyLoad):
        mods.append(spec_load.module)
    return mods


def _worker_context(preload: list[str], workers: int) -> Any:
    """The multiprocessing context of the workers: a fork server (POSIX) started now, importing
    ``preload`` once, so each worker is forked ready instead of importing torch itself; else spawn.

    The server never touches CUDA (its imports do not), so each forked worker starts CUDA afresh in
    its own environment (:func:`_apply_environ`). Its torch reads ``OMP_NUM_THREADS`` as it loads:
    it is started with the workers' thread count (:func:`worker_threads`) unless the user set one.
    It imports from this process's ``sys.path`` (:func:`_import_path`) and ignores Ctrl-C, as do the
    workers it forks until :func:`_worker_main` says so itself: Ctrl-C as it imports would end it
    with a KeyboardInterrupt traceback, and this process's next fork with ``EOFError``.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return _spawn_context()  # a fresh interpreter: no inherited CUDA state
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *preload])  # only read when the server starts
    threads = worker_threads(max(1, workers), cpu_count(), os.environ)
    with _environ({"OMP_NUM_THREADS": None if threads is None else str(threads)}):
        _ensure_fork_server()  # returns at once; the server imports in the background
    return ctx


def _ensure_fork_server() -> None:
    """Start the fork server unless it runs (again, after it was killed), importing from this
    process's ``sys.path`` (:func:`_import_path`) and ignoring Ctrl-C (:func:`_worker_context`)."""
    from multiprocessing import forkserver

    with _environ(_import_path()), _sigint_ignored():  # a started process keeps an ignored signal ignored
        forkserver.ensure_running()


def _spawn_context() -> Any:
    """The multiprocessing context that starts fresh interpreters."""
    import multiprocessing as mp

    return mp.get_context("spawn")


@contextlib.contextmanager
def _fork_server(preload: list[str], workers: int) -> Iterator[Any]:
    """:func:`_worker_context` for the block; a fork server started for it is ended after it, its
    workers gone: so a later batch in this process (a notebook, a long-lived host, the tests) gets a
    fresh one, importing the code and environment of then, and no idle server holding torch stays."""
    before = _fork_server_pid()
    ctx = _worker_context(preload, workers)
    try:
        yield ctx
    finally:
        pid = _fork_server_pid()
        if pid is not None and pid != before:  # one started (or restarted) here: not the user's own
            _stop_fork_server(pid)


def _fork_server_pid() -> int | None:
    """The pid of this process's multiprocessing fork server (a private singleton), or None."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def _stop_fork_server(pid: int) -> None:
    """End the fork server ``pid`` now, even mid-import (it reads its stop signal only after), and
    reap it; multiprocessing starts another when next asked."""
    import signal
    from multiprocessing import forkserver

    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(Exception):  # private API: at worst the server idles on as before
        forkserver._forkserver._stop()  # closes our end of its pipe, waits for it, removes its socket


def _import_path() -> dict[str, str]:
    """The environment that gives a ``python -c`` process this one's ``sys.path``.

    Python 3.11's fork server ignores the ``sys.path`` it is handed (CPython gh-117378): it would
    import the preloaded modules from its working folder (``''`` first) and the default path, e.g.
    another installed copy of the project when ``python /repo/batch.py`` runs elsewhere, and its
    workers would run those. ``PYTHONSAFEPATH`` drops that ``''``; one here is the working folder.
    """
    entries = [os.path.abspath(p or os.curdir) for p in sys.path]
    return {"PYTHONPATH": os.pathsep.join(p for p in entries if os.path.exists(p)), "PYTHONSAFEPATH": "1"}


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in the block (main thread only, where Python sets signals), for a process started
    in it; a Ctrl-C in those milliseconds is lost."""
    import signal
    import threading

    saved = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or saved is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


def _worker_main(
    conn: Any,
    wid: int,
    load: Callable[[], tuple[Callable, Callable]] | None,
    driver: int | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """A worker process: run the items the driver sends over ``conn`` until it sends None.

    Each message is ``(idx, cfg)``; the answer is ``("done", idx, record fields)``, or ``("fatal",
    idx, fields)`` when the model cannot load (then the worker ends). The model loads at the first
    item, followed by ``("loaded", idx, None)``: a worker that dies before it died loading the model.
    ``environ``: the environment to run with (the driver's at spawn time plus this worker's GPU, MPS
    and thread settings), applied before anything touches CUDA (:func:`_apply_environ`).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the workers
    if environ is not None:
        _apply_environ(environ)
    # The driver stops a busy worker with SIGTERM: unwind, so that finally blocks remove
    # half-written temporary files and stop the UV unwrap's xatlas processes.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _end_with_driver(driver)
    logging.basicConfig(level=logging.WARNING, format=f"[%(levelname)s] worker {wid}: %(message)s")
    try:
        _serve(conn, _Model(load))
    finally:
        # Leaving: a SIGTERM now (the driver's death signal racing the worker's own exit) would
        # raise inside the interpreter's exit handlers and print their traceback.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _serve(conn: Any, model: "_Model") -> None:
    """The worker's loop: run each ``(idx, cfg)`` the driver sends and answer, until None or EOF."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if msg is None:
            return
        idx, cfg = msg
        rec: dict = {}
        if model.denoiser is None:
            try:
                model.get(cfg)
            except UserError as e:  # the model cannot load (as run_one would report it)
                with contextlib.suppress(OSError):
                    conn.send(("fatal", idx, {"status": "failed", "error": str(e)}))
                return
            except Exception:  # run_one meets it again and fails the item with its traceback
                pass
            else:
                try:
                    conn.send(("loaded", idx, None))
                except OSError:  # the driver is gone
                    return
        try:
            run_one(cfg, rec, model, quiet=True)  # N stage bars at once would tear the terminal
        except UserError:
            with contextlib.suppress(OSError):
                conn.send(("fatal", idx, rec))
            return
        try:
            conn.send(("done", idx, rec))
        except OSError:  # the driver is gone (killed): nobody is left to take the answer
            return


def _apply_environ(environ: dict[str, str]) -> None:
    """Make ``environ`` this process's environment. A forked worker (:func:`_worker_context`) starts
    with its fork server's environment, so the driver's (the user's, plus the worker's GPU, MPS pipe
    and thread count) is set here, before the first CUDA call reads it."""
    os.environ.clear()
    os.environ.update(environ)
    threads = environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        # torch, imported by the fork server, read its thread count then
        sys.modules["torch"].set_num_threads(int(threads))


def _end_with_driver(driver: int | None) -> None:
    """End this worker (SIGTERM to itself, so ``finally`` blocks clean up) when the driver dies.

    A forked worker's parent is the fork server, which outlives a killed driver while any worker
    lives, so the kernel's parent-death signal cannot serve; a daemon thread waits on the driver's
    pidfd (Linux) or polls it. So a driver killed outright (``kill -9``, the OOM killer) leaves no
    worker computing on for nobody.
    """
    import signal
    import threading

    if driver is None:
        return
    if not _alive(driver):  # gone already
        raise SystemExit(128 + signal.SIGTERM)

    def watch() -> None:
        try:
            fd = os.pidfd_open(driver)
        except (AttributeError, OSError):  # not Linux >= 5.3, or it is gone: poll
            while _alive(driver):
                time.sleep(0.5)
        else:
            import select

            select.select([fd], [], [])  # readable once the driver has exited
        # To the main thread itself: a signal sent to the process may be taken by this thread, and
        # then the main thread's blocking call (a sleep, a pipe read) is not interrupted, so its
        # handler waits for that call to return (seen once in ~20 test runs: a worker outlived its driver).
        signal.pthread_kill(main, signal.SIGTERM)

    main = threading.main_thread().ident
    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True


def _exit_on_signal(signum: int, frame: Any) -> None:
    """A signal handler that ends the process as an exception would, unwinding its ``finally`` blocks."""
    raise SystemExit(128 + signum)


@dataclass
class _Worker:
    """The driver's handle on one worker process and the item it runs."""

    proc: Any
    conn: Any
    gpu: str | None
    idx: int | None = None
    t0: float = 0.0
    started: float = 0.0
    loaded: bool = False  # its model loaded: a death now is its item's, not the model's


def _death_message(code: int | None) -> str:
    """``worker process died (exit code X)``; a signal's name is added for a negative code."""
    import signal

    if code is not None and code < 0:
        try:
            return f"worker process died (exit code {code}, {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"worker process died (exit code {code})"


def run_workers(
    items: list[Item],
    config: str,
    overrides: list[str],
    out: Path,
    shard: tuple[int, int] = (0, 1),
    force: bool = False,
    show_progress: bool = True,
    meta: dict | None = None,
    workers: int = 2,
    load: Callable[[], tuple[Callable, Callable]] | None = None,
    mps_mode: str = "auto",
) -> list[dict]:
    """Run the items on ``workers`` processes of this machine; this process stays the driver.

    Each worker (forked by :func:`_worker_context`, its model loaded at its first item) runs one item at a time through
    :func:`run_one`, writing the outputs straight into ``out``; the driver hands the next item to
    whichever worker finishes first and keeps the records, skips, progress, log and summary as
    :func:`run_items` does. A worker that dies fails its item (``worker process died (exit code
    X)``) and is replaced while items remain; one that dies loading the model gives its item back
    and is replaced ``workers`` times at most, then the pool shrinks; with none left, a UserError. A UserError from loading the
    model stops the batch and is re-raised; on Ctrl-C the workers are stopped and the summary written. ``load``: the
    workers' stage loader (a module-level callable, default :func:`load_stages`). ``mps_mode``: auto | on |
    off, CUDA MPS for workers sharing a GPU (:func:`core.mps.mps_daemon`), stopped after the workers.
    """
    from multiprocessing.connection import wait

    summary = _Summary(items, out, shard, meta)
    records, flush, meta = summary.records, summary.flush, summary.meta
    bar = _ItemProgress(len(items), enabled=show_progress)
    preload = _preload_modules(config, overrides, load)
    with contextlib.ExitStack() as stack:
        # First: the fork server imports torch and the stages while this process queues the items and
        # starts MPS (on one H200, 4 workers each importing them at once took 3-5 s). Not when nothing
        # is left to run: it would import for nothing, holding this process's output pipes after it ends.
        # Counted up to `workers` only: _queue_items checks every item again just below.
        left = sum(
            1 for _ in itertools.islice((it for it in items if force or not item_done(out, it.name)), workers)
        )
        ctx = stack.enter_context(_fork_server(preload, left)) if left else None
        stack.enter_context(bar)
        todo, cfgs = _queue_items(items, summary, config, overrides, force, bar)
        if not todo:
            return records
        n = min(workers, len(todo))
        if ctx is None:  # an item's outputs went missing since they were counted
            ctx = stack.enter_context(_fork_server(preload, n))
        device = str(cfgs[todo[0]].device)
        visible = _visible_gpus(device)
        # Left after the workers have stopped (the try/finally below), before the bar closes.
        shared_gpus = _mps_gpus(device, visible)
        mps = stack.enter_context(mps_daemon(mps_mode, n, shared_gpus))
        meta["mps"] = mps.meta()
        # Our daemon's server numbers the user's CUDA_VISIBLE_DEVICES 0, 1, ...: workers index that list.
        gpus = worker_gpus(n, visible, None if mps.started else os.environ.get("CUDA_VISIBLE_DEVICES"))
        threads = worker_threads(n, cpu_count(), os.environ)
        meta["workers"] = {"count": n, "gpus": gpus, "threads": threads}
        _log_mps(mps, n, gpus, device, n > shared_gpus > 0)
        log.info(
            "%d items on %d worker processes (GPU of each: %s; %s threads each)",
            len(todo),
            n,
            ", ".join(g or "unchanged" for g in gpus),
            threads or "OMP_NUM_THREADS",
        )
        live: list[_Worker] = []
        retired: list[_Worker] = []
        spawned = 0
        load_deaths = 0  # workers that died loading the model (their items never ran)

        def dispatch(w: _Worker) -> None:
            w.idx = todo.popleft()
            w.t0, w.started = time.perf_counter(), time.time()
            try:
                w.conn.send((w.idx, cfgs[w.idx]))
            except OSError:  # it died after its last answer: the item never reached it
                todo.appendleft(w.idx)
                w.idx = None

        def start(there: Any, environ: dict[str, str]) -> Any:
            """Worker number ``spawned``, started: spawned from now on if the fork server has ended (a
            preloaded module raised as it imported, its traceback above: the workers meet it again)."""
            nonlocal ctx
            while True:
                proc = ctx.Process(
                    target=_worker_main,
                    args=(there, spawned, load, os.getpid(), environ),
                    daemon=True,
                    name=f"batch-worker-{spawned}",
                )
                try:
                    if ctx.get_start_method() == "forkserver":
                        _ensure_fork_server()  # not the plain restart of multiprocessing, if it was killed
                    proc.start()
                    return proc
                except (EOFError, OSError):
                    if ctx.get_start_method() != "forkserver":
                        raise
                    log.warning("the workers' fork server ended: workers are spawned instead")
                    ctx = _spawn_context()

        def spawn(gpu: str | None) -> None:
            nonlocal spawned
            here, there = ctx.Pipe()
            env = {
                "CUDA_VISIBLE_DEVICES": gpu,
                "OMP_NUM_THREADS": None if threads is None else str(threads),
                **mps.env,
            }
            with _environ(env):  # a spawned child inherits these; a forked one gets them passed
                proc = start(there, dict(os.environ))
            there.close()
            spawned += 1
            w = _Worker(proc, here, gpu)
            live.append(w)
            dispatch(w)

        mps_hint = mps.started  # said once: a CUDA failure under our daemon may be MPS's

        def finished(w: _Worker) -> None:
            nonlocal mps_hint
            idx = w.idx
            w.idx = None
            _log_result(records[idx], idx, len(items), items[idx].name)
            rec = records[idx]
            if mps_hint and rec["status"] == "failed" and "cuda" in str(rec.get("error", "")).lower():
                mps_hint = False
                log.warning(
                    "the workers run as clients of an MPS daemon: if CUDA cannot start under MPS on "
                    "this machine, run again with --mps off"
                )
            bar.advance(items[idx].name, records[idx]["status"])
            flush()

        try:
            for gpu in gpus:
                spawn(gpu)
            while live:
                ready = set(wait([w.conn for w in live] + [w.proc.sentinel for w in live]))
                for w in list(live):
                    msg = None
                    if w.conn in ready:
                        try:
                            msg = w.conn.recv()
                        except (EOFError, OSError):
                            msg = None
                    if msg is not None:
                        kind, idx, fields = msg
                        if kind == "loaded":
                            w.loaded = True
                            continue
                        records[idx].update(fields)
                        if kind == "fatal":  # the model cannot load: every item would fail alike
                            flush()
                            raise UserError(records[idx]["error"])
                        finished(w)
                        if todo:
                            dispatch(w)
                        # else it waits (idle): a worker dying as it loads the model gives its item back
                    elif w.conn in ready or w.proc.sentinel in ready:
                        w.proc.join(timeout=10)
                        live.remove(w)
                        retired.append(w)
                        message = _death_message(w.proc.exitcode)
                        if _end_orphan(w.proc):
                            message = "worker process ended: the workers' fork server died (killed?)"
                        if w.idx is not None and not w.loaded:  # its item never ran: back to the queue
                            load_deaths += 1
                            todo.appendleft(w.idx)
                            log.warning("%s while loading the model", message)
                            for v in live:  # an idle worker takes it at once
                                if todo and v.idx is None:
                                    dispatch(v)
                            if todo and load_deaths > n and not live:  # the model itself cannot load
                                flush()
                                raise UserError(
                                    f"worker processes died while loading the model {load_deaths} times "
                                    f"(last: {message}); see the log lines above"
                                )
                            if load_deaths > n:  # a fresh worker per worker spent: the ones left go on
                                continue
                        elif w.idx is not None:
                            _worker_died(records[w.idx], items[w.idx], out, w, message)
                            finished(w)
                        if todo:
                            spawn(w.gpu)
                if not todo and all(v.idx is None for v in live):  # all done: stop the idle workers
                    for v in live:
                        with contextlib.suppress(OSError):  # it may have died since its answer
                            v.conn.send(None)
                    retired.extend(live)
                    live.clear()
        except KeyboardInterrupt:
            _stop_workers(live + retired, grace=0.0)
            flush()  # items in flight stay pending
            raise
        finally:  # normally every worker was told to stop; after an error the busy ones are ended
            _stop_workers(live + retired, grace=0.0 if live else 10.0)
    return records


def _worker_died(rec: dict, item: Item, out: Path, w: _Worker, message: str) -> None:
    """Fail the item of a worker that died: the message, an error log, and stage 1's figures if it finished."""
    error_log = _error_log(out, item)
    rec.update(
        status="failed", error=message, error_log=str(error_log), seconds=round(time.perf_counter() - w.t0, 3)
    )
    _stage_figures(rec, _fresh_json(out / f"{item.name}_report.json", w.started), None)
    _atomic_write(
        error_log,
        f"{message}\nThe worker process running {item.name} ended without reporting a result (killed, out of "
        "memory, or a crash in native code); the batch went on with a fresh worker.\n",
    )


def _stop_workers(workers: list[_Worker], grace: float) -> None:
    """Wait up to ``grace`` s for the workers to end, then end the rest (SIGTERM, SIGKILL after 5 s)."""
    deadline = time.monotonic() + grace
    for w in workers:
        w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.proc.is_alive():
            w.proc.terminate()
    for w in workers:
        w.proc.join(timeout=5)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=5)
        _end_orphan(w.proc)
        w.conn.close()


def _end_orphan(proc: Any) -> bool:
    """End a forked worker that reads as ended only because its fork server died (killed: exit code
    255 stands for the status that went with it) while it runs on; -> whether it ran on.

    Left alone it would write its item's outputs into ``--out`` after the item was failed, beside the
    fresh workers. SIGTERM (it removes its temporary files), SIGKILL after 5 s; not our child: no wait.
    """
    import signal

    if proc.exitcode != 255 or proc.pid is None or not _running(proc.pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        deadline = time.monotonic() + 5.0
        while _running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _running(proc.pid):
            break
    return True


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie: ended, not yet reaped)."""
    if not os.path.exists("/proc/self/stat"):  # no procfs (macOS)
        return _alive(pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -------------------------------------------------------------------------------------------- Ray
LOCAL = "local"  # --ray without an address: start a local Ray instance


def _is_ray_address(text: str) -> bool:
    """``auto``, ``local``, ``host:port`` or ``ray://host:port`` (anything else after --ray is an input)."""
    return text in ("auto", LOCAL) or (":" in text and not Path(text).exists())


def _ray_pool_plan(ray: Any, device: str, workers: int | None, todo: int) -> tuple[int, dict]:
    """How many actors, with which resources: one per GPU, or CPU actors for a CPU config."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    device = str(device)
    if device.startswith("cuda") and gpus == 0:
        raise UserError(
            f"--ray: device={device} but the Ray cluster has no GPU (pass device=cpu for CPU workers)"
        )
    if gpus and device != "cpu":
        return max(1, min(workers or gpus, todo)), {"num_gpus": 1}
    n = max(1, min(workers or max(1, cpus // 4), todo))
    return n, {"num_cpus": max(1, cpus // n)}  # torch in each actor uses its share of the cores


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A UserError when ``host:port`` (or ``ray://host:port``) does not accept a connection.

    Ray itself keeps retrying an unreachable head for minutes; a typo should fail at once.
    """
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--ray {address}: no Ray head answers there ({e.strerror or e})") from e


def _ray_init(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` (or start a local one); True when this call started Ray."""
    if ray.is_initialized():  # a caller (a notebook, the tests) set Ray up already
        return False
    _check_reachable(address)
    try:
        ray.init(address=None if address == LOCAL else address, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--ray {address}: cannot start or join Ray: {first}") from e
    return True


def _item_failed(rec: dict, error: str, error_log: Path, text: str) -> None:
    rec.update(status="failed", error=error, error_log=str(error_log))
    _atomic_write(error_log, text)


def run_ray(
    items: list[Item],
    config: str,
    overrides: list[str],
    out: Path,
    shard: tuple[int, int] = (0, 1),
    force: bool = False,
    show_progress: bool = True,
    meta: dict | None = None,
    address: str = LOCAL,
    workers: int | None = None,
    max_retries: int = 2,
    worker_cls: type | None = None,
) -> list[dict]:
    """Run the items on a pool of Ray actors; the driver writes each finished set into ``out``.

    An item whose actor dies is retried on a fresh actor up to ``max_retries`` times, then failed.
    ``worker_cls``: the actor body (default ``pipeline.batch_jobs.BatchWorker``). A UserError from
    loading the model stops the batch and is re-raised.
    """
    import ray

    from pipeline.batch_jobs import BatchWorker, write_sets

    summary = _Summary(items, out, shard, meta)
    records, flush, meta = summary.records, summary.flush, summary.meta
    bar = _ItemProgress(len(items), enabled=show_progress)
    with bar:
        todo, cfgs = _queue_items(items, summary, config, overrides, force, bar)
        if not todo:
            return records
        device = str(cfgs[todo[0]].device)
        if address == LOCAL and not ray.is_initialized() and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # say so before a local Ray starts (seconds) for nothing
                raise UserError(f"--ray: device={device} but this machine has no CUDA GPU (pass device=cpu)")
        started_here = _ray_init(ray, address)
        actors: list[Any] = []
        try:
            n, resources = _ray_pool_plan(ray, device, workers, len(todo))
            meta["ray"] = {"address": address, "workers": n, "resources": resources}
            remote_cls = ray.remote(worker_cls or BatchWorker).options(**resources)

            def new_actor() -> Any:
                actors.append(remote_cls.remote())
                return actors[-1]

            idle = [new_actor() for _ in range(n)]
            inflight: dict[Any, tuple[Any, int]] = {}
            attempts = dict.fromkeys(todo, 0)
            log.info("ray: %d items on %d workers (%s)", len(todo), n, resources)
            while todo or inflight:
                while todo and idle:
                    idx = todo.popleft()
                    item, actor = items[idx], idle.pop()
                    attempts[idx] += 1
                    image, input_name = None, None  # a prompt item has no input file
                    if item.input is not None:
                        try:
                            image, input_name = item.input.read_bytes(), item.input.name
                        except OSError as e:
                            _item_failed(
                                records[idx], f"cannot read input: {e}", _error_log(out, item), str(e)
                            )
                            idle.append(actor)
                            continue
                    ref = actor.run.remote(cfgs[idx], image, input_name, os.getcwd())
                    inflight[ref] = (actor, idx)
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                actor, idx = inflight.pop(ready[0])
                item, rec = items[idx], records[idx]
                rec["attempts"] = attempts[idx]
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:  # the worker process died (killed, GPU error)
                    ray.kill(actor)
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    if attempts[idx] <= max_retries:
                        log.warning("%s: worker died (%s); retrying on another worker", item.name, reason)
                        todo.appendleft(idx)
                        idle.append(new_actor())
                        continue
                    _item_failed(
                        rec,
                        f"worker died {attempts[idx]} times: {reason}",
                        _error_log(out, item),
                        traceback.format_exc(),
                    )
                    if todo:
                        idle.append(new_actor())
                except (
                    ray.exceptions.RayError
                ) as e:  # the call itself failed (e.g. a result that cannot unpickle)
                    _item_failed(
                        rec, f"{type(e).__name__}: {e}", _error_log(out, item), traceback.format_exc()
                    )
                    idle.append(actor)
                else:
                    idle.append(actor)
                    if result.fatal:  # the model cannot load: every item would fail alike
                        rec.update(status="failed", error=result.error)
                        flush()
                        raise UserError(result.error)
                    _finish(rec, out, item, result, write_sets)
                _log_result(rec, idx, len(items), item.name)
                bar.advance(item.name, rec["status"])
                flush()
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()
    return records


def _error_log(out: Path, item: Item) -> Path:
    return out / f"{item.name}_error.log"


def _finish(rec: dict, out: Path, item: Item, result: Any, write_sets: Callable) -> None:
    """Write a worker's sets into ``out`` and fill the item's record from them."""
    written = write_sets(out, item.name, result.sets, None if item.input is None else str(item.input))
    rec.update(status=result.status, error=result.error, seconds=result.seconds)
    _stage_figures(rec, written.get("stage1"), written.get("stage2"))
    if result.status == "failed":
        rec["error_log"] = str(_error_log(out, item))
        _atomic_write(_error_log(out, item), result.traceback or result.error or "")
    else:
        _error_log(out, item).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (``key=value`` words among the inputs are config overrides)."""
    p = argparse.ArgumentParser(
        prog="batch.py",
        description="Both stages over many images (or prompts), models loaded once.",
        epilog="Config overrides (key=value) may be mixed with the inputs, e.g. sir.iters=10.",
    )
    p.add_argument("--config", required=True, help="stage config, e.g. configs/image.yaml")
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files and/or folders of images; for a text config, prompt files (.txt, one prompt a line)",
    )
    p.add_argument("--out", default=None, help="output folder (default: the config's outdir)")
    p.add_argument("--shard", default=None, help="i/n: run only items i, i+n, ... (0 <= i < n)")
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help="run on Ray actors, one per GPU (CPU actors for a CPU config); ADDRESS: auto (the "
        "cluster of `ray start`), host:port or ray://host:port; none: a local Ray instance",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="without --ray: N worker processes on this machine, each with its own model, spread over "
        "the visible GPUs (worker i on GPU i %% G; 2-4 per GPU overlap one object's CPU work with "
        "another's GPU work) with cpu_count/N torch threads each unless OMP_NUM_THREADS is set "
        "(default 1: everything in this process); with --ray: actors (default: one per GPU)",
    )
    p.add_argument(
        "--mps",
        choices=MPS_MODES,
        default="auto",
        help="with --workers N and more workers than GPUs: run them as clients of a CUDA MPS daemon "
        "started for the batch, so their kernels run on the GPU at the same time (auto: when "
        "nvidia-cuda-mps-control is on PATH and CUDA_MPS_PIPE_DIRECTORY is unset, else without; "
        "on: a failure to start is an error; off: never). Default auto",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="with --ray: re-runs of an item whose worker died, before it is failed (default 2)",
    )
    p.add_argument("--force", action="store_true", help="re-run items whose final .glb exists")
    p.add_argument(
        "--dry-run", action="store_true", help="list the items and whether they would run, then stop"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return p


def split_args(words: list[str]) -> tuple[list[str], list[str]]:
    """Split positional words into inputs and ``key=value`` overrides (an existing path is an input)."""
    inputs, overrides = [], []
    for w in words:
        (overrides if OVERRIDE_RE.match(w) and not Path(w).exists() else inputs).append(w)
    return inputs, overrides


def main(argv: list[str] | None = None) -> int:
    """Run the batch; exit 0 (all done), 1 (some item failed), 2 (usage/config error), 130 (Ctrl-C)."""
    # Intermixed: inputs and key=value overrides may come before or after the options.
    args = build_parser().parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    with _sigterm_as_interrupt():
        return exit_code(
            lambda: _run(args), interrupted="interrupted (the summary lists the items finished so far)"
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's cancel) raises KeyboardInterrupt in the block, as Ctrl-C does.

    So the batch stops its workers (or Ray actors), writes the summary and removes its temporary
    files instead of dying at once and leaving worker processes running. Main thread only.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    saved = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


def _run(args: argparse.Namespace) -> int:
    """The batch behind :func:`main`; raises UserError on a usage/config error."""
    if args.ray is not None and not _is_ray_address(args.ray):
        # `--ray in/`: the word after a bare --ray is an input, not an address
        args.inputs, args.ray = [args.ray, *args.inputs], LOCAL
    inputs, overrides = split_args(args.inputs)
    if not inputs:
        raise UserError("no inputs: pass image files and/or folders (or prompt files for a text config)")
    for o in overrides:
        if o.split("=", 1)[0] in RESERVED_KEYS:
            raise UserError(
                f"{o}: batch.py sets '{o.split('=', 1)[0]}' per item; pass images/folders instead"
            )
    shard = parse_shard(args.shard)
    base = item_config(args.config, overrides, Path("."), None)  # validates the config and overrides once
    check_input_kinds(base, args.config, inputs)
    text = is_text_config(base)
    if text:
        for o in overrides:
            if o.split("=", 1)[0] == "prompt":
                raise UserError(f"{o}: batch.py sets 'prompt' per item from the prompt files")
    out = Path(args.out) if args.out else Path(base.outdir)
    if (args.workers is not None and args.workers < 1) or args.max_retries < 0:
        raise UserError("--workers must be >= 1 and --max-retries >= 0")
    items = shard_items(collect_prompt_items(inputs) if text else collect_items(inputs), *shard)
    if args.dry_run:
        for it in items:
            done = item_done(out, it.name) and not args.force
            print(f"{it.name}\t{it.input if it.prompt is None else it.prompt}\t{'done' if done else 'todo'}")
        return 0
    meta = {
        "config": args.config,
        "overrides": overrides,
        "inputs": inputs,
        "out": str(out),
        "shard": f"{shard[0]}/{shard[1]}",
        "ray": args.ray,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    if args.ray is not None:
        records = run_ray(
            items,
            args.config,
            overrides,
            out,
            shard,
            args.force,
            not args.no_progress,
            meta,
            address=args.ray,
            workers=args.workers,
            max_retries=args.max_retries,
        )
    elif args.workers is not None and args.workers > 1:
        records = run_workers(
            items,
            args.config,
            overrides,
            out,
            shard,
            args.force,
            not args.no_progress,
            meta,
            args.workers,
            mps_mode=args.mps,
        )
    else:
        records = run_items(items, args.config, overrides, out, shard, args.force, not args.no_progress, meta)
    counts = _counts(records)
    json_path, csv_path = summary_paths(out, shard)
    print(
        f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed of {counts['total']}; "
        f"summary: {json_path}, {csv_path}"
    )
    for r in records:
        if r["status"] == "failed":
            print(f"  failed: {r['name']}: {r.get('error')}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
