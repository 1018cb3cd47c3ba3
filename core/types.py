"""Small dataclasses shared by both renderers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RenderOutput:
    """What a renderer returns for a batch of V cameras.

    ``rgb``: float ``[V,3,H,W]`` in [0,1], composited over the background colour.
    ``alpha``: float ``[V,1,H,W]`` in [0,1]. ``depth``: float ``[V,1,H,W]`` camera-space z
    (0 where nothing is hit), or None.
    Mesh renderers also fill ``normal`` (``[V,3,H,W]`` world normals in [-1,1]) and ``viewcos``
    (``[V,1,H,W]``, cosine between the normal and the direction to the camera).
    The Gaussian renderer fills ``means2d`` (``[V,N,2]`` pixel positions, with ``retain_grad`` so
    densification can read their gradient) and ``radii`` (``[V,N]`` pixels, 0 = not visible).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    viewcos: torch.Tensor | None = None
    means2d: torch.Tensor | None = None
    radii: torch.Tensor | None = None
