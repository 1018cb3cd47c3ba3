"""The refined views' silhouettes kept from the late SIR iterations, to cut the coarse mesh's density.

The input view's mask bounds an object only along the input rays: under perspective the far half
of a thin part (a plate seen edge-on) may be up to ~1.4x too thick there, and the views opposite the
input see that. The refined views of stage 1 are photos on white of the object from around it
(the targets the Gaussians are fitted to); read as masks (object = not background, the rule of the
stage-1 alpha losses, ``sir.bg_threshold``) they are a visual hull from every side. Only the
iterations refined from little noise are kept (``t2 <= export.hull_t_max``): they agree with each
other and with the Gaussians; the init pass (from pure noise) and the early ones do not (on a small
oracle run of a thin animal they cut its legs: silhouette IoU 0.61 -> 0.47). docs/method.md#coarse-mesh.
"""

from __future__ import annotations

import torch

from core.cameras import Cameras
from pipeline.gaussians import background

__all__ = ["RefinedSilhouettes"]


class RefinedSilhouettes:
    """Collects ``(cameras, object mask)`` of the SIR iterations with ``t2 <= t_max`` (:func:`pipeline.sir.run_sir`'s ``on_target``)."""

    def __init__(self, t_max: float, bg_threshold: float) -> None:
        self.t_max = float(t_max)
        self.bg_threshold = float(bg_threshold)
        self._cams: list[Cameras] = []
        self._masks: list[torch.Tensor] = []

    def add(self, t2: int | None, cams: Cameras, target: torch.Tensor) -> None:
        """Keep an iteration's refined views ``target`` ``[V,3,H,W] in [0,1]`` when its ``t2`` (None: the init pass, from pure noise) is at most ``t_max``."""
        if t2 is None or t2 > self.t_max:
            return
        self._cams.append(cams)
        self._masks.append(~background(target.detach(), self.bg_threshold))

    def __len__(self) -> int:
        return sum(len(c) for c in self._cams)

    def views(self) -> tuple[Cameras, torch.Tensor]:
        """All kept cameras and their object masks ``[N,1,H,W]`` float in {0, 1}."""
        if not self._cams:
            raise ValueError("no refined views kept")
        return Cameras.cat(self._cams), torch.cat(self._masks).float()
