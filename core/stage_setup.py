"""What both stages do before their SIR loop: device, seed, timer, model, reference view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from core.cameras import Cameras, orbit_cameras
from core.run import reference_view, resolve_device, seed_everything
from core.timing import PhaseTimer


@dataclass
class StageSetup:
    """The pieces a stage's SIR loop needs, prepared the same way by both stages."""

    device: torch.device
    rng: np.random.Generator  # camera sampling
    noise: Any  # guidance NoiseSource for every draw of the refine step
    timer: PhaseTimer
    denoiser: Any
    ref_rgb: torch.Tensor  # [3,H,W] in [0,1], on white
    ref_mask: torch.Tensor  # [1,H,W] in [0,1]
    ref_cam: Cameras  # the input view, at ref_size
    nfe0: int  # the denoiser's NFE count before this stage (shared denoisers in batch runs)


def setup_stage(
    cfg: DictConfig, denoiser, load_denoiser: Callable[[DictConfig, torch.device], Any]
) -> StageSetup:
    """Resolve the device, seed, load the input image (first, so a bad image fails before any
    model loads), load the denoiser unless one is given, and condition it on the input view."""
    from guidance.denoiser import TorchNoise

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(cfg.seed)
    timer = PhaseTimer(device)
    ref = reference_view(cfg, None) if cfg.input else None
    with timer.phase("load_model"):
        if denoiser is None:
            denoiser = load_denoiser(cfg, device)
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
