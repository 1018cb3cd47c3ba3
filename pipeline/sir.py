"""The one score-based iterative reconstruction (SIR) loop both stages share (paper Alg. 1).

```
for k in (init pass,) 0..K-1:
    cams_k  <- V orbit views (even azimuths from a random offset, elevation per view)
    x       <- render(theta, cams_k)
    x_hat   <- refine(x, t1_k, t2_k)          # once per iteration, cached for its steps
    repeat I_k times: loss(render(theta, cams_k), x_hat) (+ reference losses); optimiser step
```
The representation (3D Gaussians in stage 1, a UV texture in stage 2) is anything that follows
:class:`Representation`; the diffusion side is a :class:`guidance.denoiser.Denoiser`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from core.cameras import Cameras, orbit_cameras, sample_orbit_views
from core.defaults import DEFAULT_FOVY, DEFAULT_RADIUS
from core.timing import PhaseTimer
from core.types import RenderOutput
from guidance.sir_step import refine


class Representation(Protocol):
    """What the SIR loop needs from the thing it optimises."""

    def begin_iteration(self, cams: Cameras) -> None:
        """Called once per SIR iteration with its (fixed) cameras."""

    def render(self, cams: Cameras) -> RenderOutput:
        """Differentiable render of all views, rgb ``[V,3,H,W]`` in [0,1]."""

    def loss(self, out: RenderOutput, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss to the refined views ``[V,3,H,W]`` (plus any reference-view terms)."""

    def step(self, loss: torch.Tensor, out: RenderOutput) -> None:
        """Backward, optimiser step and bookkeeping (learning rates, densification)."""


@dataclass
class SirPlan:
    """Everything the loop does, fixed in advance (schedules are plain Python ints)."""

    views: int
    render_size: int
    t_pairs: list[tuple[int, int]]  # (t1, t2) of each SIR iteration (after the init pass)
    steps: list[int]  # reconstruction steps of each SIR iteration
    grid_steps: int  # DDIM grid size of the refine step
    eta: float
    cfg: float
    init_steps: int = 0  # 0 = no init pass (stage 2)
    ref_elevation: float = 0.0
    min_ver: float = -30
    max_ver: float = 30
    radius: float = DEFAULT_RADIUS
    fovy: float = DEFAULT_FOVY
    even_view: bool = True
    resize_mode: str = "bilinear"  # renders -> model size and back (stage 1 bicubic, stage 2 bilinear)
    late_t2_max: int = -1  # the late iterations (t2 <= this): their refined views make the refined-view hull
    level_views: int = 0  # views put at the input's elevation in the late iterations


@dataclass
class SirStats:
    """What a run of the loop did."""

    optimiser_steps: int = 0
    iterations: int = 0
    losses: list[float] = field(default_factory=list)


def resize(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[B,C,H,W]`` to ``size`` as the authors do (no antialias); no-op at that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, (size, size), mode=mode, align_corners=False)


def sample_cameras(
    plan: SirPlan, rng: np.random.Generator, device: torch.device, t2: int | None = None
) -> Cameras:
    """The V cameras of one SIR iteration refined from ``t2`` (None: the init pass)
    (docs/method.md#view-sampling). With ``plan.level_views`` = k and ``t2 <= plan.late_t2_max``,
    k views spread around the orbit (indices ``round(i * V / k)``) are moved to the input's
    elevation after the draw, so the random stream is the same as without."""
    offsets, azimuths = sample_orbit_views(
        rng, plan.views, plan.ref_elevation, plan.min_ver, plan.max_ver, plan.even_view
    )
    k = min(plan.level_views, plan.views)
    if k > 0 and t2 is not None and t2 <= plan.late_t2_max:
        offsets[[round(i * plan.views / k) for i in range(k)]] = 0
    return orbit_cameras(
        plan.ref_elevation + offsets.astype(np.float32),
        azimuths.astype(np.float32),
        radius=plan.radius,
        fovy=plan.fovy,
        height=plan.render_size,
        device=device,
    )


def run_sir(
    rep: Representation,
    denoiser,
    plan: SirPlan,
    rng: np.random.Generator,
    noise,
    timer: PhaseTimer,
    device: torch.device,
    on_iteration: Callable[[int, int, torch.Tensor], None] | None = None,
    on_target: Callable[[int | None, Cameras, torch.Tensor], None] | None = None,
) -> SirStats:
    """Run the init pass (when ``plan.init_steps``) and the SIR iterations of ``plan``.

    ``noise``: a NoiseSource for every random draw of the refine step. ``on_iteration(i, n, loss)``
    is called after each iteration with the last loss (a tensor: reading it is the caller's sync);
    ``on_target(t2, cams, target)`` with each iteration's refined views ``[V,3,H,W] in [0,1]`` and
    its ``t2`` (None for the init pass, refined from pure noise).
    """
    stats = SirStats()
    passes: list[tuple[bool, int, int, int]] = []  # (from_noise, t1, t2, steps)
    if plan.init_steps > 0:
        passes.append((True, 0, 0, plan.init_steps))
    passes += [(False, t1, t2, n) for (t1, t2), n in zip(plan.t_pairs, plan.steps)]

    for i, (from_noise, t1, t2, n_steps) in enumerate(passes):
        cams = sample_cameras(plan, rng, device, None if from_noise else t2)
        rep.begin_iteration(cams)
        target = None
        loss = None
        for _ in range(n_steps):
            with timer.phase("render"):
                out = rep.render(cams)
            if target is None:
                # The first render of an iteration also feeds the refine step (as the paper code).
                with timer.phase("refine"), torch.no_grad():
                    x = resize(out.rgb[: len(cams)].detach().float(), denoiser.image_size, plan.resize_mode)
                    refined = refine(
                        denoiser,
                        x,
                        cams,
                        t1=t1,
                        t2=t2,
                        eta=plan.eta,
                        cfg_scale=plan.cfg,
                        num_steps=plan.grid_steps,
                        noise=noise,
                        from_noise=from_noise,
                    )
                    target = resize(refined.images.float(), plan.render_size, plan.resize_mode).clamp(0, 1)
                    if on_target is not None:
                        on_target(None if from_noise else t2, cams, target)
            with timer.phase("optimise"):
                loss = rep.loss(out, target)
                rep.step(loss, out)
            stats.optimiser_steps += 1
        stats.iterations += 1
        if on_iteration is not None and loss is not None:
            on_iteration(i, len(passes), loss.detach())
    return stats
