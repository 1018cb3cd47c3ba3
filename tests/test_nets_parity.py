"""guidance.nets (pure torch) against diffusers / transformers on tiny random folders, fp32 on CPU.

Every network is loaded both ways from the same folder and evaluated on the same inputs; the outputs
must agree to 1e-5 (max abs). A second UNet config covers the other code paths (linear projections,
per-block heads, two transformer layers, flipped/shifted time features, padding-0 downsampling, odd
latent sizes, upcast attention, mid-block output scale), a second CLIP tower the exact GELU.
"""

from __future__ import annotations

import pytest
import torch

from guidance.nets.clip_vision import ClipImageProcessor, load_clip_vision
from guidance.nets.sd_unet import load_sd_unet
from guidance.nets.vae import load_vae

pytestmark = pytest.mark.usefixtures("one_thread")

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
F32 = torch.float32


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(scope="module")
def tiny_folder():
    from testing.random_zero123 import cached_tiny_zero123

    return cached_tiny_zero123()


def _unet_inputs(unet_cfg: dict, batch: int, size: int, tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet_cfg["in_channels"], size, size, generator=g)
    ctx = torch.randn(batch, tokens, unet_cfg["cross_attention_dim"], generator=g)
    t = torch.tensor([981.0, 501.0, 21.0, 1.0][:batch])
    return x, t, ctx


def _check_unet(folder, size: int, tokens: int) -> float:
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder).eval()
    ours = load_sd_unet(folder, F32, "cpu")
    x, t, ctx = _unet_inputs(dict(ref.config), 3, size, tokens, seed=0)
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample
        got = ours(x, t, encoder_hidden_states=ctx).sample
        # a Python scalar timestep, tuple output (what bench code uses)
        scalar = ours(x[:1], 501, encoder_hidden_states=ctx[:1], return_dict=False)[0]
        scalar_ref = ref(x[:1], 501, encoder_hidden_states=ctx[:1]).sample
    assert _max_diff(scalar, scalar_ref) <= TOL
    assert want.abs().max() > 1e-2  # the outputs carry signal
    return _max_diff(got, want)


def test_unet_matches_diffusers(tiny_folder):
    diff = _check_unet(tiny_folder / "unet", size=8, tokens=1)
    print(f"unet (tiny zero123) max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.fixture(scope="module")
def other_unet_folder(tmp_path_factory):
    """A second tiny UNet whose config takes the other branches of the code."""
    cfg = dict(
        sample_size=9,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64, 64],
        layers_per_block=2,
        attention_head_dim=[2, 4, 8],
        transformer_layers_per_block=2,
        cross_attention_dim=24,
        use_linear_projection=True,
        upcast_attention=True,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        mid_block_scale_factor=1.5,
        norm_num_groups=16,
        norm_eps=1e-6,
    )
    torch.manual_seed(3)
    unet = diffusers.UNet2DConditionModel(**cfg)
    with torch.no_grad():
        for p in unet.parameters():  # larger weights than the default init: every path matters
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("unet_other")
    unet.save_pretrained(folder, safe_serialization=True)
    return folder


def test_second_unet_config_matches_diffusers(other_unet_folder):
    diff = _check_unet(other_unet_folder, size=9, tokens=5)
    print(f"unet (linear projection, per-block heads, odd size) max abs diff {diff:.2e}")
    assert diff <= TOL


def test_vae_matches_diffusers(tiny_folder):
    ref = diffusers.AutoencoderKL.from_pretrained(tiny_folder / "vae").eval()
    ours = load_vae(tiny_folder / "vae", F32, "cpu")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        pr, po = ref.encode(x).latent_dist, ours.encode(x).latent_dist
        dec_r, dec_o = ref.decode(z).sample, ours.decode(z).sample
    diffs = dict(
        mean=_max_diff(po.mean, pr.mean), std=_max_diff(po.std, pr.std), decode=_max_diff(dec_o, dec_r)
    )
    print("vae max abs diff", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL
    assert ours.config.scaling_factor == ref.config.scaling_factor
    assert list(ours.config.block_out_channels) == list(ref.config.block_out_channels)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_vision_matches_transformers(tiny_folder, tmp_path, act):
    folder = tiny_folder / "image_encoder"
    if act == "gelu":
        from testing.random_layout import tiny_clip_config

        torch.manual_seed(4)
        cfg = transformers.CLIPVisionConfig(**tiny_clip_config("gelu", image_size=32, patch_size=8))
        transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path, safe_serialization=True)
        folder = tmp_path
    ref = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    ours = load_clip_vision(folder, F32, "cpu")
    pix = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = _max_diff(ours(pix).image_embeds, ref(pix).image_embeds)
    print(f"clip image_embeds ({act}) max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("hw", [(64, 64), (100, 80), (37, 61), (256, 256)])
def test_clip_processor_matches_transformers(tiny_folder, hw):
    from PIL import Image

    ref = transformers.CLIPImageProcessor.from_pretrained(tiny_folder / "feature_extractor")
    ours = ClipImageProcessor.from_folder(tiny_folder / "feature_extractor")
    u8 = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(hw[0]))
    want = ref(images=Image.fromarray(u8.permute(1, 2, 0).numpy()), return_tensors="pt").pixel_values
    got = ours(u8)
    diff = _max_diff(got, want)
    print(f"clip pixel_values {hw} max abs diff {diff:.2e}")
    assert got.shape == (1, 3, 32, 32) and diff <= TOL


def test_camera_projection_matches_diffusers(tiny_folder):
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    from guidance.camera_projection import load_camera_projection

    class RefProjection(ModelMixin, ConfigMixin):  # the diffusers class of the checkpoint
        @register_to_config
        def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
            super().__init__()
            self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

        def forward(self, x):
            return self.proj(x)

    folder = tiny_folder / "clip_camera_projection"
    ref = RefProjection.from_pretrained(folder).eval()
    ours = load_camera_projection(folder, F32, "cpu")
    x = torch.randn(3, 36, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        diff = _max_diff(ours(x), ref(x))
    print(f"camera projection max abs diff {diff:.2e}")
    assert diff <= TOL and ours.proj.weight.shape == (32, 36)
