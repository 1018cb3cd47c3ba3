"""Multi-view denoisers behind one interface, the SIR refine step, model loading.

Backends are imported lazily so ``import guidance`` stays light (no diffusers/transformers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["load_denoiser", "GUIDANCE_KINDS"]

GUIDANCE_KINDS = ("zero123", "imagedream", "oracle")


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` for a DictConfig or nested dicts, ``default`` when absent or empty."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return default
        if node is None:
            return default
    return default if node == "" else node


def _prompt(cfg: Any) -> str:
    """``prompt``, else the text of ``<input stem>_caption.txt`` beside the input, else empty."""
    prompt = _get(cfg, "prompt", "")
    if prompt:
        return str(prompt)
    inp = _get(cfg, "input", "")
    if inp:
        cap = Path(inp).with_name(Path(inp).stem.removesuffix("_rgba") + "_caption.txt")
        for c in (cap, Path(inp).with_name(Path(inp).stem + "_caption.txt")):
            if c.is_file():
                return c.read_text().strip()
    return ""


def load_denoiser(cfg: Any, device: torch.device | str | None = None):
    """Build the denoiser named by ``cfg.guidance`` (zero123 | imagedream | oracle) on ``device``.

    Keys read: ``model.{id,path,cache_dir,dtype,cuda_graph,ref_latent,negative_prompt}``, ``prompt``,
    ``oracle.mesh`` (+ ``oracle.image_size`` or ``sir.render_size``), ``render.mesh_backend``,
    ``cameras.{radius,fovy}``. ``model.path`` (a local folder) wins over ``model.id``.
    """
    from core.errors import UserError

    kind = _get(cfg, "guidance", "zero123")
    if device is None:
        dev = _get(cfg, "device", "auto")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
    device = torch.device(device)
    model = _get(cfg, "model.path") or _get(cfg, "model.id")
    common = dict(
        device=device,
        dtype=_get(cfg, "model.dtype", "fp16"),
        cuda_graph=bool(_get(cfg, "model.cuda_graph", False)),
        config_key="model.path",
        cache_dir=_get(cfg, "model.cache_dir"),
    )
    if kind == "zero123":
        from guidance.zero123 import Zero123Denoiser

        return Zero123Denoiser(
            model or "ashawkey/stable-zero123-diffusers",
            concat_latent=_get(cfg, "model.ref_latent", "sample"),
            **common,
        )
    if kind == "imagedream":
        from guidance.imagedream import ImageDreamDenoiser

        extra = {}
        neg = _get(cfg, "model.negative_prompt")
        if neg is not None:
            extra["negative_prompt"] = neg
        return ImageDreamDenoiser(
            model or "ashawkey/imagedream-ipmv-diffusers",
            prompt=_prompt(cfg),
            ref_latent=_get(cfg, "model.ref_latent", "sample"),
            **extra,
            **common,
        )
    if kind == "oracle":
        from guidance.oracle import OracleDenoiser

        mesh = _get(cfg, "oracle.mesh")
        if not mesh:
            raise UserError("guidance=oracle needs a reference mesh: set oracle.mesh=/path/to/mesh.obj")
        size = _get(cfg, "oracle.image_size") or _get(cfg, "sir.render_size", 256)
        return OracleDenoiser(
            mesh,
            image_size=int(size),
            device=device,
            backend=_get(cfg, "render.mesh_backend", "auto"),
            radius=float(_get(cfg, "cameras.radius", 2.0)),
            fovy=float(_get(cfg, "cameras.fovy", 49.1)),
        )
    raise UserError(f"guidance={kind!r} is not one of {', '.join(GUIDANCE_KINDS)}")
