"""The stages of image -> 3D: the SIR loop, stage 1 (Gaussians -> coarse mesh), stage 2 (texture
-> final ``.glb``), both in one process, their reports, progress and previews.

Library API::

    cfg = load_config(["--config", "configs/image.yaml", "input=cat.png"])
    reports = image_to_3d(cfg)            # both stages, the model loaded once
    run_stage1(cfg, denoiser=None, export=True); run_stage2(cfg, denoiser=None)
    for item in prompt_items("prompts.txt"): ...  # text to 3D: item.prompt, item.save_path
    sys.exit(cli(image_to_3d))            # a command-line front end
"""

import importlib
from typing import TYPE_CHECKING, Any

# The light names now; the stages on first use (PEP 562), so a process that only reads configs
# (the batch driver) never imports torch and the renderers through this package.
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.prompts import PromptItem, prompt_items, prompt_slug

_LAZY = {
    "image_to_3d": "pipeline.both_stages",
    "Representation": "pipeline.sir",
    "SirPlan": "pipeline.sir",
    "run_sir": "pipeline.sir",
    "run_stage1": "pipeline.stage1",
    "run_stage2": "pipeline.stage2",
}

if TYPE_CHECKING:
    from pipeline.both_stages import image_to_3d
    from pipeline.sir import Representation, SirPlan, run_sir
    from pipeline.stage1 import run_stage1
    from pipeline.stage2 import run_stage2


def __getattr__(name: str) -> Any:
    """A public name of the package, imported from its module on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "PromptItem",
    "Representation",
    "SirPlan",
    "cli",
    "image_to_3d",
    "load_config",
    "prompt_items",
    "prompt_slug",
    "run_sir",
    "run_stage1",
    "run_stage2",
]
