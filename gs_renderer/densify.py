"""Adaptive density control (docs/method.md#densify): screen-gradient statistics, clone, split, prune.

Statistics: the authors accumulate ``||d loss / d means2D||`` only for the **last** of the B
novel views they render one by one (docs/method.md#densify); so does the default configuration
(``last_view_only``), although we render all V views in one call. Without it every visible (view,
Gaussian) pair is accumulated (``gaussians.densify_stats: all``): each view is an equally valid
sample of the same per-view statistic and the mean per visible view keeps the magnitude of the
authors' number, but at full size the authors' choice measured better (README, "Paper mode").

Units: 3DGS's ``means2D`` gradient is w.r.t. NDC-like coordinates (pixel = ((ndc+1) W - 1)/2),
i.e. the pixel gradient times (W/2, H/2). gsplat's DefaultStrategy applies the same factor (plus
its number of cameras, because its loss is a mean over cameras; our loss is the authors' sum over
pixels / B, so each view's gradient already has their scale and no camera factor is applied).
With that, the spec's threshold 0.01 keeps its meaning.
"""

from __future__ import annotations

import functools

import torch

from core.adam import Adam

from .model import PARAM_GROUPS, GaussianModel, quat_to_rotmat

__all__ = ["Densifier", "final_prune", "replace_points"]


def replace_points(
    model: GaussianModel,
    optimizer: Adam | None,
    keep: torch.Tensor,
    new: dict[str, torch.Tensor] | None = None,
) -> None:
    """Keep the rows ``keep`` (bool ``[N]``) and append ``new`` (group name -> rows) in place.

    Every parameter tensor is replaced by a new leaf; in ``optimizer`` the param group entry and
    its Adam state move with it (kept rows keep exp_avg / exp_avg_sq, new rows get zeros).
    """
    new = new or {}
    groups = {g.get("name"): g for g in optimizer.param_groups} if optimizer is not None else {}
    for name, attr in PARAM_GROUPS.items():
        old = getattr(model, attr)
        data = old.detach()[keep]
        if name in new:
            data = torch.cat([data, new[name].detach().to(data.dtype)])
        leaf = data.contiguous().requires_grad_(True)
        group = groups.get(name)
        if group is not None:
            assert group["params"][0] is old, f"optimizer group {name} does not hold the model's tensor"
            state = optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        s = state[key][keep]
                        if name in new:
                            s = torch.cat([s, torch.zeros_like(new[name], dtype=s.dtype)])
                        state[key] = s.contiguous()
                optimizer.state[leaf] = state
            group["params"][0] = leaf
        setattr(model, attr, leaf)


@functools.lru_cache(maxsize=16)
def _log_cap(max_scale: float) -> float:
    """``log(max_scale)`` as float32 computes it (the log-scale cap), worked out once per value."""
    return float(torch.log(torch.tensor(max_scale)))


class Densifier:
    """Accumulates screen-space gradient norms and runs the authors' densify/prune steps."""

    def __init__(self, model: GaussianModel, optimizer: Adam | None, seed: int = 0) -> None:
        self.model = model
        self.optimizer = optimizer
        n, dev = model.num_points, model.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii2d = torch.zeros(n, device=dev)
        self.image_height = 0.0  # height of the views the statistics came from (pixels)
        # Split samples draw from this generator, so a seeded run densifies identically.
        self.generator = torch.Generator(device=dev).manual_seed(seed)

    def reset_stats(self) -> None:
        """Zero the statistics (after every densify, as the authors' postfix does)."""
        n, dev = self.model.num_points, self.model.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii2d = torch.zeros(n, device=dev)

    @torch.no_grad()
    def add_stats(
        self,
        out,
        width: int | None = None,
        height: int | None = None,
        views: int | None = None,
        last_view_only: bool = False,
    ) -> None:
        """Accumulate from a ``RenderOutput`` after ``backward`` (``means2d.grad`` ``[V,N,2]``).

        ``width``/``height`` default to the rendered image size; ``views``: use only the first
        ``views`` rows (e.g. leave out a reference view rendered in the same batch);
        ``last_view_only``: only the last of those rows (the authors' statistic, paper mode).
        """
        g = out.means2d.grad
        if g is None:
            raise RuntimeError("means2d has no grad: render with need_means2d=True and call backward first")
        radii = out.radii
        if views is not None:
            g, radii = g[:views], radii[:views]
        if last_view_only:
            g, radii = g[-1:], radii[-1:]
        H, W = out.rgb.shape[-2:]
        width = W if width is None else width
        height = H if height is None else height
        # Each column times a Python float: a torch.tensor of the two factors would be a
        # host->device copy that waits for the GPU at every step.
        scaled = torch.stack((g[..., 0] * (width / 2.0), g[..., 1] * (height / 2.0)), dim=-1)
        norms = scaled.norm(dim=-1)  # [V,N] in NDC-like units
        vis = radii > 0
        self.grad_accum += (norms * vis).sum(0)
        self.denom += vis.sum(0)
        self.max_radii2d = torch.maximum(self.max_radii2d, radii.float().max(0).values)
        self.image_height = float(height)

    def mean_grads(self) -> torch.Tensor:
        """Mean accumulated gradient norm per Gaussian ``[N]`` (0 where never visible)."""
        return torch.nan_to_num(self.grad_accum / self.denom, nan=0.0)

    @torch.no_grad()
    def densify_and_prune(
        self,
        grad_thresh: float = 0.01,
        min_opacity: float = 0.005,
        extent: float = 4.0,
        percent_dense: float = 0.01,
        max_scale_frac: float = 0.1,
        max_screen_frac: float = 0.0,
        max_scale: float = 0.0,
    ) -> dict[str, int]:
        """Clone small / split large high-gradient Gaussians, then prune; returns counts.

        Clone: ``g >= grad_thresh`` and ``max scale <= percent_dense*extent`` (copy). Split:
        ``g >= grad_thresh`` and larger: 2 samples from the Gaussian, scales / 1.6, parent removed.
        Prune: opacity < ``min_opacity`` or max scale > ``max_scale_frac*extent``; with
        ``max_screen_frac > 0`` also a largest screen radius above ``max_screen_frac`` x the view
        height (3DGS's screen-size prune; the authors' one never fires, docs/method.md#densify, so 0 = off).
        With ``max_scale > 0`` every Gaussian at or above that scale cap is split whatever its
        gradient (it was capped because it wanted to grow: finer Gaussians cover it instead).
        Statistics are reset.
        """
        m = self.model
        grads = self.mean_grads()
        n0 = m.num_points
        big = m.get_scales().max(dim=1).values > percent_dense * extent
        hot = grads >= grad_thresh
        clone = hot & ~big
        split = hot & big
        if max_scale > 0:
            split = split | (m.get_scales().max(dim=1).values >= 0.999 * max_scale)
        clone = clone & ~split
        n_clone, n_split = int(clone.sum()), int(split.sum())

        # Split samples: x = mu + R diag(s) z, z ~ N(0, I), 2 per parent, from the parents'
        # parameters before any change (clones are not split: they are appended after).
        k = 2
        s = m.get_scales()[split].repeat(k, 1)
        z = torch.randn(s.shape, device=s.device, generator=self.generator) * s
        R = quat_to_rotmat(m.quats.detach()[split]).repeat(k, 1, 1)
        new_split = {
            "xyz": (R @ z[..., None])[..., 0] + m.means.detach()[split].repeat(k, 1),
            "scaling": torch.log(s / (0.8 * k)),
            "rotation": m.quats.detach()[split].repeat(k, 1),
            "f_dc": m.sh0.detach()[split].repeat(k, 1, 1),
            "f_rest": m.shN.detach()[split].repeat(k, 1, 1),
            "opacity": m.opacities.detach()[split].repeat(k),
        }
        screen_big = torch.zeros(n0, dtype=torch.bool, device=grads.device)
        if max_screen_frac > 0 and self.image_height > 0:
            screen_big = self.max_radii2d > max_screen_frac * self.image_height
        params = m.parameters()
        new = {name: torch.cat([params[name].detach()[clone], new_split[name]]) for name in params}
        replace_points(m, self.optimizer, ~split, new)

        # Children (clones, split samples) start unseen: only kept parents can be screen-pruned.
        kept_big = screen_big[~split]
        screen_big = torch.cat(
            [kept_big, torch.zeros(m.num_points - len(kept_big), dtype=torch.bool, device=grads.device)]
        )
        prune = (
            (m.get_opacities() < min_opacity)
            | (m.get_scales().max(dim=1).values > max_scale_frac * extent)
            | screen_big
        )
        n_prune = int(prune.sum())
        replace_points(m, self.optimizer, ~prune)
        self.reset_stats()
        return {"before": n0, "cloned": n_clone, "split": n_split, "pruned": n_prune, "after": m.num_points}

    @torch.no_grad()
    def clamp_scales(self, max_scale: float) -> torch.Tensor:
        """Cap every Gaussian's scales at ``max_scale`` (world units) in place.

        Returns how many Gaussians were over the cap, a 0-dim int64 tensor on the model's device
        (reading it is the caller's host-device sync; it runs every step). The log-scale
        parameter is clamped, so the Adam state stays valid and the Gaussian can shrink again;
        the split step then refines capped Gaussians where the gradient asks.
        """
        m = self.model
        limit = _log_cap(max_scale)
        over = m.scales.detach() > limit  # scales hold log-scales (get_scales = exp)
        n = over.any(dim=1).sum()
        # Clamping unconditionally is exact (values at or below the cap are unchanged) and needs
        # no host-side "is any over?" test.
        m.scales.data.clamp_(max=limit)
        return n

    @torch.no_grad()
    def final_prune(self, min_opacity: float = 0.01, max_scale: float = 0.1) -> int:
        """After training (docs/method.md#densify): drop opacity < 0.01 or max scale > 0.1; returns the count."""
        return final_prune(self.model, self.optimizer, min_opacity, max_scale, self)


@torch.no_grad()
def final_prune(
    model: GaussianModel,
    optimizer: Adam | None = None,
    min_opacity: float = 0.01,
    max_scale: float = 0.1,
    densifier: Densifier | None = None,
) -> int:
    """Drop Gaussians with opacity < ``min_opacity`` or max scale > ``max_scale``; returns the count."""
    prune = (model.get_opacities() < min_opacity) | (model.get_scales().max(dim=1).values > max_scale)
    replace_points(model, optimizer, ~prune)
    if densifier is not None:
        densifier.reset_stats()
    return int(prune.sum())
