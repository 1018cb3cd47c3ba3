"""The SIR schedules of the paper (docs/method.md#stage1-schedules): t2 per iteration, t1 from t2, steps per iteration.

Everything here is pure Python on ints and floats: the results index timestep grids that the
denoiser's :class:`guidance.schedule.DDIMSchedule` computes once, and they never touch a device.

The arithmetic deliberately reproduces the authors' code, artefacts included:

* t2 index: ``int(k / total * (end - start) + start)`` with ``start = n * (1 - t_start)`` in float64,
  so ``20 * (1 - 0.9) = 1.9999999999999996`` truncates to 1 (HEAD starts at 901, not 851).
* t1 index: ``long(t2 / 1000 * n * inverse_ratio)`` where ``t2`` was a torch int64 scalar, so the
  division ran in **float32**; we evaluate it in float32 too and truncate toward zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "denoise_index",
    "t2_for_iteration",
    "t1_for_t2",
    "reconstruct_steps",
    "batch_size_for_iteration",
    "RECONSTRUCT_SCHEDULES",
]

RECONSTRUCT_SCHEDULES = ("fixed", "cosine_up", "cosine_down", "linear", "cosine_up_then_down")


def denoise_index(k: int, total: int, num_steps: int, t_start: float, t_end: float) -> int:
    """Index into the descending DDIM grid of ``num_steps`` for SIR iteration ``k`` of ``total``.

    ``total`` is the number of SIR iterations after the init pass (``total_steps - 1``, 20 in the
    paper). Float64 arithmetic and truncation exactly as the authors' ``get_denoise_schedule``.
    """
    start = num_steps * (1 - t_start)
    end = num_steps * (1 - t_end)
    return int((k / total) * (end - start) + start)


def t2_for_iteration(k: int, total: int, timesteps: Sequence[int], t_start: float, t_end: float) -> int:
    """t2 (Python int) for SIR iteration ``k``: ``timesteps[denoise_index(...)]``.

    ``timesteps``: the descending forward DDIM grid (e.g. ``[951, 901, ..., 1]`` for 20 steps).
    The init pass evaluates this at k=0 but then starts from pure noise (docs/method.md#stage1-schedules).
    """
    return int(timesteps[denoise_index(k, total, len(timesteps), t_start, t_end)])


def t1_for_t2(
    t2: int,
    inverse_timesteps: Sequence[int],
    inverse_ratio: float,
    num_train_timesteps: int = 1000,
) -> int:
    """t1 (Python int) for a t2: ``inverse_timesteps[trunc(t2/T * n * inverse_ratio)]`` in float32.

    ``inverse_timesteps``: the ascending inverse grid (e.g. ``[1, 51, ..., 951]``), ``n`` its length.
    float32 because the authors divided a torch int64 scalar, which yields float32.
    """
    n = len(inverse_timesteps)
    x = np.float32(t2) / np.float32(num_train_timesteps)
    x = np.float32(x * np.float32(n))
    x = np.float32(x * np.float32(inverse_ratio))
    idx = int(x)  # truncation toward zero, like torch.tensor(..., dtype=long)
    return int(inverse_timesteps[idx])


def reconstruct_steps(k: int, total: int, schedule: str, steps_min: int, steps_max: int) -> int:
    """Reconstruction (optimiser) steps for SIR iteration ``k`` of ``total`` (docs/method.md#stage1-schedules).

    ``schedule``: ``fixed`` (always ``steps_max``), ``cosine_up``, ``cosine_down``, ``linear`` or
    ``cosine_up_then_down``, each between ``steps_min`` and ``steps_max``, truncated to int.
    """
    f = k / total
    span = steps_max - steps_min
    if schedule == "cosine_up":
        steps = (-math.cos(f * math.pi) + 1) / 2 * span + steps_min
    elif schedule == "cosine_down":
        steps = (math.cos(f * math.pi) + 1) / 2 * span + steps_min
    elif schedule == "linear":
        steps = f * span + steps_min
    elif schedule == "cosine_up_then_down":
        steps = (-math.cos(f * 2 * math.pi) + 1) / 2 * span + steps_min
    elif schedule == "fixed":
        steps = steps_max
    else:
        # The authors silently fall back to steps_max; an unknown name here is a config typo.
        raise ValueError(f"unknown steps_schedule {schedule!r}; expected one of {RECONSTRUCT_SCHEDULES}")
    return int(steps)


def batch_size_for_iteration(k: int, total: int, batch_min: int, batch_max: int) -> int:
    """Number of views for SIR iteration ``k``: linear from ``batch_min`` to ``batch_max``, truncated."""
    return int(k / total * (batch_max - batch_min) + batch_min)
