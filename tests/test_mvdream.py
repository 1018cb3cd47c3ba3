"""MVDream backend: full-size key set, tiny model through the real loader, strict loading, offline
error, text embeddings once per prompt, CFG with the negative prompt, cameras, 4-view groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cameras import orbit_cameras
from core.errors import UserError
from guidance import load_denoiser
from guidance.models.imagedream import imagedream_embedding
from guidance.models.mvdream import MVDreamDenoiser, group_order
from guidance.mv_unet import MultiViewUNetModel
from guidance.registry import get
from testing.random_mvdream import cached_tiny_mvdream, mvdream_configs
from testing.tiny_denoisers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread_module")

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "imagedream_unet_keys.txt"


@pytest.mark.skipif(not KEYS_FILE.is_file(), reason="shared/reference/imagedream_unet_keys.txt not present")
def test_full_size_unet_is_imagedream_without_the_image_keys():
    """The Hub MVDream config (checkpoints.md 2.2) builds the 690 keys: ImageDream's 773 minus the 83
    Resampler and to_k_ip/to_v_ip tensors, 867,572,164 parameters."""
    expected = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            expected[key] = tuple(json.loads(shape))
    expected = {k: v for k, v in expected.items() if not k.startswith("image_embed.") and "_ip." not in k}
    hub = dict(mvdream_configs("full")["unet"], _class_name="MultiViewUNetModel", use_checkpoint=False)
    assert "ip_dim" not in hub
    with torch.device("meta"):
        unet = MultiViewUNetModel.from_config(hub)
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert len(got) == 690 and got == expected
    assert sum(v.numel() for v in unet.parameters()) == 867_572_164


@pytest.fixture(scope="module")
def tiny() -> MVDreamDenoiser:
    """The tiny random MVDream in the Hub layout, loaded by the registry's loader (CPU, fp32)."""
    den = load_denoiser(tiny_config("mvdream"), "cpu")
    assert isinstance(den, MVDreamDenoiser)
    return den


def test_spec_is_text_conditioned():
    spec = get("mvdream")
    assert spec.conditioning == "text" and spec.needs_input is False and spec.section == "model"


def test_tiny_checkpoint_layout_and_exact_load(tiny):
    from safetensors.torch import load_file

    root = tiny.root
    index = json.loads((root / "model_index.json").read_text())
    assert index["unet"] == ["mv_unet", "MultiViewUNetModel"]
    assert index["image_encoder"] == [None, None] and index["feature_extractor"] == [None, None]
    assert not (root / "image_encoder").exists() and not (root / "feature_extractor").exists()
    assert "ip_dim" not in json.loads((root / "unet" / "config.json").read_text())
    saved = load_file(str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(tiny.unet.state_dict())
    assert not any("_ip." in k or k.startswith("image_embed") for k in saved)
    assert tiny.feature_extractor is None and tiny.unet.config.ip_dim == 0
    assert (tiny.image_size, tiny.latent_size, tiny.views_per_group) == (64, 8, 4)


def test_missing_key_fails_with_one_line(tmp_path):
    """A unet file without one tensor is refused through the full loader, in one line naming it."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mvdream"
    shutil.copytree(cached_tiny_mvdream(), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    good = load_file(str(weights))
    save_file({k: v for k, v in good.items() if k != "camera_embed.0.weight"}, str(weights))
    with pytest.raises(UserError) as err:
        MVDreamDenoiser(folder, device="cpu", dtype="fp32", prompt="a cat")
    msg = str(err.value)
    assert "\n" not in msg and "missing_keys: 1" in msg and "camera_embed.0.weight" in msg


def test_imagedream_folder_is_refused(tmp_path):
    from testing.random_imagedream import cached_tiny_imagedream

    with pytest.raises(UserError, match="ImageDream UNet, not MVDream"):
        MVDreamDenoiser(cached_tiny_imagedream(), device="cpu", dtype="fp32")


def test_offline_uncached_id_fails_with_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        MVDreamDenoiser(
            "ashawkey/mvdream-sd2.1-diffusers", device="cpu", cache_dir=tmp_path, local_files_only=True
        )
    msg = str(err.value)
    assert "\n" not in msg and "ashawkey/mvdream-sd2.1-diffusers" in msg and "model.path" in msg


def test_text_encoded_once_per_prompt(tiny):
    tiny.set_prompt("a cat")
    n = tiny.text_encodes
    before = tiny.text.clone()
    tiny.set_prompt("a cat")
    tiny.set_reference(torch.rand(3, 8, 8), 0.0, prompt="a cat")
    assert tiny.text_encodes == n  # same prompt: nothing recomputed
    tiny.set_prompt("the cat")
    assert tiny.text_encodes == n + 1 and not torch.equal(tiny.text, before)
    assert torch.equal(tiny.text[0], before[0])  # the negative prompt row is unchanged
    tiny.set_prompt("a cat")
    torch.testing.assert_close(tiny.text, before)


def _cams(n: int, elev: float = -15.0, start: float = 0.0):
    az = [start + i * 360.0 / n for i in range(n)]
    return orbit_cameras([elev] * n, az, radius=2.5, height=64)


def test_cfg_layout_negative_then_prompt(tiny):
    """context rows: B negative-prompt rows then B prompt rows; cameras repeated for both halves."""
    tiny.set_prompt("a cat")
    cams = _cams(4)
    cond = tiny.prepare(cams)
    neg, pos = tiny.encode_text([tiny.negative_prompt, "a cat"])
    assert cond.context.shape == (8, 77, neg.shape[-1])
    assert all(torch.equal(cond.context[i], neg) for i in range(4))
    assert all(torch.equal(cond.context[4 + i], pos) for i in range(4))
    cam = imagedream_embedding(cams)
    assert torch.equal(cond.camera, torch.cat([cam, cam]))
    # The negative prompt is the unconditional branch: changing it moves eps_uncond, the prompt does not.
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eu = tiny.eps_uncond(x, 500, cond)
    tiny.set_prompt("the cat")
    torch.testing.assert_close(tiny.eps_uncond(x, 500, tiny.prepare(cams)), eu)
    tiny.set_prompt("a cat", negative_prompt="blurry")
    assert not torch.allclose(tiny.eps_uncond(x, 500, tiny.prepare(cams)), eu)
    tiny.set_prompt("a cat", negative_prompt=get_negative())


def get_negative() -> str:
    from guidance.models.imagedream import NEGATIVE_PROMPT

    return NEGATIVE_PROMPT


def test_camera_embedding_reaches_the_network(tiny):
    """Rotating the 4 cameras changes the predictions (camera_embed is added to the time embedding)."""
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    a = tiny.eps_cfg(x, 400, tiny.prepare(_cams(4)), 7.0)
    b = tiny.eps_cfg(x, 400, tiny.prepare(_cams(4, start=30.0)), 7.0)
    assert (a - b).abs().max() > 1e-4


def test_eight_views_form_two_interleaved_groups(tiny):
    cams = _cams(8)
    assert group_order(cams.azimuth).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert group_order(_cams(4).azimuth) is None
    cond = tiny.prepare(cams)
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    e = tiny.eps_cfg(x, 300, cond, 7.0)
    for idx in ([0, 2, 4, 6], [1, 3, 5, 7]):
        sub = tiny.prepare(cams[torch.tensor(idx)])
        assert sub.order is None
        torch.testing.assert_close(e[idx], tiny.eps_cfg(x[idx], 300, sub, 7.0), atol=5e-4, rtol=1e-4)
