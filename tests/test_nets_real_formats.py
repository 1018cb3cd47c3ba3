"""guidance.nets against the config files of the REAL Hub folders (issue 14), written by older libraries.

The installed diffusers/transformers write other keys and value shapes than the versions that wrote
``ashawkey/stable-zero123-diffusers`` (diffusers 0.24.0), ``zero123-xl-diffusers`` (0.22.2),
``imagedream-ipmv-diffusers`` / ``mvdream-sd2.1-diffusers`` (0.25.0, transformers 4.3x). The configs
below mimic those files (key sets and value shapes as the named versions serialise them; sizes and
values from shared/reference/checkpoints.md). Networks are built at their real sizes on the meta
device through the public loaders (weights skipped), and their parameter names and shapes are
checked against the real checkpoints' counts. The weight-file formats (fp32 -> fp16, ``.bin`` only,
sharded safetensors with an index) are checked on the real-size camera projection (0.6 M params).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = ROOT.parent / "shared" / "reference" / "imagedream_unet_keys.txt"
F16 = torch.float16

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------------
# The config files, as the older libraries wrote them.

#: Stable Zero123 ``unet/config.json``: diffusers 0.24.0's UNet2DConditionModel.save_config of the
#: threestudio conversion (48 keys + 2 metadata = the Hub's 67 lines); zero123-xl (0.22.2) is a subset.
ZERO123_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.24.0",
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "attention_type": "default",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dropout": 0.0,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "sample_size": 32,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": False,
}

#: ``vae/config.json`` of all four repos: diffusers 0.24/0.25 AutoencoderKL (12 keys, 31 lines, 601 B).
SD_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.24.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

#: ``clip_camera_projection/config.json`` (diffusers 0.24.0 ConfigMixin, 132 B).
CAMERA_PROJECTION = {
    "_class_name": "CLIPCameraProjection",
    "_diffusers_version": "0.24.0",
    "additional_embeddings": 4,
    "embedding_dim": 768,
}

#: Zero123 ``image_encoder/config.json``: lambdalabs' CLIPVisionModelWithProjection, transformers 4.2x
#: (diff-only serialisation: architectures, dtype, init factors, ``_name_or_path``).
ZERO123_VISION = {
    "_name_or_path": "lambdalabs/sd-image-variations-diffusers/image_encoder",
    "architectures": ["CLIPVisionModelWithProjection"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "torch_dtype": "float16",
    "transformers_version": "4.25.0.dev0",
}

#: ImageDream ``image_encoder/config.json``: CLIPVisionModel of laion ViT-H/14, transformers 4.35
#: (``projection_dim`` present although this class has no projection).
IMAGEDREAM_VISION = {
    "_name_or_path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "architectures": ["CLIPVisionModel"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "projection_dim": 1024,
    "torch_dtype": "float16",
    "transformers_version": "4.35.2",
}

#: ImageDream/MVDream ``text_encoder/config.json``: SD 2.1's CLIPTextModel, transformers 4.35 (610 B).
SD21_TEXT = {
    "_name_or_path": "stabilityai/stable-diffusion-2-1",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float16",
    "transformers_version": "4.35.2",
    "vocab_size": 49408,
}

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: ``feature_extractor/preprocessor_config.json`` as transformers 4.2x's CLIPFeatureExtractor wrote it
#: (int ``size``/``crop_size``, no rescale keys).
PREPROCESSOR_OLD = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": _CLIP_MEAN,
    "image_std": _CLIP_STD,
    "resample": 3,
    "size": 224,
}

#: The same as transformers 4.3x's CLIPImageProcessor writes it (dict sizes, rescale, convert_rgb).
PREPROCESSOR_435 = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": _CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": _CLIP_STD,
    "processor_class": "CLIPProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

#: ``scheduler/scheduler_config.json`` (diffusers 0.24.0 DDIMScheduler, 502 B / 19 lines).
DDIM_024 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.24.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

#: ImageDream ``unet/config.json`` (diffusers 0.25.0 save of MultiViewUNetModel, 403 B).
IMAGEDREAM_UNET = {
    "_class_name": "MultiViewUNetModel",
    "_diffusers_version": "0.25.0",
    "attention_resolutions": [4, 2, 1],
    "camera_dim": 16,
    "channel_mult": [1, 2, 4, 4],
    "context_dim": 1024,
    "image_size": 32,
    "in_channels": 4,
    "ip_dim": 16,
    "model_channels": 320,
    "num_head_channels": 64,
    "num_res_blocks": 2,
    "out_channels": 4,
    "transformer_depth": 1,
}

#: MVDream ``unet/config.json`` at 9f446ee: no ``ip_dim``, ``use_checkpoint`` still there (414 B).
MVDREAM_UNET = {
    **{k: v for k, v in IMAGEDREAM_UNET.items() if k != "ip_dim"},
    "use_checkpoint": False,
}

_ADDED = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
#: SD 2.x ``tokenizer/special_tokens_map.json`` (transformers 4.2x, 460 B): pad "!".
SD2_SPECIAL_MAP = {
    "bos_token": {"content": "<|startoftext|>", **_ADDED},
    "eos_token": {"content": "<|endoftext|>", **_ADDED},
    "pad_token": "!",
    "unk_token": {"content": "<|endoftext|>", **_ADDED},
}
#: SD 2.x ``tokenizer/tokenizer_config.json`` (transformers 4.2x, 855 B): AddedToken dicts with
#: ``__type``, no ``added_tokens_decoder``, pad "<|endoftext|>" (the special-tokens map wins).
SD2_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", **_ADDED},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", **_ADDED},
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "stabilityai/stable-diffusion-2",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", **_ADDED},
}


def _write(folder: Path, name: str, cfg: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return folder


# --------------------------------------------------------------------------------------------------
# Building through the public loaders on the meta device (the weights are the only thing skipped).


@pytest.fixture
def meta_load(monkeypatch):
    """Make every ``load_module`` of guidance.nets build on the meta device without reading weights."""
    import guidance.camera_projection
    import guidance.mv_unet
    import guidance.nets.clip_text
    import guidance.nets.clip_vision
    import guidance.nets.sd_unet
    import guidance.nets.vae

    def fake(build, folder, dtype, device, adapt=None):
        with torch.device("meta"):
            return build().to(dtype)

    for mod in (
        guidance.camera_projection,
        guidance.mv_unet,
        guidance.nets.clip_text,
        guidance.nets.clip_vision,
        guidance.nets.sd_unet,
        guidance.nets.vae,
    ):
        monkeypatch.setattr(mod, "load_module", fake)


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _count(shapes: dict[str, list[int]]) -> int:
    return sum(int(torch.Size(s).numel()) for s in shapes.values())


def test_zero123_unet_config_builds_the_real_unet(meta_load, tmp_path):
    """686 tensors, 859,532,484 params, conv_in [320,8,3,3], cross-attention from 768 (checkpoints.md 1.4)."""
    from guidance.nets.sd_unet import load_sd_unet

    unet = load_sd_unet(_write(tmp_path / "unet", "config.json", ZERO123_UNET), F16, "cpu")
    shapes = _shapes(unet)
    assert len(shapes) == 686 and _count(shapes) == 859_532_484
    assert shapes["conv_in.weight"] == [320, 8, 3, 3] and shapes["conv_out.weight"] == [4, 320, 3, 3]
    assert shapes["time_embedding.linear_1.weight"] == [1280, 320]
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert shapes[k] == [320, 768]
    assert shapes["down_blocks.0.attentions.0.proj_in.weight"] == [320, 320, 1, 1]  # conv projections
    prefixes = {}
    for key in shapes:
        prefixes[key.split(".")[0]] = prefixes.get(key.split(".")[0], 0) + 1
    assert (prefixes["down_blocks"], prefixes["mid_block"], prefixes["up_blocks"]) == (246, 46, 384)
    heads = unet.down_blocks[2].attentions[0].transformer_blocks[0].attn1.heads
    assert heads == 8  # legacy attention_head_dim = heads per block
    assert unet.config.upcast_attention is False and unet.config.in_channels == 8


def test_zero123_xl_unet_config_of_diffusers_022(meta_load, tmp_path):
    """diffusers 0.22.2 lacked the newest keys; the same network comes out."""
    from guidance.nets.sd_unet import load_sd_unet

    cfg = {k: v for k, v in ZERO123_UNET.items() if k != "reverse_transformer_layers_per_block"}
    cfg["_diffusers_version"] = "0.22.2"
    unet = load_sd_unet(_write(tmp_path / "unet", "config.json", cfg), F16, "cpu")
    assert _count(_shapes(unet)) == 859_532_484


def test_vae_config_builds_the_real_vae(meta_load, tmp_path):
    """248 tensors, 83,653,863 params (checkpoints.md 1.5); scaling factor read from the file."""
    from guidance.nets.vae import load_vae

    vae = load_vae(_write(tmp_path / "vae", "config.json", SD_VAE), F16, "cpu")
    shapes = _shapes(vae)
    assert len(shapes) == 248 and _count(shapes) == 83_653_863
    assert vae.config.scaling_factor == 0.18215
    assert shapes["quant_conv.weight"] == [8, 8, 1, 1] and shapes["decoder.conv_out.weight"] == [3, 128, 3, 3]


def test_camera_projection_config(meta_load, tmp_path):
    from guidance.camera_projection import load_camera_projection

    folder = _write(tmp_path / "clip_camera_projection", "config.json", CAMERA_PROJECTION)
    proj = load_camera_projection(folder, F16, "cpu")
    assert _shapes(proj) == {"proj.weight": [768, 772], "proj.bias": [768]}


def test_zero123_image_encoder_config(meta_load, tmp_path):
    """CLIP ViT-L/14 + projection: 24 layers of 1024, quick_gelu, image_embeds [B,768]."""
    from guidance.nets.clip_vision import load_clip_vision

    enc = load_clip_vision(_write(tmp_path / "image_encoder", "config.json", ZERO123_VISION), F16, "cpu")
    shapes = _shapes(enc)
    assert shapes["visual_projection.weight"] == [768, 1024]
    assert shapes["vision_model.embeddings.position_embedding.weight"] == [257, 1024]
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == [1024, 3, 14, 14]
    assert len(enc.vision_model.encoder.layers) == 24
    # 24 layers x 16 tensors + embeddings 3 + pre/post LayerNorm 4 + projection 1 (no position_ids buffer)
    assert len(shapes) == 24 * 16 + 8
    assert enc.vision_model.encoder.layers[0].act(torch.tensor([1.0])).item() == pytest.approx(
        1.0 / (1.0 + float(torch.exp(torch.tensor(-1.702))))
    )


def test_imagedream_image_encoder_config(meta_load, tmp_path):
    """CLIPVisionModel of ViT-H/14: no visual_projection although the config names projection_dim."""
    from guidance.nets.clip_vision import load_clip_vision

    folder = _write(tmp_path / "image_encoder", "config.json", IMAGEDREAM_VISION)
    enc = load_clip_vision(folder, F16, "cpu", projection=False)
    shapes = _shapes(enc)
    assert "visual_projection.weight" not in shapes and len(shapes) == 32 * 16 + 7
    assert shapes["vision_model.encoder.layers.31.mlp.fc1.weight"] == [5120, 1280]
    assert _count(shapes) == 630_766_080  # OpenCLIP ViT-H/14 vision tower without its projection


def test_text_encoder_config(meta_load, tmp_path):
    """SD 2.1's text tower: 23 layers of 1024, gelu, 77 positions, 49408 tokens."""
    from guidance.nets.clip_text import load_clip_text

    enc = load_clip_text(_write(tmp_path / "text_encoder", "config.json", SD21_TEXT), F16, "cpu")
    shapes = _shapes(enc)
    assert len(shapes) == 23 * 16 + 4
    assert shapes["text_model.embeddings.token_embedding.weight"] == [49408, 1024]
    assert shapes["text_model.embeddings.position_embedding.weight"] == [77, 1024]
    # 340,387,840 params: 681 MB in fp16 (checkpoints.md 2.1).
    assert _count(shapes) == 340_387_840


def _reference_keys() -> dict[str, list[int]]:
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.fullmatch(r"(\S+) \[([\d, ]*)\]", line.strip())
        assert m, line
        out[m.group(1)] = [int(v) for v in m.group(2).split(",")] if m.group(2) else []
    return out


def test_imagedream_unet_config_matches_the_reference_key_list(meta_load, tmp_path):
    """Every one of the 773 keys with its shape (reference/imagedream_unet_keys.txt)."""
    from guidance.mv_unet import load_mv_unet

    unet = load_mv_unet(_write(tmp_path / "unet", "config.json", IMAGEDREAM_UNET), F16, "cpu")
    want = _reference_keys()
    assert len(want) == 773 and _count(want) == 941_672_900
    assert _shapes(unet) == want


def test_mvdream_unet_config_matches_the_reference_key_list(meta_load, tmp_path):
    """690 keys, 867,572,164 params: the list without the image-prompt keys; ``use_checkpoint`` accepted."""
    from guidance.mv_unet import load_mv_unet

    unet = load_mv_unet(_write(tmp_path / "unet", "config.json", MVDREAM_UNET), F16, "cpu")
    want = {
        k: v for k, v in _reference_keys().items() if not k.startswith("image_embed.") and "_ip." not in k
    }
    assert len(want) == 690 and _count(want) == 867_572_164
    assert _shapes(unet) == want


# --------------------------------------------------------------------------------------------------
# Image processor, scheduler, tokenizer.


@pytest.mark.parametrize("cfg", [PREPROCESSOR_OLD, PREPROCESSOR_435], ids=["transformers4.2x", "4.3x"])
def test_preprocessor_configs_give_the_same_pixels(tmp_path, cfg):
    """Both serialisations: shortest edge 224 bicubic, centre crop 224, CLIP normalisation."""
    from guidance.nets.clip_vision import ClipImageProcessor

    proc = ClipImageProcessor.from_folder(_write(tmp_path / "fe", "preprocessor_config.json", cfg))
    assert proc.size == 224 and proc.crop == (224, 224)
    image = torch.randint(
        0, 256, (3, 256, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    got = proc(image)
    assert got.shape == (1, 3, 224, 224)
    # A white pixel normalises to (1 - mean) / std.
    white = proc(torch.full((3, 224, 224), 255, dtype=torch.uint8))[0, :, 0, 0]
    want = (1 - torch.tensor(_CLIP_MEAN)) / torch.tensor(_CLIP_STD)
    torch.testing.assert_close(white, want, rtol=0, atol=1e-5)
    if cfg is PREPROCESSOR_435:
        old = ClipImageProcessor(PREPROCESSOR_OLD)(image)
        torch.testing.assert_close(got, old, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("resample", 2, "resample"),
        ("do_pad", True, "do_pad"),
        ("image_mean", [0.5, 0.5], "image_mean"),
        ("size", {"longest_edge": 224}, "size"),
        ("crop_size", {"width": 224}, "crop_size"),
    ],
)
def test_preprocessor_values_that_change_the_pixels_are_refused(tmp_path, key, value, words):
    from guidance.nets.clip_vision import ClipImageProcessor

    folder = _write(tmp_path / "fe", "preprocessor_config.json", {**PREPROCESSOR_435, key: value})
    with pytest.raises(UserError, match=words):
        ClipImageProcessor.from_folder(folder)


def test_scheduler_config_of_diffusers_024(tmp_path):
    from guidance.schedule import DDIMSchedule

    path = _write(tmp_path / "scheduler", "scheduler_config.json", DDIM_024) / "scheduler_config.json"
    sched = DDIMSchedule.from_file(path)
    assert sched.timesteps(10)[:3] == [901, 801, 701]
    assert sched.final_alpha_cumprod == pytest.approx(1 - 0.00085, abs=1e-7)
    assert sched.alpha_bar(999) == pytest.approx(0.0046600, abs=1e-6)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("prediction_type", "v_prediction", "epsilon"),
        ("beta_schedule", "squaredcos_cap_v2", "beta_schedule"),
        ("clip_sample", True, "clip_sample"),
        ("timestep_spacing", "karras", "timestep_spacing"),
    ],
)
def test_scheduler_values_that_change_the_steps_are_one_line_errors(tmp_path, key, value, words):
    from guidance.latent_diffusion import read_schedule

    folder = _write(tmp_path / "scheduler", "scheduler_config.json", {**DDIM_024, key: value})
    with pytest.raises(UserError, match=words) as info:
        read_schedule(folder)
    assert "\n" not in str(info.value)


def test_scheduler_folder_errors_are_one_line(tmp_path):
    from guidance.latent_diffusion import read_schedule

    with pytest.raises(UserError, match="no scheduler_config.json"):
        read_schedule(tmp_path)
    (tmp_path / "scheduler_config.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_schedule(tmp_path)


def _tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A vocabulary laid out like CLIP's: byte characters first ("!" = id 0), then words, specials last."""
    from guidance.nets.clip_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    # CLIP's order: the printable bytes (that map to themselves) first, so "!" is id 0.
    chars = [c for b, c in table.items() if ord(c) == b] + [c for b, c in table.items() if ord(c) != b]
    tokens = chars + [c + "</w>" for c in chars] + ["ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, ["#version: 0.2", "c a", "ca t</w>"]


def _tokenizer_folder(folder: Path, config: dict[str, Any], special: dict[str, Any] | None) -> Path:
    vocab, merges = _tiny_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    _write(folder, "tokenizer_config.json", config)
    if special is not None:
        _write(folder, "special_tokens_map.json", special)
    return folder


def test_sd2_tokenizer_files_of_transformers_4(tmp_path):
    """Pad "!" (id 0) from the special-tokens map although the config says <|endoftext|>; 77 ids."""
    from guidance.nets.clip_tokenizer import ClipTokenizer

    vocab, _ = _tiny_vocab()
    tok = ClipTokenizer.from_folder(
        _tokenizer_folder(tmp_path / "tok", SD2_TOKENIZER_CONFIG, SD2_SPECIAL_MAP)
    )
    ids = tok("a Cat!")
    assert ids.shape == (1, 77) and tok.pad_token_id == 0
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    # "!" is the pad token, a special token: cut out of the text first, it is id 0 (transformers does so).
    assert ids[0, :5].tolist() == [bos, vocab["a</w>"], vocab["cat</w>"], 0, eos]
    assert (ids[0, 5:] == 0).all()


def test_tokenizer_config_without_max_length_or_map(tmp_path):
    """transformers' "unset" model_max_length (VERY_LARGE_INTEGER) means CLIP's 77; no map: eos pads."""
    from guidance.nets.clip_tokenizer import ClipTokenizer

    cfg = {**SD2_TOKENIZER_CONFIG, "model_max_length": 1000000000000000019884624838656}
    tok = ClipTokenizer.from_folder(_tokenizer_folder(tmp_path / "tok", cfg, None))
    vocab, _ = _tiny_vocab()
    assert tok.model_max_length == 77 and tok.pad_token_id == vocab["<|endoftext|>"]
    with pytest.raises(UserError, match="model_max_length"):
        ClipTokenizer.from_folder(_tokenizer_folder(tmp_path / "t2", {**cfg, "model_max_length": 1}, None))


# --------------------------------------------------------------------------------------------------
# Unknown keys: accepted when they cannot change the computation, refused (named) when they would.


@pytest.mark.parametrize(
    "loader, cfg, key, value",
    [
        ("unet", ZERO123_UNET, "attention_head_dim", [8, 8, 8]),
        ("unet", ZERO123_UNET, "addition_embed_type", "text"),
        ("vae", SD_VAE, "latents_mean", [0.0] * 4),
        ("vision", ZERO123_VISION, "model_type", "siglip_vision_model"),
        ("vision", ZERO123_VISION, "hidden_act", "relu"),
        ("text", SD21_TEXT, "hidden_act", "gelu_new"),
        ("text", SD21_TEXT, "position_embedding_type", "relative_key"),
        ("vision", ZERO123_VISION, "vision_feature_select_strategy", "full"),
        ("mv", IMAGEDREAM_UNET, "use_scale_shift_norm", True),
        ("mv", IMAGEDREAM_UNET, "legacy", True),
    ],
)
def test_values_that_change_the_network_are_refused(meta_load, tmp_path, loader, cfg, key, value):
    from guidance.mv_unet import load_mv_unet
    from guidance.nets.clip_text import load_clip_text
    from guidance.nets.clip_vision import load_clip_vision
    from guidance.nets.sd_unet import load_sd_unet
    from guidance.nets.vae import load_vae

    load = {
        "unet": load_sd_unet,
        "vae": load_vae,
        "vision": load_clip_vision,
        "text": load_clip_text,
        "mv": load_mv_unet,
    }[loader]
    folder = _write(tmp_path / "c", "config.json", {**cfg, key: value})
    with pytest.raises(UserError, match=key) as info:
        load(folder, F16, "cpu")
    assert "\n" not in str(info.value)


#: The PretrainedConfig defaults transformers 4.1x-4.2x serialised into nested CLIP configs.
_GENERIC_4X: dict[str, Any] = {
    "add_cross_attention": False,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.16.0.dev0",
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def test_pruned_heads_are_refused(meta_load, tmp_path):
    """A non-empty ``pruned_heads`` removes attention heads: refused, named (``{}`` is accepted above)."""
    from guidance.nets.clip_text import load_clip_text

    folder = _write(tmp_path / "t", "config.json", {**SD21_TEXT, "pruned_heads": {"0": [1]}})
    with pytest.raises(UserError, match="pruned_heads"):
        load_clip_text(folder, F16, "cpu")


def test_clip_configs_nested_in_a_full_clip_config(meta_load, tmp_path):
    """A CLIPModel config (``text_config``/``vision_config``, model_type "clip"): the tower's part is used."""
    from guidance.nets.clip_text import load_clip_text
    from guidance.nets.clip_vision import load_clip_vision

    strip = ("architectures", "_name_or_path", "torch_dtype", "transformers_version")
    full = {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 768,
        "logit_scale_init_value": 2.6592,
        # transformers 4.1x-4.2x wrote every PretrainedConfig default into the nested configs and the
        # tower's own values again as ``<tower>_config_dict`` (which wins).
        "text_config": {**_GENERIC_4X, "hidden_size": 512, "num_hidden_layers": 12},
        "text_config_dict": {k: v for k, v in SD21_TEXT.items() if k not in strip},
        "vision_config": {**_GENERIC_4X, **{k: v for k, v in ZERO123_VISION.items() if k not in strip}},
        "torch_dtype": "float32",
        "transformers_version": "4.16.0.dev0",
    }
    folder = _write(tmp_path / "clip", "config.json", full)
    vision = load_clip_vision(folder, F16, "cpu")
    text = load_clip_text(folder, F16, "cpu")
    assert len(vision.vision_model.encoder.layers) == 24 and vision.config.hidden_size == 1024
    assert len(text.text_model.encoder.layers) == 23 and text.config.hidden_size == 1024


# --------------------------------------------------------------------------------------------------
# Weight files: fp32 into fp16, .bin only, sharded safetensors with an index (real-size projection).


def _projection_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"proj.weight": torch.randn(768, 772, generator=g), "proj.bias": torch.randn(768, generator=g)}


def _projection_folder(folder: Path) -> Path:
    return _write(folder, "config.json", CAMERA_PROJECTION)


def test_fp32_weights_load_into_fp16(tmp_path):
    from safetensors.torch import save_file

    from guidance.camera_projection import load_camera_projection

    folder = _projection_folder(tmp_path / "p")
    state = _projection_state()
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    proj = load_camera_projection(folder, F16, "cpu")
    assert proj.proj.weight.dtype == F16
    assert torch.equal(proj.proj.weight, state["proj.weight"].half())
    assert torch.equal(proj.proj.bias, state["proj.bias"].half())


def test_bin_only_folder(tmp_path):
    """A ``diffusion_pytorch_model.bin`` (diffusers < 0.15 default; fp32 pickles) loads weights_only."""
    from guidance.camera_projection import load_camera_projection

    folder = _projection_folder(tmp_path / "p")
    state = _projection_state(1)
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    proj = load_camera_projection(folder, F16, "cpu")
    assert torch.equal(proj.proj.weight, state["proj.weight"].half())


def _shard(folder: Path, state: dict[str, torch.Tensor], stem: str, ext: str) -> None:
    """Two shards and the index json, the way diffusers/transformers name them."""
    from safetensors.torch import save_file

    names = [f"{stem}-0000{i}-of-00002.{ext}" for i in (1, 2)]
    parts = [{"proj.weight": state["proj.weight"]}, {"proj.bias": state["proj.bias"]}]
    for name, part in zip(names, parts, strict=True):
        if ext == "safetensors":
            save_file(part, str(folder / name))
        else:
            torch.save(part, folder / name)
    index = {
        "metadata": {"total_size": 4 * (768 * 772 + 768)},
        "weight_map": {"proj.weight": names[0], "proj.bias": names[1]},
    }
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


def test_sharded_safetensors_with_an_index(tmp_path):
    from guidance.camera_projection import load_camera_projection

    folder = _projection_folder(tmp_path / "p")
    state = _projection_state(2)
    _shard(folder, state, "diffusion_pytorch_model", "safetensors")
    # A stray file next to the shards (a leftover fp16 variant) is not part of the index: not read.
    torch.save({"junk": torch.zeros(1)}, folder / "notes.bin")
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    proj = load_camera_projection(folder, F16, "cpu")
    assert torch.equal(proj.proj.weight, state["proj.weight"].half())
    assert torch.equal(proj.proj.bias, state["proj.bias"].half())


def test_sharded_bin_with_an_index(tmp_path):
    from guidance.camera_projection import load_camera_projection

    folder = _projection_folder(tmp_path / "p")
    state = _projection_state(3)
    _shard(folder, state, "diffusion_pytorch_model", "bin")
    proj = load_camera_projection(folder, F16, "cpu")
    assert torch.equal(proj.proj.bias, state["proj.bias"].half())


def test_index_naming_a_missing_shard_is_one_line(tmp_path):
    from guidance.camera_projection import load_camera_projection

    folder = _projection_folder(tmp_path / "p")
    _shard(folder, _projection_state(4), "diffusion_pytorch_model", "safetensors")
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="00002-of-00002") as info:
        load_camera_projection(folder, F16, "cpu")
    assert "\n" not in str(info.value)


def test_transformers_4_text_file_with_position_ids_in_a_bin(tmp_path):
    """A ``pytorch_model.bin`` with the ``text_model.`` prefix and the old ``position_ids`` buffer, fp32."""
    from guidance.nets.clip_text import load_clip_text

    cfg = {
        **SD21_TEXT,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 50,
    }
    folder = _write(tmp_path / "text_encoder", "config.json", cfg)
    with torch.device("meta"):
        from guidance.nets.clip_text import ClipTextModel

        names = _shapes(ClipTextModel(cfg))
    g = torch.Generator().manual_seed(5)
    state = {k: torch.randn(s, generator=g) for k, s in names.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, folder / "pytorch_model.bin")
    enc = load_clip_text(folder, F16, "cpu")
    assert enc.text_model.final_layer_norm.weight.dtype == F16
    assert torch.equal(enc.text_model.final_layer_norm.bias, state["text_model.final_layer_norm.bias"].half())


def test_full_clip_model_folder_loads_both_towers(tmp_path):
    """A transformers ``CLIPModel`` folder (nested config, both towers in one file) as image and text encoder."""
    transformers = pytest.importorskip("transformers")
    from guidance.nets.clip_text import load_clip_text
    from guidance.nets.clip_vision import load_clip_vision
    from testing.random_layout import tiny_clip_config

    torch.manual_seed(11)
    cfg = transformers.CLIPConfig(
        text_config=tiny_clip_config("gelu", vocab_size=99, max_position_embeddings=77),
        vision_config=tiny_clip_config("quick_gelu", image_size=28, patch_size=14),
        projection_dim=32,
    )
    ref = transformers.CLIPModel(cfg).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip"
    vision = load_clip_vision(tmp_path, torch.float32, "cpu")
    text = load_clip_text(tmp_path, torch.float32, "cpu")
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 99, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_img = ref.visual_projection(ref.vision_model(pixel_values=pixels).pooler_output)
        want_txt = ref.text_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(vision(pixels).image_embeds, want_img, rtol=0, atol=1e-5)
        torch.testing.assert_close(text(ids), want_txt, rtol=0, atol=1e-5)
    assert want_img.abs().max() > 0.05


# --------------------------------------------------------------------------------------------------
# Whole folders, as on the Hub, through the denoisers' constructors (networks on the meta device).

_INDEX_ZERO123 = {
    "_class_name": "Zero123Pipeline",
    "_diffusers_version": "0.24.0",
    "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_INDEX_IMAGEDREAM = {
    "_class_name": "MVDreamPipeline",
    "_diffusers_version": "0.25.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModel"],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["mv_unet", "MultiViewUNetModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_INDEX_MVDREAM = {**_INDEX_IMAGEDREAM, "feature_extractor": [None, None], "image_encoder": [None, None]}


def _hub_folder(root: Path, model: str) -> Path:
    """Every config file of the Hub folder of ``model`` (no weights: the networks are built on meta)."""
    index = {"zero123": _INDEX_ZERO123, "imagedream": _INDEX_IMAGEDREAM, "mvdream": _INDEX_MVDREAM}[model]
    _write(root, "model_index.json", index)
    _write(root / "vae", "config.json", {**SD_VAE, "_diffusers_version": index["_diffusers_version"]})
    _write(root / "scheduler", "scheduler_config.json", DDIM_024)
    if model == "zero123":
        _write(root / "unet", "config.json", ZERO123_UNET)
        _write(root / "clip_camera_projection", "config.json", CAMERA_PROJECTION)
        _write(root / "image_encoder", "config.json", ZERO123_VISION)
        _write(root / "feature_extractor", "preprocessor_config.json", PREPROCESSOR_435)
        return root
    _write(root / "unet", "config.json", IMAGEDREAM_UNET if model == "imagedream" else MVDREAM_UNET)
    _write(root / "text_encoder", "config.json", SD21_TEXT)
    _tokenizer_folder(root / "tokenizer", SD2_TOKENIZER_CONFIG, SD2_SPECIAL_MAP)
    if model == "imagedream":
        _write(root / "image_encoder", "config.json", IMAGEDREAM_VISION)
        _write(root / "feature_extractor", "preprocessor_config.json", PREPROCESSOR_OLD)
    return root


@pytest.mark.parametrize("model", ["zero123", "imagedream", "mvdream"])
def test_hub_folder_configs_load_through_the_denoiser(meta_load, monkeypatch, tmp_path, model):
    """model_index.json and every component config of the real folder, as the run loads them."""
    import guidance.multiview
    from guidance.models.imagedream import ImageDreamDenoiser
    from guidance.models.mvdream import MVDreamDenoiser
    from guidance.models.zero123 import Zero123Denoiser

    # The text denoisers encode their prompts at load time: not possible on meta tensors, skipped.
    monkeypatch.setattr(guidance.multiview.MultiViewTextDenoiser, "set_prompt", lambda self, *a, **k: None)
    cls = {"zero123": Zero123Denoiser, "imagedream": ImageDreamDenoiser, "mvdream": MVDreamDenoiser}[model]
    den = cls(str(_hub_folder(tmp_path / model, model)), device="cpu", dtype="fp16")
    assert den.latent_size == 32 and den.image_size == 256 and den.scaling_factor == 0.18215
    assert den.schedule.timesteps(2) == [501, 1]
    if model != "zero123":
        assert den.tokenizer.pad_token_id == 0 and den.tokenizer.model_max_length == 77
