"""Loading through guidance.nets: no diffusers/transformers at run time, one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from guidance.nets.sd_unet import load_sd_unet
from guidance.nets.weights import ModelFolderError, load_module, read_weights
from tests.fresh_python import imported_after

ROOT = Path(__file__).resolve().parents[1]
#: What loading and running a model must leave unimported (tests.fresh_python.imported_after).
NO_RUNTIME_IMPORT = ("diffusers", "transformers", "accelerate", "torch._dynamo")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder():
    from testing.random_zero123 import cached_tiny_zero123

    return cached_tiny_zero123()


def test_zero123_runs_without_diffusers_or_transformers(tiny_folder):
    """configs/image.yaml + the tiny folder, loaded and run once in a fresh interpreter."""
    code = (
        "import sys, time, torch\n"
        "from core.config import load_config\n"
        "from core.cameras import orbit_cameras\n"
        "import guidance\n"
        f"cfg = load_config(['--config', 'configs/image.yaml', 'model.path={tiny_folder}', 'model.dtype=fp32'])\n"
        "t0 = time.perf_counter()\n"
        "den = guidance.load_denoiser(cfg, 'cpu')\n"
        "load_s = time.perf_counter() - t0\n"
        "den.set_reference(torch.rand(3, 64, 64), 0.0)\n"
        "lat = den.encode(torch.rand(2, 3, 64, 64))\n"
        "cond = den.prepare(orbit_cameras([0.0, 0.0], [30.0, 90.0], height=64))\n"
        "eps = den.eps_cfg(lat, 501, cond, 3.0)\n"
        "assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()\n"
        "print('load_s:', round(load_s, 3))\n"
    )
    # torch._dynamo costs ~1 s of a cold start; building on the meta device must not pull it in.
    heavy, out = imported_after(code, NO_RUNTIME_IMPORT)
    print(out)
    assert heavy == []


_MULTIVIEW_RUN = {
    "imagedream": (
        "from guidance.models.imagedream import ImageDreamDenoiser as Den\n"
        "from testing.random_imagedream import cached_tiny_imagedream as tiny\n",
        "den.set_reference(torch.rand(3, 64, 64), 0.0, prompt='a cat')\n",
    ),
    "mvdream": (
        "from guidance.models.mvdream import MVDreamDenoiser as Den\n"
        "from testing.random_mvdream import cached_tiny_mvdream as tiny\n",
        "den.set_prompt('a cat', 'ugly')\n",
    ),
}


@pytest.mark.parametrize("model", sorted(_MULTIVIEW_RUN))
def test_multiview_models_run_without_diffusers_or_transformers(model):
    """Tiny ImageDream / MVDream loaded, conditioned and run once in a fresh interpreter."""
    imports, condition = _MULTIVIEW_RUN[model]
    tiny_folder = {"imagedream": "cached_tiny_imagedream", "mvdream": "cached_tiny_mvdream"}[model]
    # The folder is written in this process (that needs diffusers/transformers), not in the child.
    folder = getattr(__import__(f"testing.random_{model}", fromlist=[tiny_folder]), tiny_folder)()
    code = (
        "import sys, time, torch\n"
        "from core.cameras import orbit_cameras\n"
        "t0 = time.perf_counter()\n"
        + imports
        + f"den = Den({str(folder)!r}, device='cpu', dtype='fp32', prompt='a dog')\n"
        "load_s = time.perf_counter() - t0\n"
        + condition
        + "cams = orbit_cameras([0.0] * 4, [0.0, 90.0, 180.0, 270.0], height=64)\n"
        "eps = den.eps_cfg(torch.randn(4, 4, 8, 8), 501, den.prepare(cams), 3.0)\n"
        "assert eps.shape == (4, 4, 8, 8) and torch.isfinite(eps).all()\n"
        "print('load_s:', round(load_s, 3))\n"
    )
    heavy, out = imported_after(code, NO_RUNTIME_IMPORT)
    print(model, out)
    assert heavy == []


def _broken_copy(tiny_folder: Path, tmp_path: Path) -> Path:
    unet = tmp_path / "unet"
    shutil.copytree(tiny_folder / "unet", unet)
    return unet


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, UserError)
    return msg


def test_missing_key_is_one_line_user_error(tiny_folder, tmp_path):
    unet = _broken_copy(tiny_folder, tmp_path)
    _rewrite(unet, lambda s: s.pop("mid_block.attentions.0.proj_in.weight"))
    with pytest.raises(ModelFolderError) as err:
        load_sd_unet(unet, torch.float32, "cpu")
    msg = _one_line(err)
    assert str(unet) in msg and "missing keys: mid_block.attentions.0.proj_in.weight" in msg


def test_unexpected_key_and_wrong_shape(tiny_folder, tmp_path):
    unet = _broken_copy(tiny_folder, tmp_path)

    def edit(s):
        s["extra.weight"] = torch.zeros(2)
        s["conv_out.bias"] = torch.zeros(5)

    _rewrite(unet, edit)
    with pytest.raises(ModelFolderError) as err:
        load_sd_unet(unet, torch.float32, "cpu")
    msg = _one_line(err)
    assert "unexpected keys: extra.weight" in msg
    assert "shape mismatch: conv_out.bias [5] in the file vs [4] in the model" in msg


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("only_cross_attention", True, "only_cross_attention=True is not supported"),
        ("num_attention_heads", 8, "num_attention_heads=8 is not supported"),
        ("class_embed_type", "timestep", "class_embed_type='timestep'"),
        ("brand_new_option", 1, "key 'brand_new_option'=1 is not supported"),
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"], "down_block_types="),
    ],
)
def test_unsupported_config_values_are_named(tiny_folder, tmp_path, key, value, words):
    unet = _broken_copy(tiny_folder, tmp_path)
    cfg = json.loads((unet / "config.json").read_text())
    cfg[key] = value
    (unet / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError) as err:
        load_sd_unet(unet, torch.float32, "cpu")
    assert words in _one_line(err)


def test_unknown_keys_of_switched_off_features_are_accepted(tiny_folder, tmp_path):
    """Keys another diffusers version writes for a feature it knows, left null/false, load fine."""
    unet = _broken_copy(tiny_folder, tmp_path)
    cfg = json.loads((unet / "config.json").read_text())
    cfg |= {"some_future_embedding": None, "some_future_switch": False}
    (unet / "config.json").write_text(json.dumps(cfg))
    a = load_sd_unet(unet, torch.float32, "cpu")
    b = load_sd_unet(tiny_folder / "unet", torch.float32, "cpu")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_bin_only_folder_and_dtype(tiny_folder, tmp_path):
    """A folder with only a .bin loads (weights_only, mmap) and gives the same network; dtype is applied."""
    from safetensors.torch import load_file

    unet = _broken_copy(tiny_folder, tmp_path)
    path = unet / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    path.unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    a = load_sd_unet(tiny_folder / "unet", torch.float32, "cpu")
    b = load_sd_unet(unet, torch.float32, "cpu")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    half = read_weights(unet, torch.bfloat16, torch.device("cpu"))
    assert {v.dtype for v in half.values()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in b.parameters()) and not b.training


def test_no_weights_and_truncated_file(tiny_folder, tmp_path):
    unet = _broken_copy(tiny_folder, tmp_path)
    path = unet / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFolderError) as err:
        load_sd_unet(unet, torch.float32, "cpu")
    assert "cannot read weights" in _one_line(err)
    path.unlink()
    with pytest.raises(ModelFolderError, match="has no weights"):
        load_module(lambda: torch.nn.Linear(2, 2), unet, torch.float32, "cpu")
