"""The page of ``app.py`` in a real headless browser (Debian's chromium driven by Playwright through
the system binary; Playwright's own browser downloads are not used): a bad upload gives a message,
then a real image gives a result: the 3D viewer loads a ``.glb``, the download link serves valid
glTF. A screenshot of the finished page is saved as a test artefact."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from tests.app_server import IMAGE, SPOT, app_server

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
trimesh = pytest.importorskip("trimesh")

CHROMIUM = Path("/usr/bin/chromium")
#: Where the lead looks at the finished page (besides pytest's tmp dir); override with APP_SHOT.
SHOT_COPY = Path(os.environ.get("APP_SHOT", "/work/wt/webapp-shot.png"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(not (SPOT.is_file() and IMAGE.is_file()), reason="needs ../shared/data"),
]
#: Bounds on every browser wait (ms): page load, one tiny job (~5 s here), a message to appear.
LOAD_MS, JOB_MS, MSG_MS = 60_000, 120_000, 30_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with app_server(tmp_path_factory.mktemp("app_browser")) as s:
        yield s


@pytest.fixture
def page(server):
    """A fresh headless chromium page."""
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 1100})
            pg.set_default_timeout(MSG_MS)
            yield pg
        finally:
            browser.close()


def upload(page, path: Path) -> None:
    """Put ``path`` into the upload box (clearing a previous file) and press Generate."""
    box = page.locator("#upload")
    clear = box.get_by_label("Clear")
    if clear.count():
        clear.first.click()
    box.locator("input[type=file]").set_input_files(str(path))
    page.locator("#upload .file-preview", has_text=path.stem).wait_for()
    page.locator("#generate").click()


def test_upload_bad_then_good_shows_the_model(server, page, tmp_path):
    base, workdir = server
    page.goto(base + "/", timeout=LOAD_MS)
    page.locator("#generate").wait_for(timeout=LOAD_MS)

    # A corrupt "PNG": a message in the page, no result, and the page stays usable.
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    upload(page, bad)
    message = page.get_by_text("not an image or corrupt").first
    message.wait_for(timeout=MSG_MS)
    assert str(workdir) not in message.inner_text()  # server paths stay private
    assert page.locator("#downloads a[href*='.glb']").count() == 0
    page.locator(".toast-close").first.click()  # dismiss it, as a user would
    message.wait_for(state="detached", timeout=MSG_MS)

    # A real image: the viewer fetches the .glb, the download links serve the files.
    good = tmp_path / "alarm.png"
    shutil.copy(IMAGE, good)
    # The page's only fetch of a .glb is the 3D viewer's (download links are plain <a> elements).
    with page.expect_response(
        lambda r: r.url.split("?")[0].endswith("/alarm.glb"), timeout=JOB_MS
    ) as fetched:
        upload(page, good)
    assert fetched.value.ok and fetched.value.body()[:4] == b"glTF"
    page.locator("#viewer canvas").wait_for(timeout=MSG_MS)
    link = page.locator("#downloads a[href$='alarm.glb']")
    link.wait_for(timeout=MSG_MS)
    page.get_by_text("diffusion calls").first.wait_for(timeout=MSG_MS)

    got = page.request.get(link.get_attribute("href"), timeout=MSG_MS)
    assert got.ok and got.body()[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(got.body()), file_type="glb", force="scene")
    (mesh,) = scene.geometry.values()
    assert mesh.visual.material.baseColorTexture.size == (64, 64)  # oracle_tiny export.texture_size
    names = page.locator("#downloads .file-preview").inner_text()
    for name in ("alarm_model", "alarm_final_preview", "alarm_report"):
        assert name in names

    page.wait_for_timeout(1500)  # let the viewer draw a few frames before the screenshot
    shot = tmp_path / "app_finished.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    try:
        SHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SHOT_COPY)
    except OSError:
        pass  # the copy is a convenience; the artefact is the file under tmp_path
