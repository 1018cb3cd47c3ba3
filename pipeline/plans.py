"""Turn a stage's config into a :class:`pipeline.sir.SirPlan` (every schedule fixed up front)."""

from __future__ import annotations

from omegaconf import DictConfig

from core.schedules import reconstruct_steps, t1_for_t2, t2_for_iteration
from pipeline.sir import SirPlan


def stage1_plan(cfg: DictConfig, denoiser) -> SirPlan:
    """Stage 1: init pass + ``sir.iters`` hybrid-forward iterations (docs/method.md#stage1-schedules)."""
    s = cfg.sir
    sched = denoiser.schedule
    fwd = sched.timesteps(s.denoise_steps)
    inv = sched.inverse_timesteps(s.denoise_steps)
    t2s = [t2_for_iteration(k, s.iters, fwd, s.t_start, s.t_end) for k in range(s.iters)]
    pairs = [(min(t1_for_t2(t2, inv, s.inv_ratio, sched.num_train_timesteps), t2), t2) for t2 in t2s]
    steps = [
        reconstruct_steps(k, s.iters, s.steps_schedule, s.steps_min, s.steps_max) for k in range(s.iters)
    ]
    return SirPlan(
        views=s.views,
        render_size=s.render_size,
        t_pairs=pairs,
        steps=steps,
        grid_steps=s.denoise_steps,
        eta=s.eta,
        cfg=s.cfg,
        init_steps=s.init_steps,
        ref_elevation=cfg.elevation,
        min_ver=cfg.cameras.min_ver,
        max_ver=cfg.cameras.max_ver,
        radius=cfg.cameras.radius,
        fovy=cfg.cameras.fovy,
        even_view=s.even_view,
        resize_mode="bicubic",
        late_t2_max=int(cfg.export.hull_t_max * sched.num_train_timesteps),
        level_views=s.level_views,
    )


def stage2_plan(cfg: DictConfig, denoiser) -> SirPlan:
    """Stage 2: ``refine.iters`` noise-adding iterations at ``grid[int(grid_steps*strength)]`` (docs/method.md#stage2)."""
    r = cfg.refine
    grid = denoiser.schedule.timesteps(r.grid_steps)
    t = int(grid[int(r.grid_steps * r.strength)])
    return SirPlan(
        views=r.views,
        render_size=r.render_size,
        t_pairs=[(t, t)] * r.iters,
        steps=[r.steps] * r.iters,
        grid_steps=r.grid_steps,
        eta=r.eta,
        cfg=r.cfg,
        init_steps=0,
        ref_elevation=cfg.elevation,
        min_ver=cfg.cameras.min_ver,
        max_ver=cfg.cameras.max_ver,
        radius=cfg.cameras.radius,
        fovy=cfg.cameras.fovy,
        even_view=True,
        resize_mode="bilinear",
    )
