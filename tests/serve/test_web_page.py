"""The verify page in a real headless Chromium on loopback: pick a species, upload a photo, read the verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context.new_page()
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_page_verifies_photo(server, browser_page, dev_photos, tmp_path):
    page = browser_page
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)

    page.goto(server.url + "/")
    page.wait_for_selector("#species option[value='Acer rubrum']", state="attached", timeout=30_000)
    options = page.locator("#species option").all_inner_texts()
    assert "Lycorma delicatula" in options
    assert "Acer rubrum" in options
    assert page.locator("#check").is_disabled()

    page.select_option("#species", "Lycorma delicatula")
    page.set_input_files("#upload", str(dev_photos["Lycorma delicatula"][0]))
    # The preview appears once the browser has read the file, which can take a moment.
    page.wait_for_selector("#preview", state="visible", timeout=10_000)
    assert page.locator("#preview").is_visible()
    page.click("#check")
    page.wait_for_selector("#verdict.match, #verdict.no-match", timeout=30_000)

    title = page.inner_text("#verdict-title")
    detail = page.inner_text("#verdict-detail")
    rows = page.locator("#probabilities tr").all_inner_texts()
    page.screenshot(path=str(tmp_path / "verdict.png"), full_page=True)

    assert title.startswith(("Match: this is Lycorma delicatula", "No match: not Lycorma delicatula"))
    assert "threshold 50.0% (default" in detail
    assert len(rows) == 3
    assert any(row.startswith("Lycorma delicatula") for row in rows)
    assert console_errors == []


def test_page_shows_server_error(server, browser_page, tmp_path):
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("#species option[value='Acer rubrum']", state="attached", timeout=30_000)
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_bytes(b"these are field notes, not a photo")
    page.select_option("#species", "Acer rubrum")
    page.set_input_files("#upload", str(not_a_photo))
    page.click("#check")
    page.wait_for_selector("#verdict.error", timeout=30_000)
    assert "invalid image" in page.inner_text("#verdict-detail")
