"""The stages of image -> 3D: the SIR loop, stage 1 (Gaussians -> coarse mesh), stage 2 (texture
-> final ``.glb``), both in one process, their reports, progress and previews.

Library API::

    cfg = load_config(["--config", "configs/image.yaml", "input=cat.png"])
    reports = image_to_3d(cfg)            # both stages, the model loaded once
    run_stage1(cfg, denoiser=None, export=True); run_stage2(cfg, denoiser=None)
    for item in prompt_items("prompts.txt"): ...  # text to 3D: item.prompt, item.save_path
    sys.exit(cli(image_to_3d))            # a command-line front end
"""

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.image_to_3d import image_to_3d
from pipeline.prompts import PromptItem, prompt_items, prompt_slug
from pipeline.sir import Representation, SirPlan, run_sir
from pipeline.stage1 import run_stage1
from pipeline.stage2 import run_stage2

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
