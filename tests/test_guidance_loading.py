"""Model resolution: local folders, the Hub cache, and the one-line offline error."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from guidance.loading import resolve_model


def test_local_folder_is_returned(tmp_path):
    assert resolve_model(tmp_path) == tmp_path


def test_missing_local_folder_names_the_key(tmp_path):
    with pytest.raises(UserError) as e:
        resolve_model(str(tmp_path / "nope"), config_key="model.path")
    msg = str(e.value)
    assert "\n" not in msg and "model.path=" in msg and "nope" in msg


def test_offline_not_cached_error_is_one_line(tmp_path):
    cache = tmp_path / "hub-cache"
    with pytest.raises(UserError) as e:
        resolve_model("ashawkey/stable-zero123-diffusers", cache_dir=cache, local_files_only=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "ashawkey/stable-zero123-diffusers" in msg
    assert str(cache) in msg
    assert "model.path=/path/to/folder" in msg


def test_cached_snapshot_is_used_offline(tmp_path):
    # A hand-made cache entry in the hub layout: models--org--name/{refs/main, snapshots/<rev>/...}
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    rev = "0" * 40
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "Zero123Pipeline"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    got = resolve_model("org/tiny", cache_dir=cache, local_files_only=True)
    assert got == snap


def test_zero123_rejects_incomplete_folder(tmp_path):
    from guidance.models.zero123 import Zero123Denoiser

    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    (tmp_path / "unet").mkdir()
    with pytest.raises(UserError, match="lacks component"):
        Zero123Denoiser(tmp_path, device="cpu", dtype="fp32")
