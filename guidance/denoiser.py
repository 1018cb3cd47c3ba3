"""The multi-view denoiser interface shared by Stable Zero123, ImageDream and the oracle.

A denoiser maps pixels to latents and back and predicts noise for a batch of views at one integer
timestep, with classifier-free guidance (CFG) as one batched network call. :func:`guidance.sir_step.refine`
is written only against this interface.

Randomness goes through a :class:`NoiseSource` so the draw order is fixed and replayable. The order
used by :func:`guidance.sir_step.refine` (and by nothing else) is:

1. ``encode``: one draw of the latent shape for the VAE posterior sample (skipped with ``mode``
   encoding and on the pure-noise init pass);
2. one draw for ``add_noise`` at t1, or for the pure-noise start on the init pass;
3. one draw per reverse DDIM step with ``eta > 0``, in step order (none when ``eta == 0``).

All draws are float32 ``[B, C, h, w]`` standard normal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from guidance.schedule import DDIMSchedule

__all__ = ["NoiseSource", "TorchNoise", "ListNoise", "Denoiser", "as_noise_source"]


@runtime_checkable
class NoiseSource(Protocol):
    """Where the sampler's standard-normal tensors come from."""

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """A float32 standard-normal tensor of ``shape`` on ``device``."""
        ...


class TorchNoise:
    """Draws from a ``torch.Generator`` (or the global RNG when None), on the generator's device."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Float32 standard normal of ``shape``, moved to ``device`` if the generator lives elsewhere."""
        if self.generator is None:
            return torch.randn(tuple(shape), device=device, dtype=torch.float32)
        x = torch.randn(
            tuple(shape), generator=self.generator, device=self.generator.device, dtype=torch.float32
        )
        return x.to(device, non_blocking=True)


class ListNoise:
    """Replays recorded tensors in order (to inject another implementation's noise); errors when exhausted."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self._tensors = list(tensors)
        self.used = 0

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """The next recorded tensor, checked against ``shape``, as float32 on ``device``."""
        if self.used >= len(self._tensors):
            raise IndexError(f"ListNoise exhausted after {self.used} draws (asked for {tuple(shape)})")
        x = self._tensors[self.used]
        self.used += 1
        if tuple(x.shape) != tuple(shape):
            raise ValueError(
                f"ListNoise draw {self.used - 1} has shape {tuple(x.shape)}, expected {tuple(shape)}"
            )
        return x.to(device=device, dtype=torch.float32)


def as_noise_source(noise: NoiseSource | torch.Generator | None) -> NoiseSource:
    """Accept a NoiseSource, a torch.Generator or None (global RNG)."""
    if noise is None or isinstance(noise, torch.Generator):
        return TorchNoise(noise)
    return noise


class Denoiser:
    """Base class: subclasses set the attributes in ``__init__`` and implement the methods.

    Attributes: ``image_size`` (pixels the model sees, square), ``latent_channels``,
    ``latent_size`` (latent height = width), ``views_per_group`` (1 for zero123, 4 for imagedream:
    batches must be multiples of it), ``schedule`` (:class:`DDIMSchedule`), ``device``, and the
    counters ``nfe`` (network calls), ``nfe_cfg`` / ``nfe_uncond`` (by kind) and ``nfe_rows``
    (batch rows that went through the network, the cost measure across batch sizes).
    """

    image_size: int
    latent_channels: int
    latent_size: int
    views_per_group: int = 1
    schedule: DDIMSchedule
    device: torch.device
    #: True when network calls replay CUDA graphs (the first calls of each new shape capture one).
    cuda_graphs: bool = False

    def __init__(self) -> None:
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the NFE counters."""
        self.nfe = 0
        self.nfe_cfg = 0
        self.nfe_uncond = 0
        self.nfe_rows = 0

    def _count(self, kind: str, rows: int) -> None:
        self.nfe += 1
        self.nfe_rows += rows
        if kind == "cfg":
            self.nfe_cfg += 1
        else:
            self.nfe_uncond += 1

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of the latents of ``batch`` views: ``(B, C, h, w)``."""
        return (batch, self.latent_channels, self.latent_size, self.latent_size)

    # ------------------------------------------------------------------ to implement
    def set_reference(self, rgb: torch.Tensor, elevation: float) -> None:
        """Compute the image conditioning once from ``rgb`` float ``[3,H,W]`` in [0,1] (on white)."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        """Pixels float ``[B,3,S,S]`` in [0,1] -> float32 latents ``[B,C,h,w]``.

        ``noise`` given: posterior mean + std * one draw from it (the authors' ``sample()``);
        None: the posterior mean.
        """
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Float32 latents ``[B,C,h,w]`` -> images float32 ``[B,3,S,S]`` in [0,1]."""
        raise NotImplementedError

    def prepare(self, cams: Any) -> Any:
        """Camera part of the conditioning for ``cams`` (:class:`core.cameras.Cameras`, B views)."""
        raise NotImplementedError

    def eps_cfg(self, x: torch.Tensor, t: int, cond: Any, scale: float) -> torch.Tensor:
        """CFG noise prediction ``eps_u + scale (eps_c - eps_u)`` float32 ``[B,C,h,w]``: one batched call."""
        raise NotImplementedError

    def eps_uncond(self, x: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """Unconditional noise prediction float32 ``[B,C,h,w]``: one call at batch B (no conditional half)."""
        raise NotImplementedError
