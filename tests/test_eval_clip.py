"""eval_clip.py with a tiny random open_clip model built from a config file (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_clip
from core.errors import UserError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Path:
    """A tiny ViT CLIP architecture registered as 'tiny-test-clip'."""
    path = tmp_path_factory.mktemp("clipcfg") / "tiny-test-clip.json"
    path.write_text(json.dumps(TINY_CFG))
    return path


@pytest.fixture(scope="module")
def encoder(tiny_cfg):
    torch.manual_seed(0)
    return eval_clip.load_clip("tiny-test-clip", "none", device="cpu", model_config=tiny_cfg)


def _image(seed: int, size: int = 64) -> np.ndarray:
    """A white canvas with a coloured blob: distinct seeds give distinct objects."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    y, x = np.mgrid[:size, :size]
    (cy, cx), r = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.1, 0.3) * size
    img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.integers(0, 255, 3)
    img[rng.random((size, size)) < 0.1] = rng.integers(0, 255, 3)
    return img


def test_identical_scores_higher_than_different(encoder):
    ref = _image(0)
    same, same_views = eval_clip.clip_similarity(encoder, ref, np.stack([ref] * 8))
    diff, diff_views = eval_clip.clip_similarity(encoder, ref, np.stack([_image(s) for s in range(1, 9)]))
    assert len(same_views) == len(diff_views) == 8
    for s in [same, diff, *same_views, *diff_views]:
        assert -1.0 <= s <= 1.0
    assert same == pytest.approx(1.0, abs=1e-5)
    assert same > diff


def test_pretrained_local_file(tiny_cfg, encoder, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save(encoder.model.state_dict(), ckpt)
    loaded = eval_clip.load_clip("tiny-test-clip", str(ckpt), device="cpu", model_config=tiny_cfg)
    imgs = np.stack([_image(1), _image(2)])
    torch.testing.assert_close(loaded.encode(imgs), encoder.encode(imgs))


def test_download_failure_is_user_error(monkeypatch):
    import open_clip.factory

    def no_network(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    with pytest.raises(UserError) as e:
        eval_clip.load_clip("ViT-B-32", "openai", device="cpu")
    msg = str(e.value)
    assert "ViT-B-32" in msg and "openai" in msg and "--pretrained" in msg
    with pytest.raises(UserError, match="neither a file nor a tag"):
        eval_clip.load_clip("ViT-B-32", "no_such_tag", device="cpu")


def test_reference_composited_on_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "r.png")
    ref = eval_clip.load_reference(tmp_path / "r.png")
    assert ref.shape == (8, 8, 3) and ref.dtype == np.uint8
    assert (ref[0, 0] == 255).all() and tuple(ref[3, 3]) == (255, 0, 0)


def test_folder_mode(tiny_cfg, tmp_path, monkeypatch, capsys):
    from PIL import Image

    refs, meshes = tmp_path / "refs", tmp_path / "meshes"
    refs.mkdir(), meshes.mkdir()
    for i, name in enumerate(["a_rgba", "b_rgba", "c_rgba"]):
        Image.fromarray(_image(10 + i)).save(refs / f"{name}.png")
    (meshes / "a_rgba.glb").write_bytes(b"x")  # "good" mesh: renders as its reference
    (meshes / "b_rgba.obj").write_bytes(b"x")  # "bad" mesh: renders as other objects
    (meshes / "a_rgba_mesh.glb").write_bytes(b"x")  # no reference: ignored

    def fake_render(path, protocol, device="auto"):
        assert protocol.n_views == 8 and protocol.azimuths() == [0, 45, 90, 135, 180, 225, 270, 315]
        if Path(path).stem == "a_rgba":
            return np.stack([_image(10)] * protocol.n_views)
        return np.stack([_image(100 + i) for i in range(protocol.n_views)])

    monkeypatch.setattr(eval_clip, "render_mesh_views", fake_render)
    torch.manual_seed(0)
    rc = eval_clip.main(
        [
            "--refs",
            str(refs),
            "--meshes",
            str(meshes),
            "--model",
            "tiny-test-clip",
            "--model-config",
            str(tiny_cfg),
            "--pretrained",
            "none",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "a_rgba" in out and "missing" in out and "mean" in out
    report = json.loads((meshes / "clip_similarity.json").read_text())
    scores = {o["name"]: o["score"] for o in report["objects"]}
    assert set(scores) == {"a_rgba", "b_rgba"} and [m["name"] for m in report["missing"]] == ["c_rgba"]
    assert all(-1 <= s <= 1 for s in scores.values())
    assert scores["a_rgba"] > scores["b_rgba"]
    assert report["mean"] == pytest.approx(sum(scores.values()) / 2)
    assert report["protocol"]["radius"] == 3.0 and report["protocol"]["fovy"] == 49.0


def test_cli_user_errors(tmp_path, capsys):
    assert eval_clip.main(["--refs", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert eval_clip.main(["--refs", str(tmp_path), "--meshes", str(tmp_path / "m")]) == 2
    assert "pairing rule" in capsys.readouterr().err


def test_real_mesh_render(encoder):
    """The whole path with the real mesh renderer (torch backend) on the shared Duck at 64 px."""
    duck = SHARED / "meshes" / "duck.glb"
    if not duck.is_file():
        pytest.skip("../shared/data/meshes/duck.glb missing")
    proto = eval_clip.EvalProtocol(size=64, backend="torch")
    views = eval_clip.render_mesh_views(duck, proto, device="cpu")
    assert views.shape == (8, 64, 64, 3) and views.dtype == np.uint8
    assert (views[:, 0, 0] == 255).all()  # white background in the corners
    assert (views < 250).any(axis=(1, 2, 3)).all()  # the object is visible in every view
    score, per_view = eval_clip.clip_similarity(encoder, views[0], views)
    assert -1 <= score <= 1 and per_view[0] == pytest.approx(1.0, abs=1e-5)
