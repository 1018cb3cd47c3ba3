"""DDIM timestep grids, the alpha-bar table and the DDIM / inverse-DDIM updates, built once.

Semantics are diffusers' ``DDIMScheduler`` and ``DDIMInverseScheduler`` (read from diffusers 0.25
and 0.42, which agree on everything used here):

* betas: ``linear`` = linspace(b0, b1, T); ``scaled_linear`` = linspace(sqrt b0, sqrt b1, T)^2,
  both in float32; ``alphas_cumprod = cumprod(1 - betas)`` in float32.
* ``final_alpha_cumprod`` (used when a step targets t < 0) is 1.0 if ``set_alpha_to_one`` else
  ``alphas_cumprod[0]``; the inverse scheduler's ``initial_alpha_cumprod`` is the same value.
* grids: ``leading`` = arange(n) * (T // n) + steps_offset, ``trailing`` = round(arange(T, 0, -T/n)) - 1,
  ``linspace`` = round(linspace(0, T-1, n)); forward grids descend, inverse grids ascend.
* forward step at t goes to ``t - T // n``; the inverse step *to* ``t_next`` starts from
  ``min(t_next - T // n, T - 1)`` (its source alpha), whatever timestep the model was evaluated at.

Timesteps are Python ints and the per-step coefficients Python floats, so a sampler loop built on
this class never reads a device value back to the host. Latent arithmetic is done in the dtype of
the tensors passed in (fp32 in :mod:`guidance.sir_step`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DDIMSchedule", "STABLE_DIFFUSION_DDIM_CONFIG"]

#: The scheduler config of Stable Zero123, ImageDream and MicroDreamer's scheduler_config.json
#: (docs/method.md#ckpt-scheduler).
STABLE_DIFFUSION_DDIM_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


class DDIMSchedule:
    """Alpha-bar table, timestep grids and DDIM updates from a diffusers scheduler config dict."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        cfg = dict(STABLE_DIFFUSION_DDIM_CONFIG)
        cfg.update(config or {})
        self.config = cfg
        self.num_train_timesteps = int(cfg["num_train_timesteps"])
        self.steps_offset = int(cfg.get("steps_offset", 0))
        self.timestep_spacing = str(cfg.get("timestep_spacing", "leading"))
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"only epsilon prediction is supported, got {cfg['prediction_type']!r}")
        if cfg.get("clip_sample", False) or cfg.get("thresholding", False):
            # Both models we load use neither; supporting them would add per-step reductions.
            raise ValueError("clip_sample / thresholding schedulers are not supported")
        if cfg.get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr schedulers are not supported")
        T = self.num_train_timesteps
        b0, b1 = float(cfg["beta_start"]), float(cfg["beta_end"])
        if cfg.get("trained_betas") is not None:
            betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
        elif cfg["beta_schedule"] == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float32)
        elif cfg["beta_schedule"] == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
        else:
            raise ValueError(f"unsupported beta_schedule {cfg['beta_schedule']!r}")
        #: float32 ``[T]`` on the CPU, bit-identical to diffusers' table.
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # Python floats of the float32 values: scalar maths in the loop without device reads.
        self._ab: list[float] = self.alphas_cumprod.tolist()
        self.final_alpha_cumprod = 1.0 if cfg.get("set_alpha_to_one", True) else self._ab[0]

    @classmethod
    def from_file(cls, path: str | Path) -> "DDIMSchedule":
        """Build from a ``scheduler_config.json``."""
        return cls(json.loads(Path(path).read_text()))

    # ----------------------------------------------------------------- grids
    def step_ratio(self, num_steps: int) -> int:
        """``T // n``: the distance diffusers uses between a timestep and its neighbour."""
        return self.num_train_timesteps // num_steps

    def timesteps(self, num_steps: int) -> list[int]:
        """Descending forward grid of ``num_steps`` timesteps (``DDIMScheduler.set_timesteps``)."""
        T = self.num_train_timesteps
        if not 0 < num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        if self.timestep_spacing == "leading":
            ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].astype(
                np.int64
            ) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
        elif self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"unsupported timestep_spacing {self.timestep_spacing!r}")
        return [int(t) for t in ts]

    def inverse_timesteps(self, num_steps: int) -> list[int]:
        """Ascending inverse grid (``DDIMInverseScheduler.set_timesteps``).

        For ``leading`` and ``trailing`` this is exactly the forward grid reversed; diffusers' inverse
        scheduler has no ``linspace``, for which we also use the reversed forward grid.
        """
        return self.timesteps(num_steps)[::-1]

    def prev_timestep(self, t: int, num_steps: int) -> int:
        """Where a forward DDIM step from ``t`` lands on a grid of ``num_steps`` (may be < 0)."""
        return t - self.step_ratio(num_steps)

    def inverse_source(self, t_next: int, num_steps: int) -> int:
        """The timestep whose alpha an inverse step *to* ``t_next`` starts from (may be < 0)."""
        return min(t_next - self.step_ratio(num_steps), self.num_train_timesteps - 1)

    # ----------------------------------------------------------------- alphas
    def alpha_bar(self, t: int) -> float:
        """alpha-bar at integer ``t`` as a Python float; ``t < 0`` gives the final alpha."""
        return self._ab[t] if t >= 0 else self.final_alpha_cumprod

    # ----------------------------------------------------------------- updates
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """q(x_t | x_0): ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise`` (same shape and dtype as ``x0``)."""
        ab = self._ab[t]
        return x0 * math.sqrt(ab) + noise * math.sqrt(1.0 - ab)

    def ddim_step(
        self,
        eps: torch.Tensor,
        t: int,
        t_prev: int,
        x: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DDIM update x_t -> x_{t_prev} (``DDIMScheduler.step``, epsilon, no clipping).

        ``sigma = eta * sqrt((1-ab_prev)/(1-ab_t) * (1 - ab_t/ab_prev))``; ``noise`` (standard normal,
        shape of ``x``) is required when ``eta > 0``. Fused as ``a*x + b*eps (+ sigma*noise)``.
        """
        ab_t = self.alpha_bar(t)
        ab_p = self.alpha_bar(t_prev)
        var = (1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p)
        sigma = eta * math.sqrt(max(var, 0.0))
        # x0 = (x - sqrt(1-ab_t) eps) / sqrt(ab_t);  x_prev = sqrt(ab_p) x0 + sqrt(1-ab_p-sigma^2) eps
        c_x = math.sqrt(ab_p / ab_t)
        c_eps = math.sqrt(max(1.0 - ab_p - sigma * sigma, 0.0)) - math.sqrt(ab_p) * math.sqrt(
            1.0 - ab_t
        ) / math.sqrt(ab_t)
        out = torch.add(x * c_x, eps, alpha=c_eps)
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs a noise tensor")
            out = out.add_(noise, alpha=sigma)
        return out

    def inverse_step(self, eps: torch.Tensor, t_src: int, t_next: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic inverse-DDIM update x_{t_src} -> x_{t_next} (``DDIMInverseScheduler.step``).

        diffusers' semantics: ``t_src = inverse_source(t_next, n)``; alpha of ``t_src < 0`` is the
        initial (= final) alpha. ``eps`` is the model's prediction at the caller's timestep.
        """
        ab_s = self.alpha_bar(t_src)
        ab_n = self._ab[t_next]
        c_x = math.sqrt(ab_n / ab_s)
        c_eps = math.sqrt(1.0 - ab_n) - math.sqrt(ab_n) * math.sqrt(1.0 - ab_s) / math.sqrt(ab_s)
        return torch.add(x * c_x, eps, alpha=c_eps)

    def predict_x0(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """x0 estimate ``(x - sqrt(1-ab_t) eps) / sqrt(ab_t)``."""
        ab = self._ab[t]
        return (x - eps * math.sqrt(1.0 - ab)) / math.sqrt(ab)
