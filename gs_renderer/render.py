"""Batched differentiable rendering of a GaussianModel: one call for all V cameras."""

from __future__ import annotations

import logging
import threading

import torch

__all__ = ["render", "gsplat_available", "preload_kernels"]

log = logging.getLogger(__name__)
_GSPLAT_OK: bool | None = None  # cached decision of backend="auto"
_GSPLAT_LOCK = threading.Lock()  # the check may first run on the GPU warm-up thread


def gsplat_available() -> bool:
    """True if gsplat imports and its CUDA kernels run (checked once, on a tiny scene)."""
    global _GSPLAT_OK
    if _GSPLAT_OK is not None:
        return _GSPLAT_OK
    with _GSPLAT_LOCK:
        if _GSPLAT_OK is None:
            _GSPLAT_OK = _gsplat_works()
    return _GSPLAT_OK


def _gsplat_works() -> bool:
    """:func:`gsplat_available`'s check: import gsplat and rasterise one Gaussian (warns on failure)."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat

        dev = torch.device("cuda")
        img, _, _ = gsplat.rasterization(
            torch.zeros(1, 3, device=dev),
            torch.tensor([[1.0, 0, 0, 0]], device=dev),
            torch.full((1, 3), 0.1, device=dev),
            torch.ones(1, device=dev),
            torch.ones(1, 3, device=dev),
            torch.eye(4, device=dev)[None]
            + torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2.0], [0, 0, 0, 0]], device=dev)[None],
            torch.tensor([[[16.0, 0, 8], [0, 16, 8], [0, 0, 1]]], device=dev),
            16,
            16,
        )
        torch.cuda.synchronize()
        return bool(torch.isfinite(img).all())
    except Exception as e:  # missing package, failed JIT build, driver mismatch...
        log.warning("gsplat unusable (%s: %s); using the PyTorch reference renderer", type(e).__name__, e)
        return False


def preload_kernels(backend: str, device: torch.device | str) -> None:
    """Import gsplat and load its kernels now when ``backend`` would use them on ``device`` (the GPU
    warm-up thread calls this while the weights load, so the first render does not)."""
    if backend in ("auto", "gsplat") and torch.device(device).type == "cuda":
        gsplat_available()


def render(
    model,
    cams,
    bg: torch.Tensor,
    backend: str = "auto",
    need_means2d: bool = False,
    near: float = 0.01,
    far: float = 100.0,
    depth: bool = True,
):
    """Render ``model`` from the V cameras ``cams`` in one call -> ``RenderOutput``.

    ``bg``: float ``[3]`` (or ``[V,3]``) in [0,1]. Returns ``rgb [V,3,H,W]`` in [0,1] over ``bg``,
    ``alpha [V,1,H,W]``, ``depth [V,1,H,W]`` (expected camera z), ``means2d [V,N,2]`` pixel
    positions (``retain_grad`` if ``need_means2d`` and grad is on) and ``radii [V,N]`` int pixels
    (0 = invisible). Differentiable w.r.t. every Gaussian parameter. ``backend``: "gsplat" (CUDA),
    "torch" (reference) or "auto" (gsplat on CUDA tensors when it works, else torch).
    ``depth=False``: no depth (None), rgb and alpha unchanged; gsplat then skips its depth channel.
    """
    cams = cams.to(model.device) if cams.device != model.device else cams
    bg = torch.as_tensor(bg, dtype=torch.float32, device=model.device)
    if backend == "auto":
        backend = "gsplat" if model.device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat":
        from .render_gsplat import render_gsplat

        out = render_gsplat(model, cams, bg, need_means2d, near, far, depth=depth)
    elif backend == "torch":
        from .render_torch import render_torch

        out = render_torch(model, cams, bg, need_means2d, near, far)
        if not depth:
            out.depth = None
    else:
        raise ValueError(f"unknown Gaussian render backend {backend!r} (auto | gsplat | torch)")
    # The authors clamp renders to [0,1] (their Renderer.render); colours above 1 then get no
    # gradient, which the fidelity goldens check.
    out.rgb = out.rgb.clamp(0, 1)
    return out
