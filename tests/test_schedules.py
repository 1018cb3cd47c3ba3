"""The paper's SIR schedules (docs/method.md#stage1-schedules) reproduced verbatim, artefacts included."""

from __future__ import annotations

import pytest

from core.schedules import (
    batch_size_for_iteration,
    denoise_index,
    reconstruct_steps,
    t1_for_t2,
    t2_for_iteration,
)
from guidance.schedule import DDIMSchedule

SCHED = DDIMSchedule()  # Stable Zero123 / SD scheduler config: leading, steps_offset 1
GRID20 = SCHED.timesteps(20)
INV20 = SCHED.inverse_timesteps(20)

HEAD_T2 = [901, 851, 801, 751, 751, 701, 651, 651, 601, 551, 501, 501, 451, 401, 401, 351, 301, 301, 251, 201]
HEAD_T1 = [501, 501, 451, 451, 451, 401, 351, 351, 351, 301, 301, 301, 251, 201, 201, 201, 151, 151, 151, 101]
V1_T2 = [801, 751, 701, 701, 651, 651, 601, 551, 551, 501, 451, 451, 401, 401, 351, 301, 301, 251, 251, 201]
IMAGEDREAM_T2 = [801] + [701] * 7 + [601] * 8 + [501] * 7 + [401] * 7


def test_grids():
    assert list(range(951, 0, -50)) == GRID20
    assert list(range(1, 952, 50)) == INV20
    assert SCHED.timesteps(10) == list(range(901, 0, -100))
    assert SCHED.timesteps(50)[int(50 * 0.8)] == 181  # stage-2 refine start (docs/method.md#stage2)


def test_float_artefact():
    # 20 * (1 - 0.9) = 1.9999999999999996 -> index 1, not 2.
    assert denoise_index(0, 20, 20, 0.9, 0.2) == 1
    assert denoise_index(0, 20, 20, 0.8, 0.2) == 3


def test_t2_head_image_sai():
    assert [t2_for_iteration(k, 20, GRID20, 0.9, 0.2) for k in range(20)] == HEAD_T2


def test_t2_v1_image_sai():
    assert [t2_for_iteration(k, 20, GRID20, 0.8, 0.2) for k in range(20)] == V1_T2


def test_t2_imagedream():
    grid10 = SCHED.timesteps(10)
    assert [t2_for_iteration(k, 30, grid10, 0.8, 0.4) for k in range(30)] == IMAGEDREAM_T2


def test_t1_head():
    assert [t1_for_t2(t2, INV20, 0.6) for t2 in HEAD_T2] == HEAD_T1


def test_t1_inverse_ratio_one_is_t2():
    # inv_r = 1 makes t1 = t2 on the leading grid: pure noise-adding, no inversion.
    assert all(t1_for_t2(t2, INV20, 1.0) == t2 for t2 in HEAD_T2 + V1_T2)


def test_t1_v1_budget():
    # v1 paper schedule: inversion (t2 - t1)/50 calls per iteration sums to 87 (docs/method.md#nfe).
    t1 = [t1_for_t2(t2, INV20, 0.6) for t2 in V1_T2]
    assert sum((b - a) // 50 for a, b in zip(t1, V1_T2)) == 87
    assert 20 + sum(t2 // 50 + 1 for t2 in V1_T2) + 87 == 323


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("fixed", [15] * 21),
        ("linear", [int(k / 20 * 10 + 5) for k in range(21)]),
    ],
)
def test_reconstruct_steps_simple(schedule, expected):
    assert [reconstruct_steps(k, 20, schedule, 5, 15) for k in range(21)] == expected


def test_reconstruct_steps_cosines():
    up = [reconstruct_steps(k, 20, "cosine_up", 5, 15) for k in range(21)]
    down = [reconstruct_steps(k, 20, "cosine_down", 5, 15) for k in range(21)]
    updown = [reconstruct_steps(k, 20, "cosine_up_then_down", 5, 15) for k in range(21)]
    assert up[0] == 5 and up[-1] == 15 and up == sorted(up)
    assert down[0] == 15 and down[-1] == 5 and down == sorted(down, reverse=True)
    assert updown[0] == 5 and updown[10] == 15 and updown[-1] == 5
    assert up[10] == 10 and down[10] == 10
    # imagedream: cosine_up with min == max is constant 15.
    assert {reconstruct_steps(k, 30, "cosine_up", 15, 15) for k in range(31)} == {15}
    with pytest.raises(ValueError):
        reconstruct_steps(0, 20, "cosine", 5, 15)


def test_batch_size():
    assert {batch_size_for_iteration(k, 20, 6, 6) for k in range(21)} == {6}
    assert [batch_size_for_iteration(k, 20, 4, 8) for k in (0, 5, 10, 19, 20)] == [4, 5, 6, 7, 8]
