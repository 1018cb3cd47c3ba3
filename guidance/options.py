"""Reading a denoiser's options from the app config (a DictConfig or plain nested dicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["cfg_get", "cfg_prompt", "prompt_options"]


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` for a DictConfig or nested dicts; ``default`` when absent, None or empty."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return default
        if node is None:
            return default
    return default if node == "" else node


def cfg_prompt(cfg: Any) -> str:
    """``prompt``, else the text of ``<input stem>_caption.txt`` beside the input, else empty."""
    prompt = cfg_get(cfg, "prompt", "")
    if prompt:
        return str(prompt)
    inp = cfg_get(cfg, "input", "")
    if inp:
        cap = Path(inp).with_name(Path(inp).stem.removesuffix("_rgba") + "_caption.txt")
        for c in (cap, Path(inp).with_name(Path(inp).stem + "_caption.txt")):
            if c.is_file():
                return c.read_text().strip()
    return ""


def prompt_options(cfg: Any) -> dict[str, str]:
    """``prompt`` (see :func:`cfg_prompt`) and, when set, ``model.negative_prompt``: text-model arguments."""
    out = {"prompt": cfg_prompt(cfg)}
    neg = cfg_get(cfg, "model.negative_prompt")
    if neg is not None:
        out["negative_prompt"] = neg
    return out
