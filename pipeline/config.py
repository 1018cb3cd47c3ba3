"""The stages' config: defaults file, value rules, and what is filled in from other keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

import guidance
from core import config as C
from core.errors import UserError
from pipeline.prompts import prompt_slug

__all__ = ["DEFAULT_CONFIG", "config_rules", "finalize_config", "load_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "image.yaml"


def config_rules() -> dict:
    """Value checks applied to every stage config (keys absent from a config are skipped)."""
    return {
        "input": C.existing_file(),
        "device": C.check(
            lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
            "be auto, cpu, cuda or cuda:N",
        ),
        "guidance": C.check(
            lambda v: v in guidance.names(), "be a registered model: " + ", ".join(guidance.names())
        ),
        "mesh_format": C.choices("glb", "obj"),
        "ref_size": C.positive(),
        "border_ratio": C.in_range(0.0, 0.9),
        "cameras.radius": C.positive(),
        "cameras.fovy": C.in_range(1.0, 179.0),
        "model.dtype": C.choices("fp16", "bf16", "fp32"),
        "model.ref_latent": C.choices("sample", "mode"),
        "render.gs_backend": C.choices("auto", "gsplat", "torch"),
        "render.mesh_backend": C.choices("auto", "nvdiffrast", "torch"),
        "gaussians.num_pts": C.positive(),
        "sir.views": C.positive(),
        "sir.render_size": C.positive(),
        "sir.iters": C.non_negative(),
        "sir.init_steps": C.non_negative(),
        "sir.denoise_steps": C.positive(),
        "sir.t_start": C.in_range(0.0, 1.0),
        "sir.t_end": C.in_range(0.0, 1.0),
        "sir.inv_ratio": C.in_range(0.0, 1.0),
        "sir.eta": C.non_negative(),
        "sir.steps_schedule": C.choices("fixed", "linear", "cosine_up", "cosine_down", "cosine_up_then_down"),
        "export.grid_resolution": C.positive(),
        "export.texture_size": C.positive(),
        "refine.iters": C.non_negative(),
        "refine.views": C.positive(),
        "refine.grid_steps": C.positive(),
        "refine.strength": C.in_range(0.0, 1.0),
    }


def finalize_config(cfg: DictConfig) -> DictConfig:
    """Fill what depends on other keys; a missing ``input`` fails here, before any model loads.

    A model that renders its own reference view (``needs_input=False``) may run without ``input``;
    its outputs are then named after the mesh of its config section, or after the model. A
    text-conditioned model needs ``prompt`` and no ``input``; its outputs are named after the prompt.
    """
    spec = guidance.registry.get(cfg.get("guidance"))
    if spec.conditioning == "text":
        return _finalize_text(cfg, spec.name)
    if not cfg.get("input"):
        if spec.needs_input:
            raise UserError("input is not set: pass input=path/to/image.png")
        if not cfg.get("save_path"):
            mesh = (cfg.get(spec.section) or {}).get("mesh")
            cfg.save_path = Path(mesh).stem if mesh else spec.name
    return cfg


def _finalize_text(cfg: DictConfig, name: str) -> DictConfig:
    """Text to 3D: ``prompt`` required, ``input`` refused, ``save_path`` defaults to the prompt's slug."""
    if not str(cfg.get("prompt") or "").strip():
        raise UserError(f'prompt is not set: guidance={name} makes 3D from text; pass prompt="a ..."')
    if cfg.get("input"):
        raise UserError(f"guidance={name} makes 3D from a prompt and takes no input image; drop input=")
    if not cfg.get("save_path"):
        cfg.save_path = prompt_slug(str(cfg.prompt))
    return cfg


def load_config(argv: Sequence[str] | None = None) -> DictConfig:
    """``[--config FILE] [key=value ...]`` -> the checked, finalized stage config (UserError if bad)."""
    return finalize_config(C.load_config(argv, defaults_path=DEFAULT_CONFIG, rules=config_rules()))
