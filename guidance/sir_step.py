"""The SIR refine step (paper Alg. 1, docs/method.md#refine-step, #stage2): rendered views -> refined target views.

``encode -> add noise 0->t1 -> DDIM-invert t1->t2 (unconditional eps) -> DDIM-sample t2->0 (CFG, eta)
-> decode``, written once against :class:`guidance.denoiser.Denoiser`. Loop semantics are the
authors' (``zero123_utils.py:193-223``):

* inversion walks the ascending grid: a pair (t_cur, t_next) is skipped while ``t_next <= t1``, the loop
  stops once ``t_next > t2``, otherwise ``x <- inverse_step(eps_u(x, t_cur), t_next)`` with diffusers'
  source alpha ``t_next - T//n``;
* reverse sampling runs every forward grid timestep ``t <= t_stop`` (t_stop = t2, or T on the init
  pass), the last step landing on the final alpha (``alphas_cumprod[0]`` when set_alpha_to_one is off);
* ``t1 == t2`` is pure noise-adding (no inversion): stage 2 uses a 50-step grid with
  ``t1 = t2 = grid[int(50 * 0.8)] = 181`` and eta 0, CFG 2 (10 DDIM steps).

Everything between encode and decode is float32 with Python-int timesteps: no host-device sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from guidance.denoiser import Denoiser, NoiseSource, as_noise_source

__all__ = ["RefinePlan", "RefineOutput", "plan_refine", "refine"]


@dataclass(frozen=True)
class RefinePlan:
    """The timesteps a refine call visits: inversion (t_cur, t_next) pairs and reverse timesteps."""

    add_noise_t: int | None
    inversion: list[tuple[int, int]] = field(default_factory=list)
    reverse: list[int] = field(default_factory=list)


@dataclass
class RefineOutput:
    """Result of :func:`refine`: ``images`` float32 ``[B,3,S,S]`` in [0,1] at the model's size, and NFEs."""

    images: torch.Tensor
    cfg_calls: int
    uncond_calls: int
    plan: RefinePlan


def plan_refine(schedule: Any, t1: int, t2: int, num_steps: int, from_noise: bool = False) -> RefinePlan:
    """Timesteps of one refine call on a grid of ``num_steps`` (no network involved)."""
    fwd = schedule.timesteps(num_steps)
    if from_noise:
        return RefinePlan(add_noise_t=None, inversion=[], reverse=list(fwd))
    if t1 > t2:
        raise ValueError(f"refine needs t1 <= t2, got t1={t1}, t2={t2}")
    inv = schedule.inverse_timesteps(num_steps)
    pairs: list[tuple[int, int]] = []
    for t_cur, t_next in zip(inv[:-1], inv[1:]):
        if t_next <= t1:
            continue
        if t_next > t2:
            break
        pairs.append((t_cur, t_next))
    return RefinePlan(
        add_noise_t=t1 if t1 > 0 else None,
        inversion=pairs,
        reverse=[t for t in fwd if t <= t2],
    )


@torch.no_grad()
def refine(
    denoiser: Denoiser,
    images: torch.Tensor,
    cams: Any,
    t1: int,
    t2: int,
    eta: float = 0.0,
    cfg_scale: float = 3.0,
    num_steps: int = 20,
    noise: NoiseSource | torch.Generator | None = None,
    from_noise: bool = False,
    cond: Any = None,
    encode_mode: bool = False,
) -> RefineOutput:
    """Refine rendered views into SIR targets.

    ``images``: float ``[B,3,H,W]`` in [0,1] (resized bilinearly to ``denoiser.image_size`` if needed;
    only its batch size is used when ``from_noise``). ``cams``: the B cameras (ignored when ``cond``
    is given, i.e. precomputed by ``denoiser.prepare``). ``t1 <= t2``: Python ints on the grid of
    ``num_steps``. ``from_noise``: the init pass (pure noise, full reverse, no encode).
    ``encode_mode``: encode with the posterior mean instead of a sample (no noise draw).
    The noise draw order is documented in :mod:`guidance.denoiser`.
    """
    sched = denoiser.schedule
    src = as_noise_source(noise)
    plan = plan_refine(sched, t1, t2, num_steps, from_noise)
    if cond is None:
        cond = denoiser.prepare(cams)
    B = images.shape[0]
    if B % denoiser.views_per_group:
        raise ValueError(f"batch {B} is not a multiple of views_per_group={denoiser.views_per_group}")
    dev = denoiser.device
    n0_cfg, n0_unc = denoiser.nfe_cfg, denoiser.nfe_uncond

    if from_noise:
        # The authors encode the renders and add noise, then throw both away (docs/method.md#speedups).
        x = src.randn(denoiser.latent_shape(B), dev)
    else:
        S = denoiser.image_size
        img = images.to(dev, torch.float32)
        if img.shape[-2:] != (S, S):
            img = F.interpolate(img, (S, S), mode="bilinear", align_corners=False)
        x = denoiser.encode(img, None if encode_mode else src)
        if plan.add_noise_t is not None:
            x = sched.add_noise(x, src.randn(x.shape, dev), plan.add_noise_t)
        for t_cur, t_next in plan.inversion:
            eps = denoiser.eps_uncond(x, t_cur, cond)
            x = sched.inverse_step(eps, sched.inverse_source(t_next, num_steps), t_next, x)

    for t in plan.reverse:
        eps = denoiser.eps_cfg(x, t, cond, cfg_scale)
        z = src.randn(x.shape, dev) if eta > 0 else None
        x = sched.ddim_step(eps, t, sched.prev_timestep(t, num_steps), x, eta, z)

    out = denoiser.decode(x)
    return RefineOutput(
        images=out,
        cfg_calls=denoiser.nfe_cfg - n0_cfg,
        uncond_calls=denoiser.nfe_uncond - n0_unc,
        plan=plan,
    )
