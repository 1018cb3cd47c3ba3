"""Full-size random Stable Zero123 in fp16 on CUDA: guidance.nets against diffusers/transformers, and load times.

Tolerance: both sides run the same fp16 kernels (cuDNN convolutions, SDPA, GroupNorm/LayerNorm) in the
same order, so they should agree to fp16 rounding; we allow a max abs difference of 1% of the
reference's max magnitude (fp16 has an 11-bit significand, ~5e-4 relative per op, and a 70-layer
network compounds a few of those), which still fails on any wrong wiring (those give O(1) relative
errors). Load times are measured in a fresh interpreter each (imports included) and printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
F16 = torch.float16
REL = 1e-2


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory) -> Path:
    from testing.random_zero123 import save_zero123

    return save_zero123(tmp_path_factory.mktemp("zero123_full"), "full", dtype=F16)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape and torch.isfinite(got).all() and torch.isfinite(want).all()
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6))


def test_full_unet_vae_clip_match_references(full_folder):
    import diffusers
    import transformers

    from guidance.nets.clip_vision import load_clip_vision
    from guidance.nets.sd_unet import load_sd_unet
    from guidance.nets.vae import load_vae

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    errs = {}
    with torch.no_grad():
        ref = (
            diffusers.UNet2DConditionModel.from_pretrained(full_folder / "unet", torch_dtype=F16)
            .to(dev)
            .eval()
        )
        ours = load_sd_unet(full_folder / "unet", F16, dev)
        x = torch.randn(4, 8, 32, 32, device=dev, generator=g, dtype=F16)
        ctx = torch.randn(4, 1, 768, device=dev, generator=g, dtype=F16)
        t = torch.tensor([981.0, 601.0, 201.0, 21.0], device=dev)
        errs["unet eps"] = _rel_err(
            ours(x, t, encoder_hidden_states=ctx).sample, ref(x, t, encoder_hidden_states=ctx).sample
        )
        del ref, ours

        ref = diffusers.AutoencoderKL.from_pretrained(full_folder / "vae", torch_dtype=F16).to(dev).eval()
        ours = load_vae(full_folder / "vae", F16, dev)
        z = torch.randn(2, 4, 32, 32, device=dev, generator=g, dtype=F16)
        errs["vae decode"] = _rel_err(ours.decode(z).sample, ref.decode(z).sample)
        img = torch.rand(2, 3, 256, 256, device=dev, generator=g, dtype=F16) * 2 - 1
        errs["vae mean"] = _rel_err(ours.encode(img).latent_dist.mean, ref.encode(img).latent_dist.mean)
        del ref, ours

        cls = transformers.CLIPVisionModelWithProjection
        ref = cls.from_pretrained(full_folder / "image_encoder", dtype=F16).to(dev).eval()
        ours = load_clip_vision(full_folder / "image_encoder", F16, dev)
        pix = torch.randn(2, 3, 224, 224, device=dev, generator=g, dtype=F16)
        errs["clip embeds"] = _rel_err(ours(pix).image_embeds, ref(pix).image_embeds)
    print("fp16 max abs diff / max |ref|:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert max(errs.values()) <= REL, errs


_OLD = """
import sys, time, torch
torch.zeros(1, device='cuda'); t0 = time.perf_counter()
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
f, kw = sys.argv[1], dict(use_safetensors=True, device_map={'': 'cuda'})
UNet2DConditionModel.from_pretrained(f + '/unet', torch_dtype=torch.float16, **kw)
AutoencoderKL.from_pretrained(f + '/vae', torch_dtype=torch.float16, **kw)
CLIPVisionModelWithProjection.from_pretrained(f + '/image_encoder', dtype=torch.float16, **kw)
CLIPImageProcessor.from_pretrained(f + '/feature_extractor')
torch.cuda.synchronize(); print(f'{time.perf_counter() - t0:.3f}')
"""
_NEW = """
import sys, time, torch
torch.zeros(1, device='cuda'); t0 = time.perf_counter()
from guidance.models.zero123 import Zero123Denoiser
Zero123Denoiser(sys.argv[1], device='cuda', dtype='fp16')
torch.cuda.synchronize(); print(f'{time.perf_counter() - t0:.3f}')
assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules
"""


def test_load_time_old_vs_new(full_folder):
    times = {}
    for name, code in (("diffusers+transformers", _OLD), ("guidance.nets", _NEW)):
        out = subprocess.run(
            [sys.executable, "-c", code, str(full_folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        times[name] = float(out.stdout.strip().splitlines()[-1])
    print("cold load (fresh process, after CUDA init, imports included):", times)


def test_full_text_encoder_and_vision_hidden_state_match_transformers(tmp_path):
    """ImageDream/MVDream's encoders at full size (SD 2.1 text tower, OpenCLIP ViT-H), random, fp16."""
    import transformers

    from guidance.nets.clip_text import load_clip_text
    from guidance.nets.clip_vision import load_clip_vision
    from testing.random_imagedream import imagedream_configs

    cfgs = imagedream_configs("full")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    errs = {}
    with torch.no_grad():
        torch.manual_seed(0)
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfgs["text_encoder"]))
        model.to(F16).save_pretrained(tmp_path / "text", safe_serialization=True)
        ref = model.to(dev, F16).eval()
        ours = load_clip_text(tmp_path / "text", F16, dev)
        ids = torch.randint(0, 49408, (2, 77), device=dev, generator=g)
        errs["text last_hidden_state"] = _rel_err(ours(ids), ref(ids).last_hidden_state)
        del model, ref, ours
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**cfgs["image_encoder"]))
        model.to(F16).save_pretrained(tmp_path / "vision", safe_serialization=True)
        ref = model.to(dev, F16).eval()
        ours = load_clip_vision(tmp_path / "vision", F16, dev, projection=False)
        pix = torch.randn(1, 3, 224, 224, device=dev, generator=g, dtype=F16)
        want = ref(pix, output_hidden_states=True).hidden_states[-2]
        errs["vision hidden_states[-2]"] = _rel_err(ours.hidden_state(pix, -2), want)
    print("fp16 max abs diff / max |ref|:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert max(errs.values()) <= REL, errs
