"""ImageDream backend: full-size key set, tiny model through the real loader, CFG layout, cameras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cameras import orbit_cameras
from guidance.models.imagedream import FRAMES, ImageDreamDenoiser, imagedream_embedding
from guidance.mv_unet import MultiViewUNetModel
from testing.random_imagedream import UNET_CONFIG, cached_tiny_imagedream

pytestmark = pytest.mark.usefixtures("one_thread_module")

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "imagedream_unet_keys.txt"


def _expected_keys() -> dict[str, tuple[int, ...]]:
    """Parse ``key [d0, d1, ...]`` lines of the reference key list."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        out[key] = tuple(json.loads(shape))
    return out


@pytest.mark.skipif(not KEYS_FILE.is_file(), reason="shared/reference/imagedream_unet_keys.txt not present")
def test_full_size_unet_matches_checkpoint_keys():
    """The real config, built on the meta device, has exactly the 773 checkpoint keys and shapes."""
    expected = _expected_keys()
    assert len(expected) == 773
    # The Hub config (docs/method.md#ckpt-imagedream) incl. the key of its first upload that the class must tolerate.
    hub = dict(
        UNET_CONFIG, _class_name="MultiViewUNetModel", _diffusers_version="0.25.0", use_checkpoint=False
    )
    with torch.device("meta"):
        unet = MultiViewUNetModel.from_config(hub)
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert sum(v.numel() for v in unet.parameters()) == 941_672_900


@pytest.fixture(scope="module")
def tiny() -> ImageDreamDenoiser:
    """A tiny random ImageDream saved in the Hub layout and loaded by the real loader (CPU, fp32)."""
    folder = cached_tiny_imagedream(seed=0)
    den = ImageDreamDenoiser(folder, device="cpu", dtype="fp32", prompt="a cat")
    gen = torch.Generator().manual_seed(0)
    den.set_reference(torch.rand(3, 80, 80, generator=gen), elevation=0.0)
    return den


def test_tiny_checkpoint_consumed_exactly(tiny):
    """Every tensor of the saved unet file is a parameter of the loaded model and vice versa."""
    from safetensors.torch import load_file

    saved = load_file(str(tiny.root / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(tiny.unet.state_dict())
    for k, v in tiny.unet.state_dict().items():
        assert torch.equal(saved[k], v), k
    # Same structure as the full model: the ImageDream-only parts are present.
    assert any(k.endswith("attn2.to_k_ip.weight") for k in saved)
    assert any(k.startswith("image_embed.layers.") for k in saved)
    index = json.loads((tiny.root / "model_index.json").read_text())
    assert index["unet"] == ["mv_unet", "MultiViewUNetModel"]


def _cams(n: int, height: int = 64, azim: list[float] | None = None):
    """n cameras, evenly spaced in azimuth unless ``azim`` is given; each with its own elevation."""
    azim = [float(a) for a in range(-180, 180, 360 // n)][:n] if azim is None else azim
    return orbit_cameras([-5.0 + i for i in range(n)], azim, radius=2.5, height=height)


def test_camera_layout_five_rows_zero_last():
    """Per group: the 4 views' ImageDream vectors, then a zero 16-vector for the reference frame."""
    cams = _cams(8)

    class _Stub:  # camera_vectors only needs the device
        device = torch.device("cpu")

    cam = ImageDreamDenoiser.camera_vectors(_Stub(), cams).view(2, FRAMES, 16)
    ref = imagedream_embedding(cams).view(2, 4, 16)
    assert torch.equal(cam[:, :4], ref)
    assert torch.count_nonzero(cam[:, 4]) == 0
    # Unit translation, row-major flattening (translation at 3, 7, 11; last row 0 0 0 1).
    t = cam[:, :4, [3, 7, 11]]
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 4))
    torch.testing.assert_close(cam[:, :4, 12:], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(2, 4, 4))
    with pytest.raises(ValueError):
        ImageDreamDenoiser.camera_vectors(_Stub(), _cams(6))


def test_cfg_layout_and_groups(tiny):
    """[uncond; cond] with a zero-camera reference frame; scale 1 = cond half, 0 = uncond, groups independent."""
    den = tiny
    assert (den.image_size, den.latent_size, den.views_per_group) == (64, 8, 4)
    cams = _cams(8, azim=[0.0, 90.0, 180.0, 270.0, 30.0, 120.0, 210.0, 300.0])  # two consecutive groups
    cond = den.prepare(cams)
    G, N = 2, 2 * FRAMES
    assert (
        cond.groups == G
        and cond.order is None
        and cond.camera.shape == (2 * N, 16)
        and cond.ip_img.shape == (2 * G, 4, 8, 8)
    )
    assert torch.count_nonzero(cond.ip_img[:G]) == 0 and torch.equal(
        cond.ip_img[G:], den.ref_latent.expand(G, -1, -1, -1)
    )
    assert torch.equal(cond.camera[:N], cond.camera[N:])
    text_u, text_c = den.encode_text([den.negative_prompt, "a cat"])
    torch.testing.assert_close(cond.context[0, :77], text_u)
    torch.testing.assert_close(cond.context[N, :77], text_c)

    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x_before = x.clone()
    den.reset_counters()
    e2 = den.eps_cfg(x, 500, cond, 2.0)
    e1 = den.eps_cfg(x, 500, cond, 1.0)
    e0 = den.eps_cfg(x, 500, cond, 0.0)
    eu = den.eps_uncond(x, 500, cond)
    assert torch.equal(x, x_before)
    assert e2.shape == (8, 4, 8, 8) and e2.dtype == torch.float32 and torch.isfinite(e2).all()
    assert (den.nfe, den.nfe_cfg, den.nfe_uncond, den.nfe_rows) == (4, 3, 1, 3 * 2 * N + N)
    # Tolerances: batch 5G vs 10G changes CPU kernel blocking, hence float32 rounding (~1e-5 here).
    torch.testing.assert_close(e0, eu, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(e2, eu + 2.0 * (e1 - eu), atol=1e-5, rtol=1e-5)
    assert (e1 - eu).abs().max() > 1e-3  # the conditioning matters

    # The cond half equals a direct UNet call with the reference image, prompt and cameras.
    x5 = torch.cat([x.view(G, 4, 4, 8, 8), torch.zeros(G, 1, 4, 8, 8)], 1).view(N, 4, 8, 8)
    direct = den.unet(
        x5,
        torch.full((N,), 500.0),
        cond.context[N:, :77],
        camera=cond.camera[N:],
        num_frames=FRAMES,
        ip_tokens=cond.context[N:, 77:],
        ip_img=cond.ip_img[G:],
    )
    torch.testing.assert_close(
        e1, direct.view(G, FRAMES, 4, 8, 8)[:, :4].reshape(8, 4, 8, 8), atol=2e-4, rtol=1e-4
    )

    # Two groups in one call = each group alone (the joint attention stays inside a group).
    e_first = den.eps_cfg(x[:4], 500, den.prepare(cams[:4]), 2.0)
    e_second = den.eps_cfg(x[4:], 500, den.prepare(cams[4:]), 2.0)
    torch.testing.assert_close(torch.cat([e_first, e_second]), e2, atol=5e-4, rtol=1e-4)


def test_refine_tiny(tiny):
    """One SIR refine call on the tiny model: right shapes, finite images in [0,1]."""
    from guidance.sir_step import refine

    den = tiny
    imgs = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    out = refine(
        den,
        imgs,
        _cams(4),
        t1=200,
        t2=600,
        eta=1.0,
        cfg_scale=2.0,
        num_steps=10,
        noise=torch.Generator().manual_seed(3),
    )
    assert out.images.shape == (4, 3, 64, 64)
    assert torch.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1
    assert out.cfg_calls >= 1


def test_unet_loading_is_strict(tiny, tmp_path):
    """A unet file with a missing, an extra or a mis-shaped tensor is refused with a one-line UserError."""
    import shutil

    from safetensors.torch import load_file, save_file

    from core.errors import UserError
    from guidance.models.imagedream import load_mv_unet

    folder = tmp_path / "unet"
    shutil.copytree(tiny.root / "unet", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    good = load_file(str(weights))
    bad_sets = [
        {k: v for k, v in good.items() if k != "image_embed.latents"},
        dict(good, **{"extra.weight": torch.zeros(3)}),
        dict(good, **{"out.2.bias": torch.zeros(5)}),
    ]
    for bad in bad_sets:
        save_file(bad, str(weights))
        with pytest.raises(UserError):
            load_mv_unet(folder, torch.float32)


def test_interleaved_groups(tiny):
    """8 views 45 degrees apart form the groups {0,2,4,6} and {1,3,5,7} (90 degrees apart); results come back in order."""
    den = tiny
    cams = _cams(8)
    cond = den.prepare(cams)
    assert cond.order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    e = den.eps_cfg(x, 300, cond, 2.0)
    eu = den.eps_uncond(x, 300, cond)
    for idx in ([0, 2, 4, 6], [1, 3, 5, 7]):
        sub = den.prepare(cams[torch.tensor(idx)])
        assert sub.order is None
        torch.testing.assert_close(e[idx], den.eps_cfg(x[idx], 300, sub, 2.0), atol=5e-4, rtol=1e-4)
        torch.testing.assert_close(eu[idx], den.eps_uncond(x[idx], 300, sub), atol=5e-4, rtol=1e-4)


def test_imagedream_embedding_known_values():
    # Front camera (azimuth 0, elevation 0, radius 2): OpenGL pose [I | (0,0,2)] moved to a z-up
    # world: rows (x, y, z) -> (x, -z, y), translation normalised.
    emb = imagedream_embedding(orbit_cameras(0.0, 0.0, radius=2.0))
    expected = torch.tensor([1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1], dtype=torch.float32)
    assert emb.shape == (1, 16)
    assert torch.allclose(emb[0], expected, atol=1e-4)
    # Azimuth 90 (ImageDream's reference view): camera on +x, translation (1, 0, 0) after the flip.
    emb = imagedream_embedding(orbit_cameras(0.0, 90.0, radius=2.5)).reshape(4, 4)
    assert torch.allclose(emb[:3, 3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    # The camera's up axis is the z-up world's +z.
    assert torch.allclose(emb[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-4)
    # Elevated camera (above): positive z in the z-up world, unit translation.
    emb = imagedream_embedding(orbit_cameras(-30.0, 45.0, radius=3.0)).reshape(4, 4)
    assert emb[2, 3] == pytest.approx(0.5, abs=1e-4)
    assert float(emb[:3, 3].norm()) == pytest.approx(1.0, abs=1e-4)
