"""Both stages in one process: image -> Gaussians -> coarse mesh -> refined texture -> ``.glb``."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

import guidance
from core.errors import UserError
from pipeline.setup import load_model_warm
from pipeline.stage1 import renderer_preloads, stage1_with_model
from pipeline.stage2 import run_stage2, warm_stage2_networks

__all__ = ["image_to_3d", "load_model"]

log = logging.getLogger("microdreamer")


def image_to_3d(cfg: DictConfig, denoiser: Any = None) -> dict[str, dict]:
    """Run stage 1 then stage 2 with ONE model (loaded once, in stage 1, unless given).

    Returns ``{"stage1": report, "stage2": report}``. Stage 2 reads the coarse mesh stage 1 wrote,
    so stage 1's outputs are complete on disk before stage 2 starts, and a stage-2 failure leaves
    them intact. The model load is timed in the stage-1 report's ``load_model`` phase.
    """
    # With CUDA graphs, stage 2's new shapes are warmed up and captured while xatlas runs.
    r1, denoiser = stage1_with_model(cfg, denoiser, during_unwrap=_warm_stage2(cfg))
    if not r1["outputs"].get("mesh"):
        raise UserError(
            f"stage 1 found no surface above export.density_thresh={cfg.export.density_thresh}, so "
            "there is no coarse mesh for stage 2 (lower export.density_thresh or check the input)"
        )
    r2 = run_stage2(cfg, denoiser)
    log.info("image -> %s done", r2["outputs"]["glb"])
    return {"stage1": r1, "stage2": r2}


def load_model(cfg: DictConfig, device: torch.device) -> Any:
    """The denoiser for many :func:`image_to_3d` runs of ``cfg``'s model (a batch worker keeps one),
    loaded while the GPU libraries and both stages' renderer kernels warm up, as a run's own load does."""
    return load_model_warm(cfg, device, guidance.load_denoiser, renderer_preloads(cfg, export=True))


def _warm_stage2(cfg: DictConfig):
    """``during_unwrap`` of the one-command run: stage 2's network shapes, for a model on CUDA graphs."""

    def warm(denoiser: Any) -> None:
        if not getattr(denoiser, "cuda_graphs", False):
            return
        try:
            warm_stage2_networks(cfg, denoiser)
        except Exception as exc:
            # Only a head start: stage 1's outputs must not depend on it (it runs before stage 1's
            # mesh is saved); a real problem at stage 2's shapes shows again in stage 2 itself.
            log.warning("stage-2 warm-up failed (%s: %s); stage 2 starts cold", type(exc).__name__, exc)

    return warm
