"""The web page of `videodit serve` in headless Chromium: type a prompt, the video plays (a
decoded frame that is not blank), the gallery shows it. Skipped without a Chromium binary
(playwright cannot download its own browser here; Debian's `chromium` package serves)."""

import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from test_serve import make_bundle, running  # noqa: E402

from videodit.serve.config import ServeConfig  # noqa: E402

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)

# Draws what the player shows onto a canvas: the spread of its pixel values (0 for a blank frame).
FRAME_SPREAD = """(sel) => {
  const v = document.querySelector(sel);
  if (!v || v.readyState < 2 || !v.videoWidth) return -1;
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i], d[i + 1], d[i + 2]); hi = Math.max(hi, d[i], d[i + 1], d[i + 2]); }
  return hi - lo;
}"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium); "
                                              "playwright cannot download one here")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_page_generates_plays_and_lists_a_video(tmp_path):
    bundle = make_bundle(tmp_path / "tiny")
    with running(ServeConfig(data=str(tmp_path / "data"), model=(f"tiny={bundle}",))) as (base, _), \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.fill("#prompt", "A red ball bounces on a black background.")
            page.fill("#seconds", "1")
            page.click("#go")
            page.wait_for_selector("#gallery .card.completed video", timeout=60_000)
            page.wait_for_function(f"({FRAME_SPREAD})('#player') > 0", timeout=30_000)
            assert page.evaluate(f"({FRAME_SPREAD})('#player')") > 0
            assert page.evaluate("document.getElementById('player').currentTime") >= 0
            assert "A red ball bounces" in page.inner_text("#gallery")
            assert page.input_value("#prompt") and page.evaluate("document.getElementById('bar').value") == 100
            # remix from the gallery: a second card completes
            page.click("#gallery .card.completed >> text=Remix")
            page.wait_for_function("document.querySelectorAll('#gallery .card.completed').length == 2",
                                   timeout=60_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # renders without error
            assert not errors
        finally:
            browser.close()
