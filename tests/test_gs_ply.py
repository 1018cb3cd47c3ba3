"""3DGS .ply layout: exact round trip, header/property order, atomic write."""

import numpy as np
import pytest
import torch

from gs_renderer import GaussianModel, load_ply, save_ply


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_round_trip_exact(tmp_path, sh_degree):
    g = torch.Generator().manual_seed(0)
    m = GaussianModel.init_ball(257, seed=0, sh_degree=sh_degree)
    with torch.no_grad():
        for t in m.parameters().values():
            t.copy_(torch.randn(t.shape, generator=g))
    p = save_ply(m, tmp_path / "sub" / "model.ply")
    assert p.exists() and list(p.parent.iterdir()) == [p]  # no temp file left behind
    r = load_ply(p)
    assert r.sh_degree == sh_degree and r.num_points == 257
    for name, t in m.parameters().items():
        assert torch.equal(
            getattr(
                r,
                {
                    "xyz": "means",
                    "f_dc": "sh0",
                    "f_rest": "shN",
                    "opacity": "opacities",
                    "scaling": "scales",
                    "rotation": "quats",
                }[name],
            ),
            t.detach(),
        ), name
    assert r.means.requires_grad and r.means.is_leaf


def test_layout_is_standard_3dgs(tmp_path):
    m = GaussianModel.init_ball(3, seed=0, sh_degree=1)
    with torch.no_grad():
        m.shN.copy_(torch.arange(27.0).reshape(3, 3, 3))  # [N, K=3, 3 channels]
    p = save_ply(m, tmp_path / "a.ply")
    raw = p.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    props = [ln.split()[-1] for ln in lines if ln.startswith("property")]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert props[18:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(ln.startswith("property float ") for ln in lines if ln.startswith("property"))
    data = np.frombuffer(body, dtype="<f4").reshape(3, len(props))
    # Channel-major f_rest: f_rest_{c*K+k} = shN[:, k, c].
    assert data[1, 9:18].tolist() == m.shN.detach()[1].T.reshape(-1).tolist()
    assert data[0, 18] == pytest.approx(float(m.opacities[0].detach()))  # raw logit
    assert (data[:, 3:6] == 0).all()


def test_rejects_non_ply(tmp_path):
    bad = tmp_path / "x.ply"
    bad.write_bytes(b"hello\n")
    with pytest.raises(ValueError):
        load_ply(bad)
