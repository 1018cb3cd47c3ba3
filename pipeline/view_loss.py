"""Stage 1's image loss over a batch of rendered rows in one autograd node, its gradient in closed form.

Every term of the stage-1 loss (``pipeline.gaussians.GaussianRepresentation.loss``) is, per rendered
row r (a novel view or the reference view), one of

    w_r * sum|rgb_r - T_r|          L1 to the refined view / the input photo
    sum(alpha_r * C_r)              linear in alpha: the background / foreground alpha terms
    v_r * sum((alpha_r - M_r)^2)    squared error to the input mask

plus a constant. The gradient of each is known: ``w_r sign(rgb_r - T_r)`` and ``C_r + 2 v_r (alpha_r -
M_r)``. Written with torch ops the loss builds ~25 autograd nodes per step (slices of the batched
render, abs, sums, scalings) whose backward re-launches as many kernels; as one
``torch.autograd.Function`` it is ~15 kernels forward and 2 backward, a few hundred microseconds of
host time less per step of a host-bound loop (docs/method.md#sir-loop). The per-iteration constants
(T, w, C, M, v) depend only on the refined views, so :func:`view_loss_terms` builds them once per
iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ViewLossTerms", "view_loss", "view_loss_terms"]


@dataclass(frozen=True)
class ViewLossTerms:
    """The constants of the loss over R rows (tensors on the render's device)."""

    target: torch.Tensor  # [R,3,H,W] in [0,1]: refined views, then the input photo
    w_rgb: torch.Tensor  # [R,1,1,1]: weight of each row's L1
    alpha_lin: torch.Tensor  # [R,1,H,W]: C, the coefficient of alpha in the linear terms
    mask: torch.Tensor  # [R,1,H,W] in [0,1]: M (0 on rows without a mask term)
    w_sq2: torch.Tensor  # [R,1,1,1]: 2 v, twice each row's squared-error weight
    const: torch.Tensor  # []: the constant part of the loss


def view_loss_terms(
    target: torch.Tensor,
    w_rgb: list[float],
    alpha_lin: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    w_sq: list[float] | None = None,
    const: float | torch.Tensor = 0.0,
) -> ViewLossTerms:
    """Constants for :func:`view_loss`: ``target`` ``[R,3,H,W]``, per-row weights, C and M ``[R,1,H,W]``."""
    R, _, H, W = target.shape
    dev, dt = target.device, target.dtype

    def rows(values: list[float] | None) -> torch.Tensor:
        # Filled on the device (a torch.tensor of the values would be a host->device copy, which
        # waits for the GPU's queue to drain).
        v = [0.0] * R if values is None else [float(x) for x in values]
        if len(v) != R:
            raise ValueError(f"expected {R} row weights, got {len(v)}")
        t = torch.full((R, 1, 1, 1), v[0], device=dev, dtype=dt)
        for i, x in enumerate(v):
            if x != v[0]:
                t[i].fill_(x)
        return t

    zeros = torch.zeros(R, 1, H, W, device=dev, dtype=dt)
    return ViewLossTerms(
        target=target,
        w_rgb=rows(w_rgb),
        alpha_lin=zeros if alpha_lin is None else alpha_lin,
        mask=zeros if mask is None else mask,
        w_sq2=rows(None if w_sq is None else [2.0 * x for x in w_sq]),
        const=const.to(dt).reshape(())
        if torch.is_tensor(const)
        else torch.full((), const, device=dev, dtype=dt),
    )


class _ViewLoss(torch.autograd.Function):
    """Forward: the loss and both gradients (saved); backward: the saved gradients times grad_output."""

    @staticmethod
    def forward(ctx, rgb: torch.Tensor, alpha: torch.Tensor, terms: ViewLossTerms) -> torch.Tensor:
        d = rgb - terms.target
        g_rgb = d.sign() * terms.w_rgb  # d/d rgb of w |d| (0 where d == 0, as abs's gradient)
        e = alpha - terms.mask
        q = e * terms.w_sq2  # d/d alpha of v e^2
        g_alpha = q + terms.alpha_lin
        # sum w|d| = sum(g_rgb d); sum v e^2 = sum(q e) / 2
        loss = (g_rgb * d).sum() + (alpha * terms.alpha_lin).sum() + 0.5 * (q * e).sum() + terms.const
        ctx.save_for_backward(g_rgb, g_alpha)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g_rgb, g_alpha = ctx.saved_tensors
        return g_rgb * grad, g_alpha * grad, None


def view_loss(rgb: torch.Tensor, alpha: torch.Tensor, terms: ViewLossTerms) -> torch.Tensor:
    """The scalar loss of rows ``rgb`` ``[R,3,H,W]`` / ``alpha`` ``[R,1,H,W]`` (see the module docstring)."""
    return _ViewLoss.apply(rgb, alpha, terms)
