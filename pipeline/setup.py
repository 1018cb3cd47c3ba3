"""What both stages do before their SIR loop: device, seed, timer, model, reference view."""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import guidance
from core.cameras import Cameras, orbit_cameras
from core.device import resolve_device, seed_everything
from core.errors import UserError
from core.gpu_warmup import start_library_warmup
from core.timing import PhaseTimer
from guidance.components import DTYPES
from guidance.denoiser import TorchNoise
from pipeline.preflight import preflight


@dataclass
class StageSetup:
    """The pieces a stage's SIR loop needs, prepared the same way by both stages."""

    device: torch.device
    rng: np.random.Generator  # camera sampling
    noise: Any  # guidance NoiseSource for every draw of the refine step
    timer: PhaseTimer
    denoiser: Any
    ref_rgb: torch.Tensor | None  # [3,H,W] in [0,1], on white; None for text-conditioned models
    ref_mask: torch.Tensor | None  # [1,H,W] in [0,1]; None for text-conditioned models
    ref_cam: Cameras | None  # the input view, at ref_size; None for text-conditioned models
    nfe0: int  # the denoiser's NFE count before this stage (shared denoisers in batch runs)


def reference_view(cfg: DictConfig, denoiser: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The input photo as (rgb ``[3,H,W]`` on white, mask ``[1,H,W]``) in [0,1] at ``ref_size``.

    Without ``input``, a denoiser that can render its own reference view (it has
    ``reference_image``, as the oracle does) supplies the photo.
    """
    if cfg.input:
        from core.images import load_image

        return load_image(cfg.input, cfg.ref_size, border_ratio=cfg.border_ratio, recenter=cfg.recenter)
    if denoiser is not None and hasattr(denoiser, "reference_image"):
        return denoiser.reference_image(cfg.elevation, cfg.ref_size, azimuth=cfg.cameras.ref_azimuth)
    raise UserError("input is not set: pass input=path/to/image.png")


def stage_device(name: str, cudnn_benchmark: bool = True) -> torch.device:
    """The stage's device; on CUDA, cuDNN autotuning as asked and the peak-memory counter reset."""
    device = resolve_device(name)
    if device.type == "cuda":
        # Fixed shapes throughout, so autotuning pays over a run; its cost lands in the first calls.
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.cuda.reset_peak_memory_stats(device)
    return device


# What a model folder with the wrong architecture, broken or refused weights raises from the loaders.
_LOAD_ERRORS = (ValueError, RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError)


def _load_model(
    cfg: DictConfig, device: torch.device, load_denoiser: Callable[[DictConfig, torch.device], Any]
) -> Any:
    """``load_denoiser(cfg, device)``; a folder that does not load becomes one UserError line."""
    try:
        return load_denoiser(cfg, device)
    except _LOAD_ERRORS as e:
        model = cfg.get("model") or {}
        where = model.get("path") or model.get("id") or "its default"
        key = "model.path" if model.get("path") else "model.id"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"cannot load the {cfg.get('guidance')} model from {where} ({key}): "
            f"{type(e).__name__}: {first} (wrong architecture or broken weights?)"
        ) from None


def setup_stage(
    cfg: DictConfig,
    denoiser: Any,
    load_denoiser: Callable[[DictConfig, torch.device], Any],
    preload: Sequence[Callable[[torch.device], object]] = (),
) -> StageSetup:
    """Resolve the device, check outdir/disk/memory (:func:`pipeline.preflight.preflight`), seed,
    load the input image (so a bad image fails before any model loads), load the denoiser unless
    one is given, and condition it on the input view (a text-conditioned model: on the prompt,
    encoded once per prompt; no reference view).

    ``preload``: ``fn(device)`` calls (the renderers' kernel loads) that a CUDA run makes on the GPU
    warm-up thread while the weights load, instead of in its first render."""
    device = stage_device(cfg.device, bool(cfg.model.get("cudnn_benchmark", False)))
    with _warming(cfg, device, preload, denoiser is None):
        return _setup(cfg, denoiser, load_denoiser, device)


def load_model_warm(
    cfg: DictConfig,
    device: torch.device,
    load_denoiser: Callable[[DictConfig, torch.device], Any],
    preload: Sequence[Callable[[torch.device], object]] = (),
) -> Any:
    """The denoiser of ``cfg`` on ``device``, for a process that keeps one model for many runs (a
    batch worker): loaded with the warm-up a stage's own load gets (GPU libraries and ``preload``
    kernel loads on a side thread while the weights load), so its first run does not pay them
    (H200, 4 batch workers: ~1.5 s of the first item's ``prepare``, ~1.2 s of its ``render``).
    A model that does not load is one UserError line."""
    with _warming(cfg, device, preload, True):
        return _load_model(cfg, device, load_denoiser)


@contextlib.contextmanager
def _warming(
    cfg: DictConfig, device: torch.device, preload: Sequence[Callable[[torch.device], object]], on: bool
) -> Iterator[None]:
    """The block (a model load) runs while the GPU libraries and ``preload`` warm up on a side thread
    (when ``on``, on CUDA). Joined at the end, so no helper thread makes CUDA calls once the SIR
    loop captures CUDA graphs; also on an error, so none is left while the error is reported."""
    dtype = DTYPES.get(str(cfg.model.get("dtype", "fp16")), torch.float16)
    steps = [lambda fn=fn: fn(device) for fn in preload]
    warmup = start_library_warmup(device, dtype, steps) if on else None
    try:
        yield
    finally:
        _join(warmup)


def _setup(
    cfg: DictConfig,
    denoiser: Any,
    load_denoiser: Callable[[DictConfig, torch.device], Any],
    device: torch.device,
) -> StageSetup:
    """:func:`setup_stage` after the device is resolved and the GPU library warm-up started."""
    preflight(cfg, device)
    rng = seed_everything(cfg.seed)
    timer = PhaseTimer(device)
    if guidance.registry.get(cfg.guidance).conditioning == "text":
        with timer.phase("load_model"):
            if denoiser is None:
                denoiser = load_denoiser(cfg, device)
        with timer.phase("prepare"):
            if hasattr(denoiser, "set_prompt"):  # stand-ins such as the oracle ignore the prompt
                denoiser.set_prompt(str(cfg.prompt))
        noise = TorchNoise(torch.Generator(device=device).manual_seed(cfg.seed))
        return StageSetup(device, rng, noise, timer, denoiser, None, None, None, denoiser.nfe)
    ref = reference_view(cfg) if cfg.input else None
    with timer.phase("load_model"):
        if denoiser is None:
            denoiser = _load_model(cfg, device, load_denoiser)
    with timer.phase("prepare"):
        ref_rgb, ref_mask = ref if ref is not None else reference_view(cfg, denoiser)
        ref_rgb, ref_mask = ref_rgb.to(device), ref_mask.to(device)
        denoiser.set_reference(ref_rgb, cfg.elevation)
        ref_cam = orbit_cameras(
            cfg.elevation,
            cfg.cameras.ref_azimuth,
            cfg.cameras.radius,
            cfg.cameras.fovy,
            cfg.ref_size,
            device=device,
        )
    noise = TorchNoise(torch.Generator(device=device).manual_seed(cfg.seed))
    return StageSetup(device, rng, noise, timer, denoiser, ref_rgb, ref_mask, ref_cam, denoiser.nfe)


def _join(thread: threading.Thread | None) -> None:
    """Wait for the GPU library warm-up (normally long finished by the end of ``prepare``); a stuck
    driver call there must not hang the run, so give up after two minutes (CUDA graphs are captured
    in thread_local mode, so a late warm-up call cannot invalidate them)."""
    if thread is not None:
        thread.join(timeout=120)
