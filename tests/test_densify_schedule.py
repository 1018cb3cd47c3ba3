"""Densification and the xyz learning rate through 320 optimiser steps of the stage-1 representation.

No CPU run of the real loop reaches step 100 (the first densification), so this drives
:class:`pipeline.gaussians.GaussianRepresentation.step` directly with hand-made render outputs:
``means2d`` is a leaf whose gradient (through ``loss = sum(w * means2d)``) is chosen per Gaussian and
per view, so the screen-gradient statistics and therefore every clone/split/prune count at steps
100, 200 and 300 can be computed by hand. Each Gaussian's behaviour is keyed by its red SH value,
which clone and split copy, so a Gaussian's descendants behave like it.

Hand-computed case (2 novel views + the reference row, 8x8 px: gradient unit = 4 px per NDC):
``A`` small, hot in both views -> cloned at every event; ``F`` small, hot only in view 0 (cloned with
all-view statistics, not with the authors' last-view ones); ``G`` small, hot only in the last view
(the reverse); ``B`` large (0.1 > 0.04), hot -> split into 2 at scale 0.1/1.6, again, then cloned
once small (0.039); ``C`` cold, opacity 0.008 (kept at densify, dropped by the final prune < 0.01);
``R`` cold in the views but hot in the reference row (which must not count), scale 0.2 (final
prune > 0.1); ``D`` opacity 0.001 and ``E`` scale 0.5 are pruned at step 100.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from core.cameras import orbit_cameras
from core.types import RenderOutput
from gs_renderer import GaussianModel
from gs_renderer.model import xyz_lr
from pipeline import load_config
from pipeline.gaussians import GaussianRepresentation
from pipeline.stage1 import gaussian_settings

pytestmark = pytest.mark.usefixtures("one_thread")
S = 8  # render size: gradient norms are scaled by S/2 = 4
# tag -> (count, max scale, opacity, grad norm in view 0, view 1, reference row)
KINDS = {
    "A": (2, 0.01, 0.5, 0.02, 0.02, 0.0),
    "F": (2, 0.01, 0.5, 0.03, 0.0, 0.0),
    "G": (1, 0.01, 0.5, 0.0, 0.015, 0.0),
    "B": (1, 0.1, 0.5, 0.02, 0.02, 0.0),
    "C": (2, 0.01, 0.008, 0.001, 0.001, 0.0),
    "R": (1, 0.2, 0.5, 0.0, 0.0, 1.0),
    "D": (1, 0.01, 0.001, 0.0, 0.0, 0.0),
    "E": (1, 0.5, 0.5, 0.0, 0.0, 0.0),
}
TAGS = list(KINDS)


def _model() -> GaussianModel:
    rows = [(i, k) for i, (tag, k) in enumerate(KINDS.items()) for _ in range(k[0])]
    n = len(rows)
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([k[1] for _, k in rows])
    opac = torch.tensor([k[2] for _, k in rows])
    sh0 = torch.zeros(n, 1, 3)
    sh0[:, 0, 0] = torch.tensor([float(i) for i, _ in rows])  # the tag, copied by clone and split
    return GaussianModel(
        means=torch.rand(n, 3, generator=g) - 0.5,
        scales=torch.log(scale)[:, None].repeat(1, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        opacities=torch.logit(opac),
        sh0=sh0,
    )


def _fake_step(rep: GaussianRepresentation) -> None:
    """One optimiser step whose means2d gradient norms are the KINDS table (in NDC-like units)."""
    m = rep.model
    tag = m.sh0.detach()[:, 0, 0].round().long()
    norms = torch.tensor([[k[3], k[4], k[5]] for k in KINDS.values()])[tag].T  # [3, N]
    w = torch.zeros(3, m.num_points, 2)
    w[..., 0] = norms / (S / 2)
    means2d = torch.zeros(3, m.num_points, 2, requires_grad=True)
    out = RenderOutput(
        rgb=torch.zeros(3, 3, S, S),
        alpha=torch.zeros(3, 1, S, S),
        means2d=means2d,
        radii=torch.ones(3, m.num_points, dtype=torch.int32),
    )
    rep.step((w * means2d).sum() + 0.0 * m.means.sum(), out)


def _run(stats: str, steps: int = 320) -> tuple[dict[int, dict], list[float], GaussianRepresentation]:
    # configs/image.yaml's schedule, without the scale cap and screen-size prune the defaults add
    # (the hand computation in the module docstring is the paper's densification)
    cfg = load_config(
        ["guidance=oracle", "device=cpu", "gaussians.max_scale=0", "gaussians.max_screen_frac=0"]
    )
    settings = replace(gaussian_settings(cfg), densify_stats=stats)
    ref_cam = orbit_cameras(0.0, 0.0, height=S)
    rep = GaussianRepresentation(_model(), settings, torch.ones(3, S, S), torch.ones(1, S, S), ref_cam)
    rep.begin_iteration(orbit_cameras([0.0, 0.0], [0.0, 180.0], height=S))
    events: dict[int, dict] = {}
    real = rep.densifier.densify_and_prune

    def record(**kw):
        counts = real(**kw)
        tags = rep.model.sh0.detach()[:, 0, 0].round().long().tolist()
        events[rep.step_count] = dict(counts, args=kw, tags=tags)
        return counts

    rep.densifier.densify_and_prune = record
    lrs = []
    for _ in range(steps):
        _fake_step(rep)
        lrs.append(next(g["lr"] for g in rep.optimizer.param_groups if g["name"] == "xyz"))
    return events, lrs, rep


def _counts(events: dict[int, dict]) -> dict[int, tuple[int, int, int, int, int]]:
    return {s: (e["before"], e["cloned"], e["split"], e["pruned"], e["after"]) for s, e in events.items()}


@pytest.fixture(scope="module")
def all_views():
    return _run("all")


def test_densify_counts_all_views(all_views):
    events, _, rep = all_views
    # (before, cloned, split, pruned, after); see the module docstring for the hand computation.
    assert _counts(events) == {
        100: (11, 4, 1, 2, 14),  # clone A2 F2, split B, prune D E
        200: (14, 8, 2, 0, 24),  # clone A4 F4, split B2 (scale 0.0625 > 0.04)
        300: (24, 20, 0, 0, 44),  # clone A8 F8 B4 (scale 0.039)
    }
    # Row order as the authors' (densify_and_clone appends, then densify_and_split appends the
    # children and drops the parents, then prune): kept A A F F G C C R, clones A A F F, children B B.
    assert events[100]["tags"] == [0, 0, 1, 1, 2, 4, 4, 5, 0, 0, 1, 1, 3, 3]
    assert events[100]["args"] == dict(
        grad_thresh=0.01,
        min_opacity=0.005,
        extent=4.0,
        percent_dense=0.01,
        max_screen_frac=0.0,
        max_scale=0.0,
    )
    tags = rep.model.sh0.detach()[:, 0, 0].round().long()
    assert torch.bincount(tags, minlength=len(TAGS)).tolist() == [16, 16, 1, 8, 2, 1, 0, 0]
    b = tags == TAGS.index("B")
    torch.testing.assert_close(rep.model.get_scales()[b], torch.full((8, 3), 0.1 / 1.6**2))
    # Final prune (after training): opacity < 0.01 (C) or max scale > 0.1 (R).
    rep.finish()
    assert rep.model.num_points == 44 - 3


def test_densify_counts_last_view(all_views):
    events, _, _ = _run("last")
    assert _counts(events) == {
        100: (11, 3, 1, 2, 13),  # clone A2 G1 (F is cold in the last view)
        200: (13, 6, 2, 0, 21),
        300: (21, 16, 0, 0, 37),  # clone A8 G4 B4
    }


def test_xyz_learning_rate_schedule(all_views):
    """lr(s) = 1e-2 * (2e-4 / 1e-2) ** (s / 500), held at 2e-4 after step 500 (spec 1.4)."""
    _, lrs, rep = all_views
    for s in (1, 50, 100, 200, 300, 320):
        assert lrs[s - 1] == pytest.approx(1e-2 * 0.02 ** (s / 500), rel=1e-9)
    assert lrs[0] == pytest.approx(9.9221e-3, rel=1e-4) and lrs[299] == pytest.approx(9.564e-4, rel=1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    others = {g["name"]: g["lr"] for g in rep.optimizer.param_groups if g["name"] != "xyz"}
    assert others == {"f_dc": 0.01, "opacity": 0.05, "scaling": 0.005, "rotation": 0.0005}  # SH degree 0


def test_xyz_learning_rate_end_of_range():
    assert xyz_lr(500) == pytest.approx(2e-4) and xyz_lr(700) == pytest.approx(2e-4)
    assert xyz_lr(250) == pytest.approx(math.sqrt(1e-2 * 2e-4))


def test_densify_stats_value_is_checked():
    from core.errors import UserError

    cfg = load_config(["guidance=oracle", "device=cpu"])
    with pytest.raises(UserError, match="densify_stats"):
        GaussianRepresentation(
            _model(),
            replace(gaussian_settings(cfg), densify_stats="first"),
            torch.ones(3, S, S),
            torch.ones(1, S, S),
            orbit_cameras(0.0, 0.0, height=S),
        )
