"""Stage 1's representation for the SIR loop: 3D Gaussians with the paper's losses and schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.cameras import Cameras
from core.errors import UserError
from core.types import RenderOutput
from gs_renderer.densify import Densifier
from gs_renderer.model import update_learning_rate
from gs_renderer.render import render
from pipeline.view_loss import ViewLossTerms, view_loss, view_loss_terms


def background(target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Background pixels of refined views ``[V,3,H,W] in [0,1]`` (photos on white): bool ``[V,1,H,W]``,
    every channel ``>= 1 - threshold`` (``sir.bg_threshold``; the stage-1 alpha losses and the
    refined-view hull read the views with this one rule)."""
    return target.amin(1, keepdim=True) >= 1.0 - threshold


@dataclass(frozen=True)
class GaussianSettings:
    """What the Gaussian representation reads: learning rates, densification, loss weights.

    Defaults are the paper's (``configs/image.yaml``); the stage builds one from its config.
    """

    position_lr_init: float = 0.001  # xyz learning rate at step 0 (times spatial_lr_scale)
    position_lr_final: float = 0.00002
    position_lr_max_steps: int = 500
    spatial_lr_scale: float = 10.0
    feature_lr: float = 0.01
    opacity_lr: float = 0.05
    scaling_lr: float = 0.005
    rotation_lr: float = 0.0005
    percent_dense: float = 0.01
    density_start_iter: int = 0
    density_end_iter: int = 300
    densification_interval: int = 100
    densify_grad_threshold: float = 0.01
    min_opacity: float = 0.005
    extent: float = 4.0
    densify_stats: str = "last"  # screen-gradient statistics from: last (novel view; the authors') | all
    lambda_target: float = 1.0  # weight of the L1 (sum) to the refined views
    ref_loss: float = 0.3  # weight of the L1 (sum) to the input image at the reference view
    ref_mask_loss: float = 0.01  # weight of the MSE (sum) to the input mask at the reference view
    backend: str = "auto"  # Gaussian rasteriser: auto | gsplat | torch
    # Issue 15 (each 0 = off, the paper's behaviour):
    bg_alpha_loss: float = 0.0  # weight of sum(alpha where the refined view is background) / V
    fg_alpha_loss: float = 0.0  # weight of sum(1 - alpha where the refined view is object) / V
    bg_threshold: float = 0.02  # a target pixel is background when every channel is >= 1 - this
    max_scale: float = 0.0  # cap on every Gaussian's scale (world units), applied after each step
    max_screen_frac: float = 0.0  # at densification prune Gaussians wider than this x image height


class GaussianRepresentation:
    """3D Gaussians optimised by SIR (docs/method.md#learning-rates, #sir-loop, #densify).

    Each reconstruction step renders the V novel views AND the reference view in one batched call
    (the authors made 7 rasteriser calls). Losses keep the authors' sum reductions, which the
    densification threshold and learning rates were tuned for:
    ``lambda_target * L1_sum(views, targets) / V + ref_loss * L1_sum(ref) + ref_mask_loss * MSE_sum(mask)``.
    """

    def __init__(
        self,
        model,
        settings: GaussianSettings,
        ref_rgb: torch.Tensor | None,
        ref_mask: torch.Tensor | None,
        ref_cam: Cameras | None,
        bg: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        g = settings
        if g.densify_stats not in ("all", "last"):
            raise UserError(f"gaussians.densify_stats must be all or last, got {g.densify_stats!r}")
        self.model = model
        self.backend = g.backend
        self.bg = torch.tensor(bg, device=model.device)
        self.lrs = {
            "xyz": g.position_lr_init * g.spatial_lr_scale,
            "f_dc": g.feature_lr,
            "f_rest": g.feature_lr / 20.0,
            "opacity": g.opacity_lr,
            "scaling": g.scaling_lr,
            "rotation": g.rotation_lr,
        }
        self.xyz_schedule = dict(
            lr_init=g.position_lr_init * g.spatial_lr_scale,
            lr_final=g.position_lr_final * g.spatial_lr_scale,
            max_steps=g.position_lr_max_steps,
        )
        self.optimizer = model.make_optimizer(self.lrs)
        self.densifier = Densifier(model, self.optimizer)
        self.g = g
        self.lambda_target = g.lambda_target
        self.ref_weight = g.ref_loss
        self.ref_mask_weight = g.ref_mask_loss
        # No reference view (text to 3D): no reference terms.
        self.use_ref = ref_rgb is not None and (self.ref_weight > 0 or self.ref_mask_weight > 0)
        self.ref_rgb, self.ref_mask, self.ref_cam = ref_rgb, ref_mask, ref_cam
        self.step_count = 0
        self.cams: Cameras | None = None
        self._terms_key: tuple | None = None  # the target the cached loss constants were built for

    def begin_iteration(self, cams: Cameras) -> None:
        """Remember the iteration's cameras; append the reference camera when sizes match."""
        self.views = len(cams)
        self.batched_ref = self.use_ref and self.ref_cam.height == cams.height
        self.cams = Cameras.cat([cams, self.ref_cam]) if self.batched_ref else cams
        self._terms_key = None

    def render(self, cams: Cameras) -> RenderOutput:
        """Render the V views (+ the reference view as row V) in one call."""
        grad = torch.is_grad_enabled()
        # depth=False: nothing in the loop reads the Gaussians' depth (docs/method.md#sir-loop)
        return render(self.model, self.cams, self.bg, backend=self.backend, need_means2d=grad, depth=False)

    def loss(self, out: RenderOutput, target: torch.Tensor) -> torch.Tensor:
        """The paper's stage-1 loss (sum reductions, see the class docstring), one autograd node.

        The per-row constants depend only on ``target`` (fixed for an iteration's steps), so they
        are built at its first step (:mod:`pipeline.view_loss`).
        """
        key = (id(target), target._version)
        if self._terms_key != key:
            self._terms = self._loss_terms(target)
            self._terms_key, self._terms_target = key, target  # a held target keeps its id unique
        rows, ref_terms = self._terms
        V = self.views
        if self.batched_ref:
            return view_loss(out.rgb, out.alpha, rows)
        loss = view_loss(out.rgb[:V], out.alpha[:V], rows)
        if ref_terms is not None:
            ref = render(self.model, self.ref_cam, self.bg, backend=self.backend, depth=False)
            loss = loss + view_loss(ref.rgb, ref.alpha, ref_terms)
        return loss

    def _loss_terms(self, target: torch.Tensor) -> tuple[ViewLossTerms, ViewLossTerms | None]:
        """The loss constants of the V refined views (plus the reference row or a separate reference render)."""
        V, g = self.views, self.g
        target = target.detach()
        alpha_lin, const = None, 0.0
        if g.bg_alpha_loss > 0 or g.fg_alpha_loss > 0:
            # Pale Gaussians against the white background barely move the RGB loss, in either
            # direction: white ghosts cost nothing where the view shows background, and a pale
            # object is matched as well by half-transparent Gaussians as by an opaque surface (which
            # marching cubes then misses). So the refined view, a photo on white, is also read as
            # a mask: coverage is pushed to 0 on its background pixels and to 1 on its object
            # pixels, those whose 3x3 neighbourhood is all object (an edge pixel partly covered
            # is object by colour, and pushing it opaque would fatten the silhouette: flat objects
            # seen edge-on are a few pixels thick).
            # bg_w * sum(alpha bg) / V + fg_w * sum((1 - alpha) fg) / V = sum(alpha C) + fg_w sum(fg) / V.
            bg = background(target, g.bg_threshold).to(target.dtype)
            fg = (
                1.0 - F.max_pool2d(bg, 3, stride=1, padding=1)
                if g.fg_alpha_loss > 0
                else torch.zeros_like(bg)
            )
            alpha_lin = (g.bg_alpha_loss * bg - g.fg_alpha_loss * fg) / V
            const = g.fg_alpha_loss * fg.sum() / V
        w_views = [self.lambda_target / V] * V
        if not self.use_ref:
            return view_loss_terms(target, w_views, alpha_lin, const=const), None
        ref_rgb, ref_mask = self.ref_rgb[None].to(target), self.ref_mask[None].to(target)
        if not self.batched_ref:
            views = view_loss_terms(target, w_views, alpha_lin, const=const)
            return views, view_loss_terms(
                ref_rgb, [self.ref_weight], mask=ref_mask, w_sq=[self.ref_mask_weight]
            )
        H, W = target.shape[-2:]
        if alpha_lin is None:
            alpha_lin = torch.zeros(V, 1, H, W, device=target.device, dtype=target.dtype)
        return (
            view_loss_terms(
                torch.cat([target, ref_rgb]),
                [*w_views, self.ref_weight],
                alpha_lin=torch.cat([alpha_lin, torch.zeros_like(ref_mask)]),
                mask=torch.cat([torch.zeros_like(alpha_lin), ref_mask]),
                w_sq=[0.0] * V + [self.ref_mask_weight],
                const=const,
            ),
            None,
        )

    def step(self, loss: torch.Tensor, out: RenderOutput) -> None:
        """xyz lr schedule, backward, Adam, densification statistics and events (docs/method.md#sir-loop)."""
        self.step_count += 1
        update_learning_rate(self.optimizer, self.step_count, **self.xyz_schedule)
        loss.backward()
        g = self.g
        in_window = g.density_start_iter <= self.step_count <= g.density_end_iter
        if in_window:
            # Statistics from the V novel views only (the reference row is not a sampled view).
            self.densifier.add_stats(out, views=self.views, last_view_only=g.densify_stats == "last")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if g.max_scale > 0:
            # No Gaussian may grow to cover the screen: render cost stays independent of the object.
            self.densifier.clamp_scales(g.max_scale)
        if in_window and self.step_count % g.densification_interval == 0:
            self.densifier.densify_and_prune(
                grad_thresh=g.densify_grad_threshold,
                min_opacity=g.min_opacity,
                extent=g.extent,
                percent_dense=g.percent_dense,
                max_screen_frac=g.max_screen_frac,
                max_scale=g.max_scale,
            )

    def finish(self) -> None:
        """The authors' final prune after training (opacity < 0.01 or too large)."""
        self.densifier.final_prune()
