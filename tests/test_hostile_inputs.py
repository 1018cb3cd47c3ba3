"""Hostile and careless inputs to the lower layers (issue 22): each case fails with one line, or loads
without touching anything outside the input's folder."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import ConfigError, at_least, at_most, check, in_range, load_config, validate
from core.errors import UserError
from core.images import OnnxMaskModel, load_image, read_rgba, remove_background
from gs_renderer.model import GaussianModel
from gs_renderer.ply import PlyError, load_ply, save_ply
from mesh_renderer import Mesh, load_mesh, save_mesh
from mesh_renderer.io import MeshFileError

ROOT = Path(__file__).resolve().parents[1]

# A texture that must never be read: a 2x2 image of one unmistakable colour.
SECRET_RGB = (7, 201, 99)

OBJ_BODY = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nusemtl m\nf 1/1 2/2 3/3\n"


def one_line(err: BaseException) -> str:
    """The error's message, asserted to be one non-empty line."""
    text = str(err)
    assert text and "\n" not in text, text
    return text


def secret_image(path: Path) -> Path:
    """Write the secret 2x2 PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), SECRET_RGB).save(path)
    return path


def obj_with_mtl(folder: Path, map_line: str, mtllib: str = "m.mtl") -> Path:
    """``folder/mesh.obj`` using ``folder/m.mtl`` whose material has ``map_line``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.mtl").write_text(f"newmtl m\nKd 1 1 1\n{map_line}\n")
    obj = folder / "mesh.obj"
    obj.write_text(f"mtllib {mtllib}\n{OBJ_BODY}")
    return obj


# ------------------------------------------------------------------------------ path escapes (mesh)
@pytest.mark.parametrize(
    "ref",
    [
        "{secret}",  # absolute path
        "../outside/secret.png",
        "sub/../../outside/secret.png",
        "..\\outside\\secret.png",  # Windows separators
        "file://{secret}",
        "C:\\Users\\bob\\secret.png",
        "-bm 1 ../outside/secret.png",  # options before the name
    ],
)
def test_mtl_texture_outside_folder_is_refused(tmp_path, ref):
    secret = secret_image(tmp_path / "outside" / "secret.png")
    obj = obj_with_mtl(tmp_path / "model", "map_Kd " + ref.format(secret=secret))
    with pytest.raises(MeshFileError) as e:
        load_mesh(obj)
    msg = one_line(e.value)
    assert isinstance(e.value, UserError)
    assert "mesh.obj" in msg and "m.mtl" in msg and "map_Kd" in msg and "inside" in msg


def test_other_texture_maps_are_checked_too(tmp_path):
    secret = secret_image(tmp_path / "outside" / "secret.png")
    obj = obj_with_mtl(tmp_path / "model", f"map_Kd ok.png\nbump {secret}")
    secret_image(tmp_path / "model" / "ok.png")
    with pytest.raises(MeshFileError, match="bump"):
        load_mesh(obj)


def test_mtllib_outside_folder_is_not_read(tmp_path):
    outside = tmp_path / "etc"
    outside.mkdir()
    secret = secret_image(outside / "secret.png")
    (outside / "passwd").write_text(f"newmtl m\nmap_Kd {secret}\n")
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    obj = folder / "mesh.obj"
    obj.write_text(f"mtllib ../../etc/passwd\n{OBJ_BODY}")
    with pytest.raises(MeshFileError, match=r"mtllib '\.\./\.\./etc/passwd' goes up with '\.\.'"):
        load_mesh(obj)
    obj.write_text(f"mtllib {outside / 'passwd'}\n{OBJ_BODY}")
    with pytest.raises(MeshFileError, match="is an absolute path"):
        load_mesh(obj)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    secret = secret_image(tmp_path / "outside" / "secret.png")
    obj = obj_with_mtl(tmp_path / "model", "map_Kd tex.png")
    (tmp_path / "model" / "tex.png").symlink_to(secret)
    with pytest.raises(MeshFileError, match="symlink"):
        load_mesh(obj)
    # A symlinked folder that stays inside is fine, and so is a real texture in a subfolder.
    secret_image(tmp_path / "model" / "textures" / "real.png")
    obj = obj_with_mtl(tmp_path / "model", "map_Kd textures\\real.png")
    mesh = load_mesh(obj)
    assert mesh.albedo is not None and mesh.albedo.shape == (2, 2, 3)
    assert torch.allclose(mesh.albedo[0, 0], torch.tensor(SECRET_RGB) / 255.0)


def _gltf_with_image_uri(folder: Path, uri: str) -> Path:
    """A one-triangle .gltf with an embedded buffer whose texture image is ``uri``."""
    import base64

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    uv = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
    idx = np.array([0, 1, 2], np.uint32)
    blob = v.tobytes() + uv.tobytes() + idx.tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "buffers": [
            {
                "byteLength": len(blob),
                "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode(),
            }
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 24},
            {"buffer": 0, "byteOffset": 60, "byteLength": 12},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": 3,
                "type": "VEC3",
                "min": [0, 0, 0],
                "max": [1, 1, 0],
            },
            {"bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5125, "count": 3, "type": "SCALAR"},
        ],
        "images": [{"uri": uri}],
        "textures": [{"source": 0}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
        "meshes": [
            {"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tri.gltf"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "ref", ["{secret}", "../outside/secret.png", "%2E%2E/outside/secret.png", "file:{secret}"]
)
def test_gltf_image_uri_outside_folder_is_refused(tmp_path, ref):
    secret = secret_image(tmp_path / "outside" / "secret.png")
    # trimesh falls back to the bare file name inside the folder: put a copy there as bait.
    secret_image(tmp_path / "model" / "secret.png")
    path = _gltf_with_image_uri(tmp_path / "model", ref.format(secret=secret))
    with pytest.raises(MeshFileError) as e:
        load_mesh(path)
    assert "image URI" in one_line(e.value) and "tri.gltf" in one_line(e.value)


def test_gltf_image_uri_inside_folder_loads(tmp_path):
    secret_image(tmp_path / "model" / "tex.png")
    mesh = load_mesh(_gltf_with_image_uri(tmp_path / "model", "tex.png"))
    assert len(mesh.f) == 1 and mesh.albedo is not None
    assert torch.allclose(mesh.albedo[0, 0], torch.tensor(SECRET_RGB) / 255.0, atol=1e-6)


def test_refused_texture_never_reaches_an_output(tmp_path):
    """Through tools.render (exit 2, one line, no traceback): the secret is not embedded anywhere."""
    secret = secret_image(tmp_path / "outside" / "secret.png")
    obj = obj_with_mtl(tmp_path / "model", f"map_Kd {secret}")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.render", str(obj), "--out", str(out), "--size", "16", "--views", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "map_Kd" in lines[-1]
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------------------- bad meshes
@pytest.mark.parametrize(
    "body, match",
    [
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "vertex index 4, out of range for its 3 vertices"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "line 4.*start at 1"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -1 -2 -4\n", "out of range"),
        ("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite.*vertex 2"),
        ("v 0 0 0\nv inf 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
        ("v 0 0 0\nv 1 zero 0\nv 0 1 0\nf 1 2 3\n", "line 2: cannot parse"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n", "line 4: cannot parse a face index"),
        ("v 0 0 0\nv 1 0 0\nf 1 2\n", "line 3.*fewer than 3"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no triangles"),
        ("", "no vertices"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/2 3/5\n", "texture coordinate index out of range"),
    ],
)
def test_bad_obj_is_one_line_user_error(tmp_path, body, match):
    path = tmp_path / "bad.obj"
    path.write_text(body)
    with pytest.raises(MeshFileError, match=match) as e:
        load_mesh(path)
    assert "bad.obj" in one_line(e.value)


def test_negative_obj_indices_are_relative_to_their_line(tmp_path):
    # Two triangles, each written right after its vertices with relative indices.
    path = tmp_path / "rel.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 5 5 5\nv 6 5 5\nv 5 6 5\nf -3 -2 -1\n")
    mesh = load_mesh(path)
    assert mesh.f.tolist() == [[0, 1, 2], [3, 4, 5]]
    # Mixed token layouts in one file take the exact per-line path.
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nf 1/1 2/1 3/1\nf 2//1 4//1 3//1\n")
    assert load_mesh(path).f.tolist() == [[0, 1, 2], [1, 3, 2]]


def _glb_bytes(tmp_path: Path) -> bytes:
    mesh = Mesh(v=torch.tensor([[0.0, 0, 0], [1.25, 0, 0], [0, 1, 0]]), f=torch.tensor([[0, 1, 2]]))
    return save_mesh(mesh, tmp_path / "ok.glb").read_bytes()


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"PK\x03\x04" + b[4:], "not a binary glTF"),
        (lambda b: b[:20] + b"{" * 8 + b[28:], "JSON does not parse"),
        (lambda b: b[:12] + struct.pack("<I", 10**6) + b[16:], "truncated"),
    ],
)
def test_corrupt_glb_is_one_line_user_error(tmp_path, mangle, match):
    path = tmp_path / "bad.glb"
    path.write_bytes(mangle(_glb_bytes(tmp_path)))
    with pytest.raises(MeshFileError, match=match) as e:
        load_mesh(path)
    assert "bad.glb" in one_line(e.value)


def test_gltf_with_broken_accessors_is_one_line_user_error(tmp_path):
    path = _gltf_with_image_uri(tmp_path, "data:image/png;base64,AAAA")
    doc = json.loads(path.read_text())
    doc["accessors"][0]["bufferView"] = 7
    path.write_text(json.dumps(doc))
    with pytest.raises(MeshFileError, match="corrupt glTF") as e:
        load_mesh(path)
    one_line(e.value)
    path.write_text("[1, 2]")
    with pytest.raises(MeshFileError, match="not an object"):
        load_mesh(path)


def test_glb_with_nan_vertices_is_refused(tmp_path):
    data = _glb_bytes(tmp_path)
    one = np.array([1.25, 0, 0], np.float32).tobytes()
    assert data.count(one) == 1  # vertex 2 of the triangle, in the binary chunk
    path = tmp_path / "nan.glb"
    path.write_bytes(data.replace(one, np.array([np.nan, 0, 0], np.float32).tobytes()))
    with pytest.raises(MeshFileError, match="non-finite"):
        load_mesh(path)


# ----------------------------------------------------------------------------------------- bad PLYs
def _ply(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    n = 4
    model = GaussianModel(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, 3, 3, generator=g),
        sh_degree=1,
    )
    return save_ply(model, tmp_path / "ok.ply")


def _header_and_body(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode(), data[end:]


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda h, b: ("", b""), "not a PLY"),
        (lambda h, b: ("solid cube\n", b""), "not a PLY"),
        (lambda h, b: (h, b[: len(b) // 2]), "truncated PLY data"),
        (lambda h, b: (h.replace("end_header\n", ""), b""), "no 'end_header'"),
        (
            lambda h, b: (h.replace("property float opacity\n", ""), b[: len(b) * 25 // 26]),
            "lacks the properties opacity",
        ),
        (lambda h, b: (h.replace("element vertex 4", "element vertex many"), b), "bad PLY header line"),
        (lambda h, b: (h.replace("element vertex 4", "element vertex 400"), b), "truncated PLY data"),
        (lambda h, b: (h.replace("binary_little_endian", "ascii"), b), "need a binary_little_endian"),
        (lambda h, b: (h.replace("property float x", "property quaternion x"), b), "bad PLY property"),
        (lambda h, b: (h.replace("element vertex 4", "element vertex 0"), b""), "no Gaussians"),
        (lambda h, b: (h, b"\xff" * 4 + b[4:]), "'x' has non-finite"),  # NaN bit pattern
        (lambda h, b: ("ply\n" + "\x00\xff" * 40000, b""), "corrupt PLY header"),
    ],
)
def test_bad_ply_is_one_line_user_error(tmp_path, mangle, match):
    header, body = _header_and_body(_ply(tmp_path))
    new_header, new_body = mangle(header, body)
    path = tmp_path / "bad.ply"
    path.write_bytes(new_header.encode("latin-1") + new_body)
    with pytest.raises(PlyError, match=match) as e:
        load_ply(path)
    assert isinstance(e.value, UserError) and "bad.ply" in one_line(e.value)


def test_good_ply_still_loads(tmp_path):
    model = load_ply(_ply(tmp_path))
    assert model.num_points == 4 and model.sh_degree == 1


# ------------------------------------------------------------------------------------------- config
@pytest.fixture()
def cfg_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "input: ''\nsave_path: ''\nseed: 0\nname: x\n"
        "sir:\n  cfg: 3.0\n  steps_min: 10\n  steps_max: 20\n  elev: [-10.0, 10.0]\n"
        "export:\n  max_faces: 1000\n"
    )
    return path


RULES = {
    "sir.steps_max": at_least("sir.steps_min"),
    "sir.steps_min": in_range(1, 1000),
    "export.max_faces": at_least(100),
    "sir.cfg": at_most(50),
}


def load(path: Path, *overrides: str, rules=RULES):
    return load_config(["--config", str(path), *overrides], rules=rules)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sir.cfg=nan", "sir.cfg"),
        ("sir.cfg=inf", "sir.cfg"),
        ("sir.cfg=-inf", "sir.cfg"),
        ("sir.elev=[0, .nan]", r"sir.elev\[1\]"),
        ("sir.cfg=${oc.env:HOME}", "sir.cfg"),
        ("seed=${name}", "seed"),
        ("sir.steps_min=1.5", "sir.steps_min"),
        ("sir.steps_min=ten", "sir.steps_min"),
        ("sir.steps_min=0", "sir.steps_min"),
        ("sir.steps_min=5000", "sir.steps_min"),
        ("sir.steps_max=5", "sir.steps_max"),
        ("export.max_faces=0", "export.max_faces"),
        ("sir.cfg=${sir.nope}", "sir.nope"),
    ],
)
def test_bad_config_values_name_the_key(cfg_file, override, key):
    with pytest.raises(ConfigError, match=rf"'?{key}'?") as e:
        load(cfg_file, override)
    one_line(e.value)
    assert isinstance(e.value, UserError)


def test_config_messages(cfg_file):
    with pytest.raises(ConfigError, match=r"'sir.cfg'.*must be a finite number, got nan"):
        load(cfg_file, "sir.cfg=nan")
    with pytest.raises(ConfigError, match=r"'sir.cfg'.*after interpolation.*expects a number, got '/"):
        load(cfg_file, "sir.cfg=${oc.env:HOME}")
    with pytest.raises(ConfigError, match=r"'sir.steps_max'.*must be >= sir.steps_min \(30\), got 20"):
        load(cfg_file, "sir.steps_min=30")
    with pytest.raises(ConfigError, match=r"'export.max_faces'.*must be >= 100, got 0"):
        load(cfg_file, "export.max_faces=0")
    with pytest.raises(ConfigError, match=r"'sir.steps_min'.*must be in \[1, 1000\], got 0"):
        load(cfg_file, "sir.steps_min=0")


def test_interpolations_are_resolved_then_typed(cfg_file, monkeypatch):
    monkeypatch.setenv("MD_TEST_CFG", "4.5")
    cfg = load(
        cfg_file, "sir.cfg=${oc.env:MD_TEST_CFG}", "seed=${sir.steps_min}", "input=${oc.env:MD_TEST_CFG}.png"
    )
    assert cfg.sir.cfg == 4.5 and isinstance(cfg.sir.cfg, float)
    assert cfg.seed == 10 and isinstance(cfg.seed, int)
    assert cfg.input == "4.5.png" and cfg.save_path == "4.5"  # save_path follows the resolved input
    # The resolved value is checked by the rules too.
    monkeypatch.setenv("MD_TEST_CFG", "99")
    with pytest.raises(ConfigError, match=r"'sir.cfg'.*must be <= 50, got 99.0"):
        load(cfg_file, "sir.cfg=${oc.env:MD_TEST_CFG}")


def test_cross_rules_skip_unset_keys_and_take_custom_checks():
    cfg = {"a": {"lo": 3, "hi": 5}, "b": None}
    rules = {
        "a.hi": [at_least("a.lo"), at_least("b")],  # b is null: that rule is skipped
        "a.lo": check(lambda lo, hi: hi - lo <= 2, "be within 2 of a.hi ({0})", needs=["a.hi"]),
    }
    validate(cfg, rules)
    cfg["a"]["lo"] = 6
    with pytest.raises(ConfigError, match=r"'a.hi' in the config must be >= a.lo \(6\), got 5"):
        validate(cfg, rules)
    cfg["a"]["lo"] = 1
    with pytest.raises(ConfigError, match=r"'a.lo'.*must be within 2 of a.hi \(5\), got 1"):
        validate(cfg, rules)
    with pytest.raises(ConfigError, match=r"'a.hi'.*must be <= 4"):
        validate(cfg, {"a.hi": at_most(4)})


# ------------------------------------------------------------------------------------------- images
def _rgba_png(path: Path, size: int, box: tuple[int, int, int, int] | None) -> Path:
    """A ``size`` square RGBA PNG, opaque red inside ``box`` (all of it when None)."""
    a = np.zeros((size, size, 4), np.uint8)
    if box is None:
        a[...] = (200, 30, 30, 255)
    else:
        y0, y1, x0, x1 = box
        a[y0:y1, x0:x1] = (200, 30, 30, 255)
    Image.fromarray(a, "RGBA").save(path)
    return path


def test_opaque_rgba_warns(tmp_path, caplog):
    path = _rgba_png(tmp_path / "opaque.png", 64, None)
    with caplog.at_level(logging.WARNING, logger="core.images"):
        rgba = read_rgba(path)
    assert rgba[..., 3].min() == 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "opaque.png" in warned[0] and "no transparent pixel" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="core.images"):
        read_rgba(_rgba_png(tmp_path / "cut.png", 64, (10, 50, 10, 50)))
    assert not caplog.records


@pytest.mark.parametrize("recenter", [True, False])
def test_tiny_image_upscaled_warns(tmp_path, caplog, recenter):
    tiny = _rgba_png(tmp_path / "tiny.png", 4, (1, 3, 1, 3) if recenter else None)
    with caplog.at_level(logging.WARNING, logger="core.images"):
        rgb, _ = load_image(tiny, ref_size=64, recenter=recenter)
    assert rgb.shape == (3, 64, 64)
    warned = [r.getMessage() for r in caplog.records if "to ref_size" in r.getMessage()]
    factor = 25.5 if recenter else 16.0  # int(64*0.8)/2 and 64/4
    assert len(warned) == 1 and f"{factor:.1f}x" in warned[0] and "tiny.png" in warned[0]
    caplog.clear()
    big = _rgba_png(tmp_path / "big.png", 64, (10, 54, 10, 54))
    with caplog.at_level(logging.WARNING, logger="core.images"):
        load_image(big, ref_size=64, recenter=recenter)
    assert not [r for r in caplog.records if "to ref_size" in r.getMessage()]


def test_unreadable_image_stays_an_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(UserError, match="bad.png") as e:
        load_image(bad)
    one_line(e.value)


# ------------------------------------------------------------------------ rembg with a local model
def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_field(field: int, value: bytes | str | int) -> bytes:
    """One protobuf field: ints as varints, bytes/str length-delimited."""
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def _onnx_tensor(name: str, arr: np.ndarray) -> bytes:
    dims = b"".join(_pb_field(1, d) for d in arr.shape)
    return dims + _pb_field(2, 1) + _pb_field(8, name) + _pb_field(9, arr.astype("<f4").tobytes())


def _onnx_value(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_pb_field(1, _pb_field(1, d)) for d in shape)
    tensor_type = _pb_field(1, 1) + _pb_field(2, dims)  # elem_type FLOAT, shape
    return _pb_field(1, name) + _pb_field(2, _pb_field(1, tensor_type))


def _onnx_node(op: str, inputs: list[str], output: str) -> bytes:
    return b"".join(_pb_field(1, i) for i in inputs) + _pb_field(2, output) + _pb_field(4, op)


def tiny_u2net(path: Path) -> Path:
    """A 2-layer 1x1-conv net with u2net's input/output layout, as an ONNX file (no onnx package needed).

    Its output rises as the pixel darkens (minus the channel mean), so on a dark object over a
    white background the min-max normalised mask is ~1 on the object and ~0 around it.
    """
    w1 = np.full((2, 3, 1, 1), -1.0 / 3.0)
    w2 = np.full((1, 2, 1, 1), 0.5)
    nodes = [
        _onnx_node("Conv", ["input.1", "w1", "b1"], "h"),
        _onnx_node("Relu", ["h"], "r"),
        _onnx_node("Conv", ["r", "w2", "b2"], "y"),
        _onnx_node("Sigmoid", ["y"], "1959"),
    ]
    inits = [("w1", w1), ("b1", np.full(2, 3.0)), ("w2", w2), ("b2", np.zeros(1))]
    graph = (
        b"".join(_pb_field(1, n) for n in nodes)
        + _pb_field(2, "tiny_u2net")
        + b"".join(_pb_field(5, _onnx_tensor(n, a)) for n, a in inits)
        + _pb_field(11, _onnx_value("input.1", (1, 3, 320, 320)))
        + _pb_field(12, _onnx_value("1959", (1, 1, 320, 320)))
    )
    model = _pb_field(1, 7) + _pb_field(8, _pb_field(1, "") + _pb_field(2, 13)) + _pb_field(7, graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


def test_rembg_model_file_from_any_folder(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_u2net(tmp_path / "anywhere" / "else" / "u2net.onnx")
    rgb = np.ones((48, 64, 3), np.float32)
    rgb[12:36, 20:44] = (0.1, 0.2, 0.1)  # a dark object on white
    rgba = remove_background(rgb, str(model))
    assert rgba.shape == (48, 64, 4)
    assert np.array_equal(rgba[..., :3], rgb)
    alpha = rgba[..., 3]
    assert alpha[16:32, 24:40].min() > 0.9 and alpha[:6].max() < 0.1 and alpha[:, :8].max() < 0.1
    # Through read_rgba: an RGB file takes the same route.
    jpg = tmp_path / "in.png"
    Image.fromarray((rgb * 255).astype(np.uint8), "RGB").save(jpg)
    assert read_rgba(jpg, str(model))[20, 30, 3] > 0.9
    assert isinstance(OnnxMaskModel(model).size, tuple)


def test_rembg_model_file_missing_or_not_a_model(tmp_path):
    from core.images import BackgroundRemovalError

    with pytest.raises(BackgroundRemovalError, match="no such model file") as e:
        remove_background(np.ones((4, 4, 3), np.float32), str(tmp_path / "nope.onnx"))
    one_line(e.value)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BackgroundRemovalError, match="junk") as e:
        remove_background(np.ones((4, 4, 3), np.float32), str(junk))
    one_line(e.value)


def test_rembg_offline_without_a_model_is_one_line(tmp_path, monkeypatch):
    """No model cached, no network: the existing one-line message (no download attempt succeeds)."""
    import core.images as images

    def offline(*a, **k):
        raise ConnectionError("Failed to establish a new connection: Name or service not known")

    rembg = pytest.importorskip("rembg")
    monkeypatch.setattr(rembg, "new_session", offline)
    monkeypatch.setattr(images, "_SESSIONS", {})
    with pytest.raises(images.BackgroundRemovalError, match="no internet") as e:
        remove_background(np.ones((4, 4, 3), np.float32), "u2net")
    one_line(e.value)


def test_process_py_with_a_model_file_anywhere(tmp_path):
    """Issue 22 item 7: ``process.py --model /models/u2net.onnx`` (a path outside rembg's folder)."""
    pytest.importorskip("onnxruntime")
    import process

    model = tiny_u2net(tmp_path / "models" / "u2net.onnx")
    rgb = np.full((40, 40, 3), 255, np.uint8)
    rgb[10:30, 12:28] = (20, 40, 20)
    src = tmp_path / "cat.jpg"
    Image.fromarray(rgb, "RGB").save(src, quality=95)
    out = tmp_path / "out"
    assert process.main([str(src), "--out", str(out), "--size", "32", "--model", str(model)]) == 0
    (result,) = out.iterdir()
    alpha = np.asarray(Image.open(result))[..., 3]
    assert alpha.shape == (32, 32) and alpha[16, 16] > 230 and alpha[0, 0] < 25


def test_corrupt_or_bomb_texture_is_one_line_user_error(tmp_path, monkeypatch):
    obj = obj_with_mtl(tmp_path, "map_Kd tex.png")
    (tmp_path / "tex.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    with pytest.raises(MeshFileError, match="cannot read texture") as e:
        load_mesh(obj)
    one_line(e.value)
    secret_image(tmp_path / "tex.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2)  # 4 pixels: a "bomb" at this limit
    with pytest.raises(MeshFileError, match="cannot read texture"):
        load_mesh(obj)
