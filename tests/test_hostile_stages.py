"""Hostile and careless inputs at the stage level (issue 22, round two): every entry point answers
a bad input with exit 2 and one ``error:`` line before any heavy work, never a traceback."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_clip
import main
import main_gs
import main_mesh
import process
from core import config as C
from core.names import MAX_STEM_BYTES, safe_stem, stem_problem
from pipeline import preflight
from pipeline.config import DEFAULT_CONFIG, config_rules, load_config
from tools import render as render_tool

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "oracle_tiny.yaml")
CONFIGS = [ROOT / "configs" / n for n in ("image.yaml", "imagedream.yaml", "oracle_cpu.yaml")]


def one_error(capsys, rc: int) -> str:
    """Assert exit 2, exactly one ``error:`` line and no traceback on stderr; return that line."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: the checks must come first."""
    import guidance

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(guidance, "load_denoiser", refuse)


# ------------------------------------------------------------------- finding 1: save_path is a stem
@pytest.mark.parametrize(
    "name",
    [
        "../../escape",
        "/tmp/abs",
        "a/b",
        "a\\b",
        "..",
        ".hidden",
        "a\nb",
        "tab\there",
        "C:evil",
        " ",
        "x" * 181,
    ],
)
def test_save_path_must_be_a_stem(name, tmp_path, capsys, no_model):
    rc = main.main(["--config", TINY, f"outdir={tmp_path / 'out'}", f"save_path={name}"])
    line = one_error(capsys, rc)
    assert "'save_path'" in line and "stem" in line
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_stem_rules():
    assert stem_problem("cat_rgba") is None and stem_problem("é" * 90) is None
    assert stem_problem("é" * 91) == f"is longer than {MAX_STEM_BYTES} bytes"  # 182 bytes
    assert safe_stem("../x") == "_x" and safe_stem(".hidden") == "hidden" and safe_stem("..") == "output"
    assert safe_stem("a:b\x07c") == "a_b_c" and safe_stem("") == "output"
    assert len(safe_stem("é" * 200).encode()) <= MAX_STEM_BYTES and stem_problem(safe_stem("é" * 200)) is None


@pytest.mark.parametrize(
    "file_name, stem", [("..png", "output"), (".hidden.png", "hidden"), ("cat:v2.png", "cat_v2")]
)
def test_derived_save_path_is_made_safe(tmp_path, file_name, stem):
    img = tmp_path / file_name
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(img, format="PNG")
    cfg = load_config(["--config", TINY, "guidance=zero123", f"input={img}"])
    assert cfg.save_path == stem


# ----------------------------------------------------------- finding 4: every value checked at load
def _numeric_keys(path: Path) -> list[str]:
    flat = C._flatten(C._load_schema(path))
    return [k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_numeric_key_has_a_rule_and_the_shipped_configs_pass(path):
    rules = config_rules()
    missing = [k for k in _numeric_keys(path) if k not in rules]
    assert not missing, f"numeric keys of {path.name} without a range rule: {missing}"
    C.validate(C._load_schema(path), rules, path)  # the shipped values are inside every range


@pytest.mark.parametrize(
    "override, key",
    [
        ("export.max_faces=0", "export.max_faces"),
        ("export.max_faces=99", "export.max_faces"),
        ("sir.steps_max=2", "sir.steps_max"),  # below steps_min=3
        ("sir.t_end=0.9", "sir.t_end"),  # above t_start
        ("gaussians.density_end_iter=-1", "gaussians.density_end_iter"),
        ("cameras.min_ver=40", "cameras.min_ver"),  # above max_ver
        ("export.bake_size=0", "export.bake_size"),
        ("gaussians.sh_degree=-1", "gaussians.sh_degree"),
        ("gaussians.sh_degree=4", "gaussians.sh_degree"),
        ("elevation=nan", "elevation"),
        ("elevation=95", "elevation"),
        ("cameras.radius=inf", "cameras.radius"),
        ("cameras.radius=0", "cameras.radius"),
        ("sir.render_size=100000", "sir.render_size"),
        ("refine.render_size=100000", "refine.render_size"),
        ("export.grid_resolution=100000", "export.grid_resolution"),
        ("export.texture_size=100000", "export.texture_size"),
        ("gaussians.num_pts=1000000000", "gaussians.num_pts"),
        ("refine.strength=1.0", "refine.strength"),  # would index past the DDIM grid
        ("sir.eta=2", "sir.eta"),
        ("sir.views=0", "sir.views"),
        ("sir.denoise_steps=0", "sir.denoise_steps"),
        ("seed=-1", "seed"),
        ("refine.texture_lr=0", "refine.texture_lr"),
        ("export.density_thresh=0", "export.density_thresh"),
        ("sir.cfg=nan", "sir.cfg"),
        ("sir.cfg=${oc.env:HOME}", "sir.cfg"),
    ],
)
@pytest.mark.parametrize("entry", [main, main_gs, main_mesh], ids=["main", "main_gs", "main_mesh"])
def test_bad_values_fail_at_load(entry, override, key, tmp_path, capsys, no_model):
    rc = entry.main(["--config", TINY, f"outdir={tmp_path}", override])
    assert f"'{key}'" in one_error(capsys, rc)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ finding 5: outdir, disk, memory early
def test_outdir_that_is_a_file(tmp_path, capsys, no_model):
    f = tmp_path / "spot.glb"
    f.write_bytes(b"old")
    for outdir in (f, f / "sub"):
        line = one_error(capsys, main.main(["--config", TINY, f"outdir={outdir}"]))
        assert "is a file" in line and str(f) in line
    assert f.read_bytes() == b"old"


def test_read_only_outdir(tmp_path, capsys, no_model, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not preflight_writes_blocked(ro):
            # root ignores permissions: make the probe write fail as a read-only mount would
            def erofs(*a, **k):
                raise OSError(30, "Read-only file system")

            monkeypatch.setattr(preflight.tempfile, "mkstemp", erofs)
        line = one_error(capsys, main_gs.main(["--config", TINY, f"outdir={ro}"]))
        assert "not writable" in line and str(ro) in line
    finally:
        ro.chmod(0o755)


def preflight_writes_blocked(folder: Path) -> bool:
    """True when this process really cannot create a file in ``folder``."""
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


def test_full_disk_fails_before_the_model(tmp_path, capsys, no_model, monkeypatch):
    real = shutil.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=1_000_000)

    monkeypatch.setattr(preflight.shutil, "disk_usage", nearly_full)
    line = one_error(capsys, main.main(["--config", TINY, f"outdir={tmp_path}"]))
    assert "1 MB free" in line and str(tmp_path) in line


def test_infeasible_memory_names_the_key(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.setattr(preflight, "device_memory_bytes", lambda device: 4e9)
    line = one_error(
        capsys, main_gs.main(["--config", TINY, f"outdir={tmp_path}", "gaussians.num_pts=50000000"])
    )
    assert "'gaussians.num_pts'=50000000" in line and "GB" in line
    line = one_error(
        capsys, main_gs.main(["--config", TINY, f"outdir={tmp_path}", "export.texture_size=16384"])
    )
    assert "'export.texture_size'" in line


def test_memory_estimates_pass_the_shipped_configs():
    for path in CONFIGS:
        cfg = load_config(["--config", str(path), "guidance=oracle", "input="])
        preflight.check_memory(cfg, 8e9)  # every shipped config fits an 8 GB device
        assert preflight.output_bytes(cfg) < 100e6


# ----------------------------------------------------------- findings 5/6: bad meshes and PLYs
def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    glb = ROOT / ".." / "shared" / "data" / "meshes" / "duck.glb"
    data = glb.read_bytes()
    for name, content in {
        "empty.glb": b"",
        "truncated.glb": data[: len(data) // 2],
        "junk.glb": b"x" * 64,
    }.items():
        files[name] = tmp_path / name
        files[name].write_bytes(content)
    files["range.obj"] = tmp_path / "range.obj"
    files["range.obj"].write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    files["bad.ply"] = tmp_path / "bad.ply"
    files["bad.ply"].write_bytes(b"ply\nformat ascii 1.0\nelement vertex many\nend_header\n")
    return files


BAD_MESHES = ["empty.glb", "truncated.glb", "junk.glb", "range.obj"]


@pytest.mark.parametrize("name", [*BAD_MESHES, "bad.ply"])
def test_tools_render_bad_file(tmp_path, capsys, name):
    path = _bad_files(tmp_path)[name]
    rc = render_tool.main([str(path), "--out", str(tmp_path / "out"), "--size", "16", "--device", "cpu"])
    assert name in one_error(capsys, rc)


@pytest.mark.parametrize("name", BAD_MESHES)
def test_stage2_bad_mesh(tmp_path, capsys, name):
    path = _bad_files(tmp_path)[name]
    rc = main_mesh.main(["--config", TINY, f"outdir={tmp_path / 'out'}", f"mesh={path}"])
    assert name in one_error(capsys, rc)
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir()]


def test_stage2_mesh_with_nan_vertices_fails_at_load(tmp_path, capsys):
    path = tmp_path / "nan.obj"
    path.write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1\n")
    line = one_error(capsys, main_mesh.main(["--config", TINY, f"outdir={tmp_path / 'out'}", f"mesh={path}"]))
    assert "non-finite" in line and "nan.obj" in line


# ------------------------------------------------------- finding 6: model folders that do not load
@pytest.fixture(scope="module")
def tiny_zero123():
    from testing.random_zero123 import cached_tiny_zero123

    return cached_tiny_zero123()


@pytest.fixture()
def rgba_input(tmp_path) -> Path:
    a = np.zeros((32, 32, 4), np.uint8)
    a[8:24, 8:24] = (200, 30, 30, 255)
    path = tmp_path / "in.png"
    Image.fromarray(a, "RGBA").save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("breakage", ["architecture", "pickle"])
def test_broken_model_folder(tmp_path, capsys, tiny_zero123, rgba_input, breakage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_zero123, folder)
    unet = folder / "unet"
    if breakage == "architecture":
        cfg = json.loads((unet / "config.json").read_text())
        cfg["block_out_channels"] = [2 * c for c in cfg["block_out_channels"]]
        (unet / "config.json").write_text(json.dumps(cfg))
    else:
        for f in unet.glob("*.safetensors"):
            f.unlink()
        torch.save({"conv_in.weight": torch.zeros(1)}, unet / "diffusion_pytorch_model.bin")
    argv = ["--config", TINY, "guidance=zero123", f"model.path={folder}", f"input={rgba_input}"]
    line = one_error(capsys, main_gs.main([*argv, f"outdir={tmp_path / 'out'}"]))
    assert "cannot load the zero123 model" in line and str(folder) in line and "model.path" in line


# ------------------------------------------------------------------- eval_clip and process.py
def test_eval_clip_bad_checkpoint(tmp_path, capsys):
    ref, mesh, ckpt = tmp_path / "ref.png", tmp_path / "m.glb", tmp_path / "bad.bin"
    Image.new("RGB", (8, 8)).save(ref)
    shutil.copy(ROOT / ".." / "shared" / "data" / "meshes" / "duck.glb", mesh)
    ckpt.write_text("not a checkpoint")
    import open_clip  # noqa: F401  (imported before the clock starts: the import alone takes seconds)

    t0 = time.perf_counter()
    rc = eval_clip.main(
        ["--ref", str(ref), "--mesh", str(mesh), "--pretrained", str(ckpt), "--device", "cpu"]
    )
    assert "not a PyTorch or safetensors file" in one_error(capsys, rc)
    assert time.perf_counter() - t0 < 5  # refused before the (huge) model is built


def test_eval_clip_checkpoint_of_another_model(tmp_path, capsys):
    ref, mesh, ckpt = tmp_path / "ref.png", tmp_path / "m.glb", tmp_path / "other.pt"
    Image.new("RGB", (8, 8)).save(ref)
    shutil.copy(ROOT / ".." / "shared" / "data" / "meshes" / "duck.glb", mesh)
    torch.save({"something.else": torch.zeros(2)}, ckpt)
    cfg = tmp_path / "tiny-hostile-clip.json"
    cfg.write_text(
        json.dumps(
            {
                "embed_dim": 8,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
                "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1},
            }
        )
    )
    argv = [
        "--ref",
        str(ref),
        "--mesh",
        str(mesh),
        "--model",
        "tiny-hostile-clip",
        "--model-config",
        str(cfg),
    ]
    rc = eval_clip.main([*argv, "--pretrained", str(ckpt), "--device", "cpu"])
    assert f"cannot load CLIP checkpoint {ckpt}" in one_error(capsys, rc)


@pytest.mark.parametrize("offline", ["env", "unreachable"])
def test_eval_clip_offline_fails_fast(tmp_path, capsys, monkeypatch, offline):
    """Finding 8: no hub retries; the one-line message comes in well under 5 s."""
    import socket

    calls = []

    def no_download(*a, **k):
        calls.append(a)
        raise AssertionError("a download was attempted")

    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

        def refused(*a, **k):
            raise OSError("Network is unreachable")

        monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ref, mesh = tmp_path / "ref.png", tmp_path / "m.glb"
    Image.new("RGB", (8, 8)).save(ref)
    shutil.copy(ROOT / ".." / "shared" / "data" / "meshes" / "duck.glb", mesh)
    t0 = time.perf_counter()
    rc = eval_clip.main(
        [
            "--ref",
            str(ref),
            "--mesh",
            str(mesh),
            "--cache-dir",
            str(tmp_path / "empty-cache"),
            "--device",
            "cpu",
        ]
    )
    line = one_error(capsys, rc)
    assert time.perf_counter() - t0 < 5 and not calls
    assert "hub is unreachable" in line and "--pretrained" in line and "ViT-bigG-14" in line


def test_process_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    assert "bad.png" in one_error(capsys, process.main([str(bad)]))
    assert "--size" in one_error(capsys, process.main([str(bad), "--size", "0"]))
    assert "not found" in one_error(capsys, process.main([str(tmp_path / "nope.png")]))


def test_default_config_path_exists():
    assert DEFAULT_CONFIG.is_file()


# ------------------------------------------------- finding 4: suspicious images warn the user
class _Stop(Exception):
    """Raised in place of the model load: the image has been read by then."""


@pytest.mark.parametrize(
    "size, box, warning",
    [(32, None, "no transparent pixel"), (1, None, "to ref_size")],
    ids=["opaque", "1x1"],
)
def test_suspicious_input_warns_on_stderr(tmp_path, capsys, monkeypatch, size, box, warning):
    import guidance

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(guidance, "load_denoiser", stop)
    img = tmp_path / "in.png"
    Image.fromarray(np.full((size, size, 4), (200, 30, 30, 255), np.uint8), "RGBA").save(img)
    with pytest.raises(_Stop):
        main_gs.main(["--config", TINY, "guidance=zero123", f"input={img}", f"outdir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert warning in err and "in.png" in err and "[WARNING]" in err
