"""Plumbing both stage scripts share: device, seeding, reference view, progress, report."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from core.fileio import atomic_write_text  # re-exported: bench/ imports it from here

log = logging.getLogger("microdreamer")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "image.yaml"


def setup_logging(quiet: bool) -> None:
    """One logger for the project; quiet shows warnings only."""
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(message)s", force=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without CUDA is a UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            "device=cuda was asked for but no CUDA GPU is available (use device=cpu or device=auto)"
        )
    device = torch.device(name)
    if device.type == "cuda":
        # Fixed shapes throughout: let cuDNN pick the fastest convolution algorithms (as the authors).
        torch.backends.cudnn.benchmark = True
    return device


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; returns the numpy generator the camera sampler uses."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the legacy global state
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def output_path(cfg: DictConfig, suffix: str) -> Path:
    """``<outdir>/<save_path><suffix>``."""
    return Path(cfg.outdir) / f"{cfg.save_path}{suffix}"


def reference_view(cfg: DictConfig, denoiser) -> tuple[torch.Tensor, torch.Tensor]:
    """The input photo as (rgb ``[3,H,W]`` on white, mask ``[1,H,W]``) in [0,1] at ``ref_size``.

    With the oracle teacher and no ``input``, the oracle's own render of the reference view is
    the photo.
    """
    if cfg.input:
        from core.images import load_image

        return load_image(cfg.input, cfg.ref_size, border_ratio=cfg.border_ratio, recenter=cfg.recenter)
    if cfg.guidance == "oracle":
        return denoiser.reference_image(cfg.elevation, cfg.ref_size, azimuth=cfg.cameras.ref_azimuth)
    raise UserError("input is not set: pass input=path/to/image.png")


def versions() -> dict[str, str]:
    """Versions of the packages that matter for reproducing a run."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "gsplat", "nvdiffrast", "xatlas", "trimesh"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            pass
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda or "?"
        out["gpu"] = torch.cuda.get_device_name()
    return out


def git_commit() -> str:
    """The commit of the code that ran, or '' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
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


@contextmanager
def progress(total: int, description: str, quiet: bool) -> Iterator[Callable[[int, int, torch.Tensor], None]]:
    """A rich progress bar over SIR iterations; yields the loop's ``on_iteration`` callback."""
    if quiet or (not sys.stderr.isatty() and os.environ.get("MD_PROGRESS") != "1"):
        # Non-interactive: one log line per iteration keeps logs readable.
        def on_iter(i: int, n: int, loss: torch.Tensor) -> None:
            if not quiet:
                log.info("%s %d/%d loss %.4g", description, i + 1, n, float(loss))

        yield on_iter
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, loss="-")

        def on_iter(i: int, n: int, loss: torch.Tensor) -> None:
            bar.update(task, completed=i + 1, loss=f"{float(loss):.4g}")

        yield on_iter


def config_rules() -> dict:
    """Value checks applied to every stage config (keys absent from a config are skipped)."""
    from core.config import choices, existing_file, in_range, non_negative, positive

    return {
        "input": existing_file(),
        "device": check_device(),
        "guidance": choices("zero123", "imagedream", "oracle"),
        "mesh_format": choices("glb", "obj"),
        "ref_size": positive(),
        "border_ratio": in_range(0.0, 0.9),
        "cameras.radius": positive(),
        "cameras.fovy": in_range(1.0, 179.0),
        "model.dtype": choices("fp16", "bf16", "fp32"),
        "model.ref_latent": choices("sample", "mode"),
        "render.gs_backend": choices("auto", "gsplat", "torch"),
        "render.mesh_backend": choices("auto", "nvdiffrast", "torch"),
        "gaussians.num_pts": positive(),
        "sir.views": positive(),
        "sir.render_size": positive(),
        "sir.iters": non_negative(),
        "sir.init_steps": non_negative(),
        "sir.denoise_steps": positive(),
        "sir.t_start": in_range(0.0, 1.0),
        "sir.t_end": in_range(0.0, 1.0),
        "sir.inv_ratio": in_range(0.0, 1.0),
        "sir.eta": non_negative(),
        "sir.steps_schedule": choices("fixed", "linear", "cosine_up", "cosine_down", "cosine_up_then_down"),
        "export.grid_resolution": positive(),
        "export.texture_size": positive(),
        "refine.iters": non_negative(),
        "refine.views": positive(),
        "refine.grid_steps": positive(),
        "refine.strength": in_range(0.0, 1.0),
    }


def check_device():
    """``device`` is auto, cpu, cuda or cuda:N."""
    from core.config import check

    return check(
        lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"), "be auto, cpu, cuda or cuda:N"
    )


def finalize_config(cfg: DictConfig) -> DictConfig:
    """Fill what depends on other keys: the oracle demo names its outputs after the mesh."""
    if not cfg.get("save_path") and cfg.get("guidance") == "oracle" and not cfg.get("input"):
        cfg.save_path = Path(cfg.oracle.mesh).stem
    if not cfg.get("input") and cfg.get("guidance") != "oracle":
        raise UserError("input is not set: pass input=path/to/image.png")
    return cfg


def cli(run: Callable[[DictConfig], dict], argv: list[str] | None = None) -> int:
    """Entry-point wrapper: parse the config, run, turn UserErrors into one line and exit code 2."""
    from core.config import load_config

    try:
        cfg = finalize_config(load_config(argv, defaults_path=DEFAULT_CONFIG, rules=config_rules()))
        setup_logging(bool(cfg.get("quiet", False)))
        run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
