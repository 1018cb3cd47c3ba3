"""The stages' config: defaults file, value rules, and what is filled in from other keys.

Every numeric key of ``configs/*.yaml`` has a range here (``tests/test_config_rules.py`` keeps it
so): a value outside it fails at load, before any model or image loads, in one line naming the key.
The upper bounds are far above any sensible run (so they refuse typos like ``render_size=100000``,
not big GPUs); what would not fit in memory is refused by :mod:`pipeline.preflight`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

import guidance
from core import config as C
from core.errors import UserError
from core.names import safe_stem, stem_problem
from pipeline.prompts import prompt_slug

__all__ = ["DEFAULT_CONFIG", "config_rules", "finalize_config", "load_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "image.yaml"

MAX_SIZE = 8192  # render/reference/bake resolutions (pixels)
MAX_TEXTURE = 16384  # texture side (pixels): 16k^2 RGB float is 3 GB before Adam's states
MAX_GRID = 1024  # density grid per axis: 1024^3 floats are 4 GB
MAX_VIEWS = 64  # views per iteration (azimuths 360 // views apart)
MAX_STEPS = 100_000  # iterations / optimiser steps of any loop
MIN_FACES = 100  # a coarse mesh below this is a blob, not the object
MAX_WEIGHT = 1e6  # loss weights, learning rates, guidance scales


def _lr() -> C.Rule:
    return C.in_range(0.0, MAX_WEIGHT)


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
        "seed": C.in_range(0, 2**32 - 1),  # numpy's seed range
        # sample_orbit_views clamps view elevations to +-80 degrees; the input view must lie inside.
        "elevation": C.in_range(-80.0, 80.0),
        "ref_size": C.in_range(8, MAX_SIZE),
        "border_ratio": C.in_range(0.0, 0.9),
        "cameras.radius": C.in_range(0.1, 1000.0),
        "cameras.fovy": C.in_range(1.0, 179.0),
        "cameras.min_ver": [C.in_range(-90, 90), C.at_most("cameras.max_ver")],
        "cameras.max_ver": C.in_range(-90, 90),
        "cameras.ref_azimuth": C.in_range(-360.0, 360.0),
        "model.dtype": C.choices("fp16", "bf16", "fp32"),
        "model.ref_latent": C.choices("sample", "mode"),
        "model.fused_norm": C.choices(True, False),
        "render.gs_backend": C.choices("auto", "gsplat", "torch"),
        "render.mesh_backend": C.choices("auto", "nvdiffrast", "torch"),
        "gaussians.num_pts": C.in_range(1, 100_000_000),
        "gaussians.init_radius": C.in_range(1e-4, 100.0),
        "gaussians.init": C.choices("silhouette", "ball"),
        "gaussians.init_silhouette_radius": C.in_range(1e-4, 100.0),
        "gaussians.sh_degree": C.in_range(0, 3),  # what the .ply layout and the renderers support
        "gaussians.position_lr_init": _lr(),
        "gaussians.position_lr_final": _lr(),
        "gaussians.position_lr_max_steps": C.in_range(1, MAX_STEPS),
        "gaussians.spatial_lr_scale": C.in_range(0.0, MAX_WEIGHT),
        "gaussians.feature_lr": _lr(),
        "gaussians.opacity_lr": _lr(),
        "gaussians.scaling_lr": _lr(),
        "gaussians.rotation_lr": _lr(),
        "gaussians.percent_dense": C.in_range(0.0, 1.0),
        "gaussians.density_start_iter": C.in_range(0, MAX_STEPS),
        "gaussians.density_end_iter": [C.in_range(0, MAX_STEPS), C.at_least("gaussians.density_start_iter")],
        "gaussians.densification_interval": C.in_range(1, MAX_STEPS),
        "gaussians.densify_grad_threshold": C.in_range(0.0, MAX_WEIGHT),
        "gaussians.min_opacity": C.in_range(0.0, 0.999),
        "gaussians.extent": C.in_range(1e-4, 1000.0),
        "gaussians.densify_stats": C.choices("all", "last"),
        "gaussians.max_scale": C.in_range(0.0, 10.0),
        "gaussians.max_screen_frac": C.in_range(0.0, 10.0),
        "sir.bg_alpha_loss": C.in_range(0.0, MAX_WEIGHT),
        "sir.fg_alpha_loss": C.in_range(0.0, MAX_WEIGHT),
        "sir.bg_threshold": C.in_range(0.0, 1.0),
        "export.iso_levels": C.check(
            lambda v: all(0 < x <= 100 for x in v), "be a list of levels in (0, 100]"
        ),
        "export.iso_target": C.choices("input", "gaussians"),
        "export.iso_size": C.in_range(8, MAX_SIZE),
        "export.merge_ratio": C.in_range(0.0, 0.1),
        "export.visible_views": C.in_range(0, 1024),
        "export.hull": C.check(
            lambda v: all(x in ("input", "gaussians", "refined") for x in v),
            "be a list of input, gaussians, refined",
        ),
        "export.hull_t_max": C.in_range(0.0, 1.0),
        "export.hull_alpha": C.in_range(0.01, 0.99),
        "export.hull_ramp": C.in_range(0.0, 16.0),
        "export.visible_size": C.in_range(16, MAX_SIZE),
        "export.remesh_size": C.in_range(0.0, 1.0),
        "export.remesh_iters": C.in_range(0, 100),
        "refine.ssaa_min": C.check(lambda v: 0 < v <= 8, "be > 0 and <= 8"),
        "refine.ssaa_max": [C.check(lambda v: 0 < v <= 8, "be > 0 and <= 8"), C.at_least("refine.ssaa_min")],
        "sir.views": C.in_range(1, MAX_VIEWS),
        "sir.level_views": [C.in_range(0, MAX_VIEWS), C.at_most("sir.views")],
        "sir.render_size": C.in_range(8, MAX_SIZE),
        "sir.iters": C.in_range(0, MAX_STEPS),
        "sir.init_steps": C.in_range(0, MAX_STEPS),
        "sir.steps_min": C.in_range(0, MAX_STEPS),
        "sir.steps_max": [C.in_range(0, MAX_STEPS), C.at_least("sir.steps_min")],
        "sir.denoise_steps": C.in_range(1, 1000),  # the schedules have 1000 training timesteps
        "sir.t_start": C.in_range(0.0, 1.0),
        # t2 anneals from t_start down to t_end (docs/method.md), so the end is the lower one.
        "sir.t_end": [C.in_range(0.0, 1.0), C.at_most("sir.t_start")],
        "sir.inv_ratio": C.in_range(0.0, 1.0),
        "sir.eta": C.in_range(0.0, 1.0),  # DDIM: eta > 1 makes the deterministic part's variance negative
        "sir.cfg": C.in_range(0.0, 100.0),
        "sir.lambda_target": C.in_range(0.0, MAX_WEIGHT),
        "sir.ref_loss": C.in_range(0.0, MAX_WEIGHT),
        "sir.ref_mask_loss": C.in_range(0.0, MAX_WEIGHT),
        "sir.steps_schedule": C.choices("fixed", "linear", "cosine_up", "cosine_down", "cosine_up_then_down"),
        "export.density_thresh": C.check(lambda v: 0 < v <= 100, "be > 0 and <= 100"),
        "export.grid_resolution": C.in_range(8, MAX_GRID),
        "export.grid_fit_opacity": C.in_range(0.0, 1.0),
        "export.max_faces": C.in_range(MIN_FACES, 100_000_000),
        "export.uv_max_faces": C.in_range(MIN_FACES, 100_000_000),
        "export.texture_size": C.in_range(16, MAX_TEXTURE),
        "export.bake_size": C.in_range(16, MAX_SIZE),
        "export.uv_time_budget": C.check(lambda v: 0 < v <= 600, "be > 0 and <= 600 seconds"),
        "export.uv_workers": C.in_range(0, 64),  # 0 = auto (mesh_renderer.uv.default_workers)
        "refine.iters": C.in_range(0, MAX_STEPS),
        "refine.steps": C.in_range(0, MAX_STEPS),
        "refine.views": C.in_range(1, MAX_VIEWS),
        "refine.render_size": C.in_range(8, MAX_SIZE),
        "refine.grid_steps": C.in_range(1, 1000),
        # t = grid[int(grid_steps * strength)]: strength 1 would index past the grid's end.
        "refine.strength": C.check(lambda v: 0.0 <= v < 1.0, "be >= 0 and < 1"),
        "refine.eta": C.in_range(0.0, 1.0),
        "refine.cfg": C.in_range(0.0, 100.0),
        "refine.texture_lr": C.check(lambda v: 0 < v <= MAX_WEIGHT, f"be > 0 and <= {MAX_WEIGHT:g}"),
        "refine.ref_loss": C.in_range(0.0, MAX_WEIGHT),
    }


def finalize_config(cfg: DictConfig) -> DictConfig:
    """Fill what depends on other keys and check ``save_path``; fails before any model loads.

    A missing ``input`` fails here. A model that renders its own reference view
    (``needs_input=False``) may run without ``input``; its outputs are then named after the mesh of
    its config section, or after the model. A text-conditioned model needs ``prompt`` and no
    ``input``; its outputs are named after the prompt. ``save_path`` must be a bare file-name stem
    (outputs stay inside ``outdir``); a name derived from a file name is made safe instead of refused.
    """
    spec = guidance.registry.get(cfg.get("guidance"))
    if spec.conditioning == "text":
        _finalize_text(cfg, spec.name)
    elif not cfg.get("input"):
        if spec.needs_input:
            raise C.ConfigError("input is not set: pass input=path/to/image.png")
        if not cfg.get("save_path"):
            mesh = (cfg.get(spec.section) or {}).get("mesh")
            cfg.save_path = safe_stem(Path(str(mesh)).stem if mesh else spec.name)
    if "save_path" in cfg:
        problem = stem_problem(str(cfg.save_path))
        if problem:
            raise C.ConfigError(
                f"config key 'save_path' must be a file-name stem, but {cfg.save_path!r} {problem}"
            )
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
