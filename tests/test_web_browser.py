"""loracam web in a real browser: headless Chromium (Debian's, driven by Playwright) uploads toy photos, starts
a studio job on the toy base and sees the gallery appear; renders on Generate and a grid whose cell it sends
to Generate; a screenshot of each main page is saved under the
test's output (and into $LORACAM_SCREENSHOTS when set, to look at)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
pytest.importorskip("gradio", reason="the web extra is not installed (pip install 'loracam[web]')")

CHROMIUM = os.environ.get("LORACAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Offline flags: without the background-networking ones Chromium keeps trying to reach Google's hosts.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: `make setup` installs "
                                                          "Debian's (apt-get install chromium) where it can")


def test_upload_start_and_see_the_gallery_in_chromium(tmp_path):
    from test_web import _stop_worker, free_port

    from loracam.toy.photos import write_photos
    from loracam.web.server import ServeConfig, launch

    photos = tmp_path / "photos"
    write_photos(photos, "sks", 6, seed=3, size=(384, 576))
    studio = tmp_path / "studio"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    app, url = launch(ServeConfig(studio=studio, port=free_port()), block=False, echo=lambda s: None)
    expect = sync_api.expect
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#photos input[type=file]").set_input_files(sorted(str(p) for p in photos.glob("*.png")))
            expect(page.locator("#photos")).to_contain_text("photo_005", timeout=30_000)
            page.locator("#job-name textarea, #job-name input").first.fill("browser")
            page.get_by_label("toy-studio").check()
            page.get_by_text("Advanced").click()
            page.get_by_label("Training steps (empty: the subject's rule)").fill("8")
            page.get_by_label("Candidates a style (empty: the style's)").fill("2")
            page.get_by_label("Kept a style").fill("1")
            page.locator("#start").click()
            expect(page.get_by_text("browser queued")).to_be_visible(timeout=30_000)
            # the gallery fills in by itself (the page follows the store) once the worker is done
            expect(page.locator("#gallery img")).to_have_count(1, timeout=150_000)
            expect(page.locator("#job-summary")).to_contain_text("portrait job, done")
            page.screenshot(path=str(shots / "studio.png"), full_page=True)

            page.get_by_role("tab", name="Jobs").click()
            expect(page.locator("#jobs-table")).to_contain_text("browser")
            page.screenshot(path=str(shots / "jobs.png"), full_page=True)

            page.get_by_role("tab", name="Generate").click()
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.get_by_label("Parameters")).to_have_value(re.compile("Steps: 20, Sampler: DPM"), timeout=60_000)
            expect(page.locator("#generated img")).to_have_count(1)
            page.screenshot(path=str(shots / "generate.png"), full_page=True)

            page.get_by_role("tab", name="Grid").click()  # X: CFG Scale 3,5,7; a cell sent to Generate
            page.locator("#grid-prompt textarea").fill("1girl, close-up, blue dress")
            page.locator("#grid-go").click()
            expect(page.locator("#grid-cells img")).to_have_count(3, timeout=60_000)
            page.locator("#grid-cells img").nth(1).click()
            expect(page.locator("#grid-cell-info textarea")).to_have_value(re.compile("CFG scale: 5,"), timeout=20_000)
            page.screenshot(path=str(shots / "grid.png"), full_page=True)
            page.locator("#grid-send").click()
            expect(page.locator("#gen-prompt textarea")).to_have_value("1girl, close-up, blue dress", timeout=20_000)
            expect(page.get_by_label("CFG scale").first).to_have_value("5")

            page.get_by_role("tab", name="Train").click()
            page.screenshot(path=str(shots / "train.png"), full_page=True)
            page.get_by_role("tab", name="Tune").click()
            page.locator("#tune-prompt textarea").fill("1girl, close-up, sks <lora:browser:1>")
            page.get_by_label("Seeds (random)").fill("1")
            page.get_by_label("Renders a seed (the guide's two grids: 54)").fill("6")
            page.locator("#tune-go").click()
            expect(page.locator("#tune-status")).to_contain_text("done", timeout=60_000)
            expect(page.locator("#tune-table")).to_contain_text("browser ")
            page.screenshot(path=str(shots / "tune.png"), full_page=True)

            page.get_by_role("tab", name="Library").click()
            expect(page.locator("#library-table")).to_contain_text("browser", timeout=30_000)
            page.locator("#library-table").get_by_text("browser", exact=True).last.click()  # the visible span
            expect(page.get_by_text("ss_network_dim").first).to_be_visible(timeout=30_000)  # its metadata
            page.screenshot(path=str(shots / "library.png"), full_page=True)
            browser.close()
    finally:
        app.close()
        _stop_worker(studio)
    assert sorted(p.name for p in shots.iterdir()) == ["generate.png", "grid.png", "jobs.png", "library.png",
                                                       "studio.png", "train.png", "tune.png"]
    keep = os.environ.get("LORACAM_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)
