"""core.adam.Adam: bit-identical to torch.optim.Adam(fused=True), state through densification, no torch._dynamo."""

import pytest
import torch

from core.adam import Adam
from core.cameras import orbit_cameras
from gs_renderer import GaussianModel, render
from gs_renderer.densify import replace_points
from gs_renderer.model import PARAM_GROUPS, update_learning_rate
from tests.fresh_python import imported_after


def _torch_twin(opt: Adam, params: dict[torch.Tensor, torch.Tensor]) -> torch.optim.Adam:
    """torch.optim.Adam(fused=True) with ``opt``'s groups (hyper-parameters, names) on the twin tensors."""
    groups = [{**g, "params": [params[p] for p in g["params"]]} for g in opt.param_groups]
    return torch.optim.Adam(groups, fused=True)


def _assert_same(ours: Adam, ref: torch.optim.Adam, where: str) -> None:
    """Every parameter, exp_avg, exp_avg_sq and step equal bit for bit (torch.equal)."""
    for ga, gb in zip(ours.param_groups, ref.param_groups, strict=True):
        assert ga["lr"] == gb["lr"], where
        for a, b in zip(ga["params"], gb["params"], strict=True):
            assert torch.equal(a, b), f"{where}: {ga.get('name')} params differ"
            sa, sb = ours.state.get(a, {}), ref.state.get(b, {})
            assert sa.keys() == sb.keys(), where
            for key in sa:
                assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, (where, key)
                assert torch.equal(sa[key], sb[key]), f"{where}: {ga.get('name')} {key} differs"


def _model() -> GaussianModel:
    return GaussianModel.init_ball(48, seed=3)


def _render_loss(m: GaussianModel, extra: torch.Tensor | None = None) -> torch.Tensor:
    """An L1 photometric loss of two 16 px views against a fixed target (real, uneven gradients)."""
    cams = orbit_cameras([0, -20], [0, 120], radius=2.0, height=16)
    out = render(m, cams, torch.ones(3), backend="torch")
    target = torch.linspace(0, 1, out.rgb.numel()).reshape(out.rgb.shape)
    loss = (out.rgb - target).abs().mean() + 0.1 * (out.alpha - 0.5).square().mean()
    if extra is not None:
        loss = loss + extra.sin().sum().float()
    return loss


def _copy_grads(src: dict[torch.Tensor, torch.Tensor]) -> None:
    """Give every twin tensor the same gradient as its original (both sides then step on equal inputs)."""
    for a, b in src.items():
        b.grad = None if a.grad is None else a.grad.clone()


def test_steps_equal_torch_fused_adam_bit_for_bit():
    m = _model()
    # A float64 group with its own betas and weight decay exercises every argument we pass on.
    extra = torch.linspace(-1, 1, 7, dtype=torch.float64).requires_grad_(True)
    extra_group = {"params": [extra], "lr": 0.03, "betas": (0.8, 0.95), "weight_decay": 0.1, "name": "extra"}
    opt = Adam([*m.make_optimizer().param_groups, extra_group], lr=0.0, eps=1e-15)
    twins = {p: p.detach().clone().requires_grad_(True) for g in opt.param_groups for p in g["params"]}
    ref = _torch_twin(opt, twins)
    for step in range(6):
        update_learning_rate(opt, 40 * step)  # the xyz lr changes every step
        update_learning_rate(ref, 40 * step)
        next(g for g in opt.param_groups if g["name"] == "opacity")["lr"] = 0.05 / (step + 1)
        next(g for g in ref.param_groups if g["name"] == "opacity")["lr"] = 0.05 / (step + 1)
        _render_loss(m, extra).backward()
        if step == 2:  # a parameter without a gradient is skipped (its step count stays behind)
            m.sh0.grad = None
        _copy_grads(twins)
        opt.step()
        ref.step()
        _assert_same(opt, ref, f"step {step}")
        opt.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
    assert float(opt.state[m.means]["step"]) == 6 and float(opt.state[m.sh0]["step"]) == 5
    assert all(p.grad is None for g in opt.param_groups for p in g["params"])
    # The parameters did move, by Adam-sized steps (|update| <= lr per step at most about).
    start = _model().means.detach()
    moved = (m.means.detach() - start).abs().max()
    assert 1e-3 < float(moved) < 6 * 1e-2


def test_plain_tensor_list_with_defaults_equals_torch():
    """The texture optimiser's form: ``Adam([raw], lr=0.2)`` (betas 0.9/0.999, eps 1e-8)."""
    raw = torch.linspace(-3, 3, 5 * 4 * 3).reshape(5, 4, 3).requires_grad_(True)
    twin = raw.detach().clone().requires_grad_(True)
    opt, ref = Adam([raw], lr=0.2), torch.optim.Adam([twin], lr=0.2, fused=True)
    target = torch.rand(5, 4, 3, generator=torch.Generator().manual_seed(0))
    for step in range(4):
        torch.nn.functional.mse_loss(torch.sigmoid(raw), target).backward()
        _copy_grads({raw: twin})
        opt.step()
        ref.step()
        _assert_same(opt, ref, f"step {step}")
        opt.zero_grad(set_to_none=False)  # zeroed in place, as torch's set_to_none=False
        assert raw.grad is not None and float(raw.grad.abs().sum()) == 0
        ref.zero_grad()


def _twins(m: GaussianModel, twin_model: GaussianModel) -> dict[torch.Tensor, torch.Tensor]:
    """Each optimised tensor of ``m`` -> the same attribute of ``twin_model``."""
    attrs = [a for a in PARAM_GROUPS.values() if getattr(m, a).numel()]
    return {getattr(m, a): getattr(twin_model, a) for a in attrs}


def test_state_survives_densify_like_torch():
    m = _model()
    opt = m.make_optimizer()
    twin_model = _model()
    ref = _torch_twin(opt, _twins(m, twin_model))
    for step in range(3):
        _render_loss(m).backward()
        _copy_grads(_twins(m, twin_model))
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
        if step == 1:  # prune every third point, append 5 copies of the first points (zero state)
            keep = torch.arange(m.num_points) % 3 != 0
            new = {name: t.detach()[:5] for name, t in m.parameters().items()}
            replace_points(m, opt, keep, new)
            replace_points(twin_model, ref, keep, new)
            assert m.num_points == 32 + 5
            st = opt.state[m.means]
            assert float(st["exp_avg"][-5:].abs().sum()) == 0 and float(st["exp_avg"][:-5].abs().sum()) > 0
        _assert_same(opt, ref, f"step {step}")
    assert float(opt.state[m.means]["step"]) == 3


def test_invalid_settings_are_refused():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError):
        Adam([])
    with pytest.raises(TypeError):
        Adam(p)
    with pytest.raises(ValueError):
        Adam([p], lr=-1.0)
    with pytest.raises(ValueError):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError):
        Adam([torch.zeros(3, dtype=torch.long)])


STEP_ONCE = """
import torch
from gs_renderer.model import GaussianModel
m = GaussianModel.init_ball(32, seed=0)
opt = {make}
sum(t.square().sum() for t in m.parameters().values()).backward()
opt.step()
opt.zero_grad(set_to_none=True)
print(float(opt.state[m.means]["step"]))
"""


def test_a_gaussian_step_does_not_import_dynamo():
    """Building the model, its optimiser, one step and zero_grad leave torch._dynamo unimported (fresh
    interpreter); torch.optim.Adam doing the same imports it, so the probe does see it."""
    heavy, out = imported_after(STEP_ONCE.format(make="m.make_optimizer()"), ("torch._dynamo",))
    assert heavy == [] and out == "1.0"
    make = "torch.optim.Adam([p for p in m.parameters().values() if p.numel()], fused=True)"
    heavy, out = imported_after(STEP_ONCE.format(make=make), ("torch._dynamo",))
    assert heavy == ["torch._dynamo"] and out == "1.0"
