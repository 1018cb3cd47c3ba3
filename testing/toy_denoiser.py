"""A toy denoiser with no weights and no mesh: an analytic sphere plays a perfect diffusion model.

Its x0 at any camera is a ray-traced sphere (radius 0.5 at the origin, the size of a normalised
object) coloured by the oracle's procedural field, on white. Everything else (identity latents,
exact eps) is :class:`guidance.render_teacher.RenderTeacher`. It shows that a denoiser registered
from outside the package runs the pipeline: ``register(toy_spec())`` then ``guidance=toy_sphere``
(it needs no input image). It reads ``toy.image_size`` (else ``sir.render_size``) and
``cameras.{radius,fovy}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from core.cameras import DEFAULT_FOVY, Cameras
from guidance import registry
from guidance.models.oracle import color_field
from guidance.options import cfg_get
from guidance.registry import DenoiserSpec
from guidance.render_teacher import RenderTeacher

__all__ = ["SphereDenoiser", "toy_spec", "registered", "TOY_NAME"]

TOY_NAME = "toy_sphere"


class SphereDenoiser(RenderTeacher):
    """A sphere of ``sphere_radius`` at the origin, coloured by :func:`guidance.models.oracle.color_field`."""

    def __init__(self, image_size: int = 64, sphere_radius: float = 0.5, **kwargs: Any) -> None:
        """``kwargs``: ``device``, ``schedule``, ``radius``, ``fovy`` of :class:`RenderTeacher`."""
        super().__init__(image_size, **kwargs)
        self.sphere_radius = float(sphere_radius)

    @torch.no_grad()
    def render(self, cams: Cameras, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray-traced sphere at ``cams`` on white: (rgb float32 [B,3,S,S] in [0,1], alpha [B,1,S,S] in {0,1})."""
        S = self.image_size if size is None else int(size)
        cams = cams.resized(S).to(self.device)
        f = cams.focal
        c = (torch.arange(S, device=self.device, dtype=torch.float32) + 0.5 - S / 2) / f  # pixel centres
        v, u = torch.meshgrid(c, c, indexing="ij")
        d_cam = torch.stack([u, -v, -torch.ones_like(u)], dim=-1)  # OpenGL camera: +Y up, looks along -Z
        d = torch.nn.functional.normalize(torch.einsum("bij,hwj->bhwi", cams.c2w[:, :3, :3], d_cam), dim=-1)
        o = cams.campos()[:, None, None, :]  # [B,1,1,3]
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - self.sphere_radius**2)
        hit = disc > 0
        t = -b - disc.clamp_min(0).sqrt()  # nearer intersection
        col = color_field(o + t[..., None] * d)  # [B,S,S,3]
        rgb = torch.where(hit[..., None], col, torch.ones_like(col))
        return rgb.permute(0, 3, 1, 2).contiguous(), hit[:, None].float()


def _load(cfg: Any, device: torch.device) -> SphereDenoiser:
    size = cfg_get(cfg, "toy.image_size") or cfg_get(cfg, "sir.render_size", 64)
    return SphereDenoiser(
        int(size),
        device=device,
        radius=float(cfg_get(cfg, "cameras.radius", 2.0)),
        fovy=float(cfg_get(cfg, "cameras.fovy", DEFAULT_FOVY)),
    )


def toy_spec(name: str = TOY_NAME) -> DenoiserSpec:
    """The toy's registry entry (not registered on import: call ``guidance.register(toy_spec())``)."""
    return DenoiserSpec(
        name=name,
        section="toy",
        load=_load,
        needs_input=False,
        description="test toy: an analytic coloured sphere as a perfect denoiser",
    )


@contextlib.contextmanager
def registered(spec: DenoiserSpec) -> Iterator[DenoiserSpec]:
    """Register ``spec`` for the duration of the block, then restore what was registered under its name."""
    names = registry.names()  # also discovers the built-ins, so they cannot overwrite ``spec`` later
    previous = registry.get(spec.name) if spec.name in names else None
    registry.register(spec)
    try:
        yield spec
    finally:
        if previous is None:
            del registry._SPECS[spec.name]  # the public API has no unregister; tests only
        else:
            registry.register(previous)
