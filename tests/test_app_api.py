"""The HTTP API of ``app.py`` end to end: a real server subprocess on a loopback port (tiny oracle
config), a real image from ../shared in, a textured ``.glb`` out; bad requests get a 4xx with a
message and the server keeps serving; each request has its own folder."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.app_server import IMAGE, SPOT, app_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")
trimesh = pytest.importorskip("trimesh")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SPOT.is_file() and IMAGE.is_file()), reason="needs ../shared/data"),
]

#: Every HTTP wait is bounded (a tiny job takes ~5 s on the 2-core CPU).
TIMEOUT = 120.0
#: The server's upload cap in these tests (MiB): small, so an over-size upload is cheap to send.
CAP_MB = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, work dir) of one server for the whole module."""
    folder = tmp_path_factory.mktemp("app_api")
    # --warmup on: the CPU default is off; here the warm-up job must run before the server answers.
    with app_server(folder, "--max-upload-mb", str(CAP_MB), "--warmup", "on") as s:
        yield s


def test_warm_up_runs_before_serving_and_leaves_no_folder(server):
    """``--warmup on``: one throw-away job ran before ``/api/health`` answered; its folder is gone."""
    _, workdir = server
    log = (workdir.parent / "server.log").read_text()
    assert "warm-up done" in log
    assert log.index("warm-up done") < log.index("serving on")
    assert not any(workdir.glob("*/warmup.png"))


def post(base: str, data: bytes, name: str = "cat.png", **fields: str) -> httpx.Response:
    return httpx.post(f"{base}/api/generate", files={"image": (name, data)}, data=fields, timeout=TIMEOUT)


def textured_glb(data: bytes) -> trimesh.Trimesh:
    """The one textured mesh of a .glb (asserts it is glTF binary with a base-colour texture)."""
    assert data[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(data), file_type="glb", force="scene")
    (mesh,) = scene.geometry.values()
    tex = mesh.visual.material.baseColorTexture
    assert tex is not None
    assert tex.size == (64, 64)  # export.texture_size of tests/data/oracle_tiny.yaml
    assert len(mesh.faces) > 100 and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    return mesh


def test_bad_requests_get_a_4xx_with_a_message(server):
    base, workdir = server
    cases = [
        (post(base, b"definitely not a PNG", "garbage.png"), 400, "not an image"),
        (post(base, b"", "empty.png"), 400, "empty"),
        (post(base, b"\x89PNG" + bytes(CAP_MB * 2**20 + 10), "huge.png"), 413, "limit"),
        (post(base, IMAGE.read_bytes(), model="zero123"), 400, "not loaded"),
        (post(base, IMAGE.read_bytes(), seed="one"), 400, "seed"),
        (post(base, IMAGE.read_bytes(), iters="-3"), 400, "sir.iters"),
        (httpx.post(f"{base}/api/generate", data={"x": "1"}, timeout=TIMEOUT), 400, "image"),
        (httpx.get(f"{base}/api/files/{'0' * 32}/a.glb", timeout=TIMEOUT), 404, "no such job"),
        (httpx.get(f"{base}/api/files/..%2F..%2Fetc/passwd", timeout=TIMEOUT), 404, ""),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.status_code, r.text)
        if words:
            assert words in r.json()["error"], r.text
            assert str(workdir) not in r.text  # messages name the upload, never the server's folders
    # Refused uploads leave no folders behind, and the server still answers.
    assert not [p for p in workdir.iterdir() if p.is_dir()]
    assert httpx.get(f"{base}/api/health", timeout=TIMEOUT).json() == {"status": "ok", "models": ["oracle"]}


def test_generate_returns_the_textured_glb(server):
    base, workdir = server
    r = post(base, IMAGE.read_bytes(), "alarm.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "model/gltf-binary"
    mesh = textured_glb(r.content)
    # The oracle reconstructs spot, normalised into the unit box around the origin.
    assert np.abs(mesh.vertices).max() < 1.0
    job = workdir / r.headers["x-job-id"]
    assert (job / "out" / "alarm.glb").read_bytes() == r.content
    assert (job / "alarm.png").read_bytes() == IMAGE.read_bytes()


def test_json_variant_links_files_and_applies_settings(server):
    base, _ = server
    r = post(base, IMAGE.read_bytes(), "alarm.png", format="json", iters="1", seed="7")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"glb", "ply", "mesh", "final_preview", "report", "final_report"} <= set(body["files"])
    textured_glb(httpx.get(base + body["files"]["glb"], timeout=TIMEOUT).content)
    assert httpx.get(base + body["files"]["ply"], timeout=TIMEOUT).content.startswith(b"ply")
    png = httpx.get(base + body["files"]["final_preview"], timeout=TIMEOUT)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    rep1 = body["reports"]["stage1"]
    # oracle_tiny: 3 init steps + iters x 3 steps; iters=1 from the form (the config says 2).
    assert rep1["optimiser_steps"] == 3 + 1 * 3
    assert body["summary"]["stage1"]["nfe"] == rep1["nfe"] > 0
    assert body["summary"]["total_seconds"] > 0
    saved = httpx.get(base + body["files"]["report"], timeout=TIMEOUT).json()
    assert saved["config"]["seed"] == 7 and saved["config"]["sir"]["iters"] == 1


def test_concurrent_requests_run_in_separate_folders(server):
    base, workdir = server
    results: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        results[name] = post(base, IMAGE.read_bytes(), f"{name}.png", format="json", iters="0")

    threads = [threading.Thread(target=send, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert {n: r.status_code for n, r in results.items()} == {"first": 200, "second": 200}
    ids = {n: r.json()["id"] for n, r in results.items()}
    assert ids["first"] != ids["second"]
    for name, job in ids.items():
        other = "second" if name == "first" else "first"
        names = {p.name for p in (workdir / job).rglob("*")}
        assert f"{name}.glb" in names and not any(n.startswith(other) for n in names)
    # One job at a time: the two runs' wall-clock intervals do not overlap.
    spans = sorted(
        (r.json()["summary"]["started"], r.json()["summary"]["finished"]) for r in results.values()
    )
    assert spans[0][1] <= spans[1][0]


def test_gradio_client_works_too(server):
    from gradio_client import Client, handle_file

    base, _ = server
    client = Client(base + "/", verbose=False)
    glb, preview, _video, files, report, status = client.predict(
        handle_file(str(IMAGE)), "oracle", 0, 0.0, 0, "", False, api_name="/generate"
    )
    textured_glb(Path(glb).read_bytes())
    assert preview.endswith("_final_preview.png")
    assert {n.rsplit("/", 1)[-1] for n in files} >= {"alarm_rgba.glb", "alarm_rgba_model.ply"}
    assert report["stage1"]["nfe"] > 0 and "diffusion calls" in status


def test_warm_up_runs_the_pipeline_once_per_model_and_cleans_up(tmp_path, monkeypatch):
    """In-process: ``warm_up`` runs both stages on the drawn ball, then removes the job's folder."""
    from PIL import Image

    import webapp.jobs as jobs
    from tests.app_server import TINY
    from webapp import Generator

    png = jobs.warmup_image(64)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255  # an object on a transparent background
    gen = Generator([str(TINY)], [f"oracle.mesh={SPOT.resolve()}"], workdir=tmp_path / "work")
    assert not gen.on_gpu()
    seen = []
    real = jobs.image_to_3d

    def spy(cfg, denoiser):
        reports = real(cfg, denoiser)
        seen.append((Path(cfg.input).name, Path(reports["stage2"]["outputs"]["glb"]).is_file()))
        return reports

    monkeypatch.setattr(jobs, "image_to_3d", spy)
    assert gen.warm_up() > 0
    assert seen == [("warmup.png", True)]
    assert list((tmp_path / "work").iterdir()) == []


def test_progress_reaches_the_callback_per_stage_iteration(tmp_path):
    """In-process: the stages' iteration lines become ``on_progress(stage, i, n)`` calls (the page's bar)."""
    import sys

    from tests.app_server import TINY
    from webapp import Generator, Settings

    gen = Generator([str(TINY)], [f"oracle.mesh={SPOT.resolve()}"], workdir=tmp_path / "work")
    calls: list[tuple[str, int, int]] = []
    stderr = sys.stderr
    result = gen.run(IMAGE.read_bytes(), "alarm.png", Settings(iters=1), lambda *a: calls.append(a))
    assert sys.stderr is stderr  # restored after the job
    # oracle_tiny: stage 1 = init pass + 1 iteration; stage 2 = 1 iteration.
    assert calls == [
        ("stage 1 (Gaussians)", 1, 2),
        ("stage 1 (Gaussians)", 2, 2),
        ("stage 2 (texture)", 1, 1),
    ]
    assert result.outputs["glb"].is_file() and result.folder.parent == (tmp_path / "work").resolve()
