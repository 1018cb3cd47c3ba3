"""Mesh container and file I/O: OBJ/GLB round trips, reference meshes, glTF conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mesh_renderer import Mesh, load_mesh, save_mesh, split_to_uv_layout

MESHES = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"


def textured_quad_strip() -> Mesh:
    """Two quads sharing an edge, with a UV seam there (ft differs from f) and a 4x6 texture."""
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
    vt = torch.tensor(
        [
            [0.0, 0.0],
            [0.4, 0.0],
            [0.4, 1.0],
            [0.0, 1.0],  # left quad
            [0.6, 0.0],
            [1.0, 0.0],
            [1.0, 1.0],
            [0.6, 1.0],
        ]
    )  # right quad (seam at x=1)
    ft = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    g = torch.Generator().manual_seed(0)
    albedo = torch.randint(0, 256, (4, 6, 3), generator=g).float() / 255.0
    return Mesh(v=v, f=f, vt=vt, ft=ft, albedo=albedo)


def corner_uvs(m: Mesh) -> torch.Tensor:
    """Per (face, corner): position ++ uv, [F,3,5] - invariant to vertex splitting/reindexing."""
    return torch.cat([m.v[m.f], m.vt[m.ft]], -1)


def test_mesh_defaults_and_normalized():
    m = textured_quad_strip()
    assert m.v.dtype == torch.float32 and m.f.dtype == torch.int64
    assert torch.allclose(m.vn, torch.tensor([0.0, 0.0, 1.0]).expand(6, 3))  # CCW in the xy plane -> +Z
    n = m.normalized(1.0)
    lo, hi = n.bbox()
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
    assert float((hi - lo).max()) == pytest.approx(1.0)
    assert torch.equal(n.vt, m.vt) and n.albedo is m.albedo


@pytest.mark.parametrize("ext", [".obj", ".glb"])
def test_round_trip(tmp_path, ext):
    m = textured_quad_strip()
    path = save_mesh(m, tmp_path / f"strip{ext}")
    r = load_mesh(path)
    assert len(r.f) == len(m.f)
    assert torch.allclose(corner_uvs(r), corner_uvs(m), atol=1e-6)
    # PNG is uint8: exact for values that came from uint8.
    assert torch.allclose(r.albedo, m.albedo, atol=0.5 / 255)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []  # atomic writes leave no temporary files
    if ext == ".obj":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["strip.mtl", "strip.obj", "strip_albedo.png"]
        assert not torch.equal(r.ft, r.f)  # OBJ keeps the separate UV indexing
    else:
        assert torch.equal(r.ft, r.f) and len(r.v) == 8  # glTF: split to one vertex per (v, vt) pair


def test_glb_is_valid_gltf_for_trimesh_and_pygltflib(tmp_path):
    import pygltflib
    import trimesh

    m = textured_quad_strip()
    path = save_mesh(m, tmp_path / "strip.glb")
    scene = trimesh.load(str(path), process=False)
    geom = scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene
    split = split_to_uv_layout(m)
    assert np.allclose(geom.vertices, split.v.numpy(), atol=1e-6)
    assert np.allclose(geom.visual.uv, split.vt.numpy(), atol=1e-6)
    tex = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"))
    assert tex.shape == (4, 6, 3) and np.array_equal(tex, np.round(m.albedo.numpy() * 255).astype(np.uint8))
    # Raw glTF: TEXCOORD_0 stores v downwards (1 - our v); +Y up, no node transform.
    g = pygltflib.GLTF2().load(str(path))
    prim = g.meshes[0].primitives[0]
    acc = g.accessors[prim.attributes.TEXCOORD_0]
    view = g.bufferViews[acc.bufferView]
    raw = np.frombuffer(
        g.binary_blob()[view.byteOffset : view.byteOffset + view.byteLength], np.float32
    ).reshape(-1, 2)
    assert np.allclose(raw[:, 1], 1.0 - split.vt[:, 1].numpy())
    assert g.nodes[0].matrix is None and g.nodes[0].rotation is None
    pos = g.accessors[prim.attributes.POSITION]
    assert pos.min == [0.0, 0.0, 0.0] and pos.max == [2.0, 1.0, 0.0]


def test_obj_parser_polygons_and_negative_indices(tmp_path):
    text = "\n".join(
        [
            "# a quad and a triangle, relative indices, vertex colours on v lines",
            "v 0 0 0 1 0 0",
            "v 1 0 0 1 0 0",
            "v 1 1 0 1 0 0",
            "v 0 1 0 1 0 0",
            "vt 0 0",
            "vt 1 0",
            "vt 1 1",
            "vt 0 1",
            "vn 0 0 1",
            "f 1/1/1 2/2/1 3/3/1 4/4/1",
            "f -4/-4/1 -2/-2/1 -1/-1/1",
        ]
    )
    (tmp_path / "poly.obj").write_text(text)
    m = load_mesh(tmp_path / "poly.obj")
    assert m.v.shape == (4, 3) and torch.equal(m.v[2], torch.tensor([1.0, 1.0, 0.0]))
    assert m.f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]
    assert torch.equal(m.ft, m.f)
    assert m.albedo is None


def test_reference_meshes_load():
    spot = load_mesh(MESHES / "spot.obj")
    assert spot.v.shape == (2930, 3) and spot.f.shape == (5856, 3)
    assert spot.has_uv and spot.vt.shape == (3225, 2) and not torch.equal(spot.ft, spot.f)
    assert int(spot.ft.max()) == 3224
    duck = load_mesh(MESHES / "duck.glb")
    assert duck.f.shape == (4212, 3) and duck.has_uv and duck.albedo.shape == (512, 512, 3)
    assert bool((duck.vt >= 0).all() and (duck.vt <= 1).all())
    # A yellow duck: mean texture colour is yellow; the node's 0.01 scale is applied (size ~1.7, not 170).
    mean = duck.albedo.mean((0, 1))
    assert mean[0] > 0.85 and mean[1] > 0.7 and mean[2] < 0.1
    assert 1.0 < float((duck.v.max(0).values - duck.v.min(0).values).max()) < 2.0
    for name in ["cow.obj", "suzanne.obj", "fandisk.obj", "cheburashka.obj"]:
        m = load_mesh(MESHES / name)
        assert len(m.f) > 0 and not m.has_uv and torch.isfinite(m.vn).all()


def test_duck_glb_round_trip_keeps_texture(tmp_path):
    duck = load_mesh(MESHES / "duck.glb")
    r = load_mesh(save_mesh(duck, tmp_path / "duck.glb"))
    assert torch.allclose(corner_uvs(r), corner_uvs(duck), atol=1e-5)
    assert (r.albedo - duck.albedo).abs().max() <= 0.5 / 255


def test_unsupported_format(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        save_mesh(textured_quad_strip(), tmp_path / "x.ply")
    with pytest.raises(FileNotFoundError):
        load_mesh(tmp_path / "missing.obj")
