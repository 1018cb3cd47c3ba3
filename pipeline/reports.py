"""Where a stage's files go and what its report JSON holds (config, versions, commit, figures)."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from core.fileio import atomic_write_text

__all__ = [
    "STAGE1_REPORT",
    "STAGE2_REPORT",
    "git_commit",
    "output_path",
    "peak_memory_gb",
    "versions",
    "write_report",
    "write_stage_report",
]

log = logging.getLogger("microdreamer")


STAGE1_REPORT = "_report.json"  # the stage-1 set's report (written last: the set's completion mark)
STAGE2_REPORT = "_final_report.json"  # the final set's report


def output_path(cfg: DictConfig, suffix: str) -> Path:
    """``<outdir>/<save_path><suffix>``."""
    return Path(cfg.outdir) / f"{cfg.save_path}{suffix}"


#: Report key -> installed distribution(s) whose version a run report records.
VERSIONED = {
    "safetensors": ("safetensors",),
    "gsplat": ("gsplat",),
    "nvdiffrast": ("diffrp-nvdiffrast", "nvdiffrast"),
    "xatlas": ("xatlas",),
    "trimesh": ("trimesh",),
}


def versions() -> dict[str, str]:
    """Versions of the packages that matter for reproducing a run.

    Read from the installed packages' metadata, never by importing them: a report is written by
    every run, and importing a package only for its version cost seconds of each cold start.
    """
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for key, dists in VERSIONED.items():
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda or "?"
        out["gpu"] = torch.cuda.get_device_name()
    return out


def git_commit(root: Path | None = None) -> str:
    """The commit of the code that ran (``-dirty`` appended when files differ from it), or '' outside a
    git checkout; ``root``: the checkout (default: this repository)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            cwd=root or Path(__file__).resolve().parent.parent,
            timeout=5,
        ).stdout.strip()
    except Exception:
        return ""


def write_report(path: Path, cfg: DictConfig, report: dict[str, Any]) -> None:
    """The run report JSON: resolved config, versions, commit and the stage's figures."""
    full = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions(),
        "commit": git_commit(),
        **report,
    }
    atomic_write_text(path, json.dumps(full, indent=2, default=str))


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak allocated GPU memory in GB since the last reset, None on CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)


def write_stage_report(cfg: DictConfig, path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's ``report`` to ``<outdir>/<save_path><suffix>``, log its total; returns it.

    The report's own path is added to ``report["outputs"]`` first, so the JSON lists itself.
    """
    report["outputs"]["report"] = str(path)
    report["finished_unix"] = time.time()
    write_report(path, cfg, report)
    total = sum(report["seconds"].values())
    log.info("stage %s done in %.1f s: %s", report["stage"], total, report["outputs"])
    return report
