"""The denoiser registry: discovery of the built-ins, errors, registration from outside, lightness."""

from __future__ import annotations

import importlib
import math
import pkgutil
from pathlib import Path

import pytest
import torch

import guidance
import guidance.models
from core.cameras import orbit_cameras
from core.errors import UserError
from guidance import DenoiserSpec, load_denoiser, names, register
from guidance.denoiser import Denoiser
from guidance.models.oracle import color_field
from guidance.registry import get
from testing.toy_denoiser import SphereDenoiser, registered, toy_spec

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_are_discovered():
    assert {"zero123", "imagedream", "oracle"} <= set(names())
    assert names() == tuple(sorted(names()))
    assert get("oracle").needs_input is False and get("oracle").section == "oracle"
    assert get("zero123").needs_input and get("zero123").section == "model"
    assert get("imagedream").needs_input and get("imagedream").section == "model"
    # Every module of guidance.models registers the spec it exports, under its own name.
    for info in pkgutil.iter_modules(guidance.models.__path__):
        mod = importlib.import_module(f"guidance.models.{info.name}")
        assert get(mod.SPEC.name) is mod.SPEC


def test_every_model_module_is_declared_in_builtin():
    """The registry lists guidance.models.BUILTIN, never scans the package: a model module missing
    there (one that registers itself on import, the old way) would never be found in a fresh process."""
    from guidance.registry import LazyLoad

    modules = {info.name for info in pkgutil.iter_modules(guidance.models.__path__)}
    declared = {spec.name: spec for spec in guidance.models.BUILTIN}
    assert set(declared) == modules
    for name, spec in declared.items():
        assert spec.load == LazyLoad(f"guidance.models.{name}")
        assert callable(importlib.import_module(f"guidance.models.{name}").load)


def test_unknown_name_is_a_user_error_listing_the_names():
    with pytest.raises(UserError) as e:
        load_denoiser({"guidance": "sd"}, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "'sd'" in msg
    for name in names():
        assert name in msg


class _Toy(Denoiser):
    """A test-local denoiser: only what the registry needs to hand back."""

    def __init__(self, scale: float, device: torch.device):
        super().__init__()
        self.scale, self.device = scale, device


def _toy_spec(name: str, scale_key: str = "toy.scale") -> DenoiserSpec:
    from guidance.options import cfg_get

    return DenoiserSpec(
        name=name, section="toy", load=lambda cfg, dev: _Toy(float(cfg_get(cfg, scale_key)), dev)
    )


def test_registered_class_is_loaded_by_name():
    spec = _toy_spec("test_toy")
    with registered(spec):
        assert register(spec) is spec and "test_toy" in names()
        d = load_denoiser({"guidance": "test_toy", "toy": {"scale": 2.5}, "device": "cpu"})
        assert isinstance(d, _Toy) and d.scale == 2.5 and d.device == torch.device("cpu")
        # Re-registering a name replaces the entry.
        other = _toy_spec("test_toy", "toy.other")
        register(other)
        assert get("test_toy") is other
        assert load_denoiser({"guidance": "test_toy", "toy": {"other": 7}}, "cpu").scale == 7.0
    assert "test_toy" not in names()


def test_builtin_can_be_replaced_and_restored():
    original = get("oracle")
    spec = _toy_spec("oracle")
    with registered(spec):
        assert isinstance(load_denoiser({"guidance": "oracle", "toy": {"scale": 1}}, "cpu"), _Toy)
    assert get("oracle") is original


def test_import_guidance_is_light():
    """``import guidance`` and ``names()`` import neither diffusers nor transformers (fresh interpreter)."""
    from tests.fresh_python import imported_after

    code = (
        "import sys, guidance, guidance.registry\n"
        "assert 'guidance.models.zero123' not in sys.modules, 'models imported by import guidance'\n"
        "print(','.join(guidance.registry.names()))\n"
    )
    heavy, listed = imported_after(code, ("diffusers", "transformers"), timeout=120)
    assert {"zero123", "imagedream", "oracle"} <= set(listed.split(","))
    assert heavy == []


def test_toy_sphere_renders_the_analytic_sphere():
    """The reusable toy (testing/toy_denoiser.py): a disc of the projected sphere's size, the field's colours."""
    with registered(toy_spec()):
        d = load_denoiser({"guidance": "toy_sphere", "toy": {"image_size": 65}}, "cpu")
    assert isinstance(d, SphereDenoiser) and d.image_size == 65
    rgb, mask = d.reference_image(0.0, 65)
    assert rgb.shape == (3, 65, 65) and mask.shape == (1, 65, 65)
    # Radius 0.5 seen from distance 2: angular radius asin(1/4); its image radius in pixels:
    r_px = 65 / 2 * math.tan(math.asin(0.25)) / math.tan(math.radians(d.fovy) / 2)
    assert float(mask.sum()) == pytest.approx(math.pi * r_px**2, rel=0.03)
    # The centre ray hits the front pole (0, 0, 0.5); the background is white.
    torch.testing.assert_close(rgb[:, 32, 32], color_field(torch.tensor([0.0, 0.0, 0.5])), atol=1e-5, rtol=0)
    assert torch.equal(rgb[:, 0, 0], torch.ones(3))
    # Seen from the side (azimuth 90, on +x) the centre ray hits (0.5, 0, 0).
    rgb, _ = d.render(orbit_cameras(0.0, 90.0, radius=2.0, height=65))
    torch.testing.assert_close(
        rgb[0, :, 32, 32], color_field(torch.tensor([0.5, 0.0, 0.0])), atol=1e-5, rtol=0
    )


def test_a_model_registered_from_outside_runs_stage_1(tmp_path):
    """Adding a model needs its own module only: a toy registered at run time drives stage 1 end to end."""
    import json

    import main_gs
    from mesh_renderer import load_mesh
    from testing.toy_denoiser import registered, toy_spec

    with registered(toy_spec()):
        rc = main_gs.main(
            ["--config", "tests/data/oracle_tiny.yaml", "guidance=toy_sphere", f"outdir={tmp_path}"]
        )
    assert rc == 0
    report = json.loads((tmp_path / "toy_sphere_report.json").read_text())
    assert report["nfe"] > 0 and report["optimiser_steps"] > 0
    mesh = load_mesh(tmp_path / "toy_sphere_mesh.glb")
    radii = mesh.v.norm(dim=-1)
    assert len(mesh.f) > 0 and 0.3 < float(radii.median()) < 0.7  # the analytic sphere has radius 0.5
    assert "toy_sphere" not in __import__("guidance").names()  # the registry is restored afterwards
