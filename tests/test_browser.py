"""The page in a real browser (headless Chromium): it looks right at 800x600
and on a wide screen, and its few lines of JavaScript work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from conftest import ROOT, need

OUTPUT = ROOT / "tests" / "output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    need(CHROMIUM is not None, "Chromium is not installed (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def seed(url: str) -> None:
    for title, thrust in [("Main", 1_500_000), ("Ракета-носитель", 820_000), ("火箭发动机", 400_000),
                          ("<b>x</b>", 3), ("Vernier", 60_000)]:
        requests.post(f"{url}/api/engines", json={"title": title, "thrust": thrust}, timeout=5)


@pytest.mark.parametrize("width, height", [(800, 600), (1280, 800), (1920, 1080)])
def test_the_list_fits_the_window_and_is_saved_as_a_screenshot(browser, live_server, width, height):
    seed(live_server.url)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.goto(f"{live_server.url}/?sort=-thrust")
    assert page.locator("table.engines tbody tr").count() == 5
    assert page.locator("td.title", has_text="<b>x</b>").count() == 1
    # Nothing sticks out sideways: no horizontal scrolling at this width.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"page-{width}x{height}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    assert errors == []


def test_adding_an_engine_with_a_bad_thrust_shows_the_error_beside_it(browser, live_server):
    page = browser.new_page()
    page.goto(live_server.url)
    page.fill("#title", "Main")
    page.fill("#thrust", "lots")
    page.click("text=Add engine")
    assert page.locator("#thrust-error").inner_text() == "Thrust must be a whole number."
    assert page.input_value("#title") == "Main"
    page.fill("#thrust", "42")
    page.click("text=Add engine")
    assert page.locator(".message").inner_text() == "Added “Main”."
    assert requests.get(f"{live_server.url}/api/engines/1", timeout=5).json()["thrust"] == 42


def test_quick_thrust_changes_the_engine_without_reloading_the_page(browser, live_server):
    seed(live_server.url)
    page = browser.new_page()
    page.goto(live_server.url)
    page.evaluate("window.notReloaded = true")
    row = page.locator("#engine-5")
    row.locator("input[name=thrust]").fill("3000000")
    row.locator("button", has_text="Set").click()
    expect(row.locator("[data-thrust]")).to_have_text("3,000,000")
    assert page.evaluate("window.notReloaded") is True
    assert row.locator("form").get_attribute("class") == "quick-thrust saved"
    assert requests.get(f"{live_server.url}/api/engines/5", timeout=5).json()["thrust"] == 3_000_000
    # The gauges were rescaled: the new strongest engine fills its bar.
    assert page.evaluate("document.querySelector('#engine-5 meter').max") == 3_000_000

    row.locator("input[name=thrust]").fill("-5")
    row.locator("button", has_text="Set").click()
    expect(row.locator(".quick-error")).to_have_text("Thrust must be between 0 and 2,147,483,647.")
    row.locator("input[name=thrust]").fill("1e3")
    row.locator("button", has_text="Set").click()
    expect(row.locator(".quick-error")).to_have_text("Thrust must be a whole number.")
    assert requests.get(f"{live_server.url}/api/engines/5", timeout=5).json()["thrust"] == 3_000_000


def test_delete_asks_for_confirmation_in_the_browser(browser, live_server):
    seed(live_server.url)
    page = browser.new_page()
    page.goto(live_server.url)
    page.locator("#engine-1").locator("text=Delete").click()
    assert "restore it later from Recently deleted" in page.content()
    page.click("text=Delete engine")
    assert page.locator(".message").inner_text() == "Deleted “Main”."
    assert requests.get(f"{live_server.url}/api/engines/1", timeout=5).status_code == 404


def test_output_folder_is_ignored_by_git():
    assert "/tests/output/" in Path(ROOT / ".gitignore").read_text()


def test_an_edit_that_crossed_someone_else_s_shows_both_in_the_browser(browser, live_server):
    seed(live_server.url)
    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(f"{live_server.url}/engines/1/edit")
    # Someone else saves the engine while this page is open.
    requests.patch(f"{live_server.url}/api/engines/1", json={"title": "Main (theirs)", "thrust": 7}, timeout=5)
    page.fill("#title", "Main (mine)")
    page.click("text=Save")
    expect(page.locator(".conflict")).to_contain_text("Someone else changed this engine while you were editing it.")
    assert page.locator(".conflict tr.changed td").all_inner_texts() == ["Main (theirs)", "Main (mine)",
                                                                       "7", "1500000"]
    assert page.input_value("#title") == "Main (mine)"
    page.screenshot(path=str(OUTPUT / "edit-conflict-800x600.png"), full_page=True)
    assert requests.get(f"{live_server.url}/api/engines/1", timeout=5).json()["title"] == "Main (theirs)"
    page.click("text=Save mine")
    assert page.locator(".message").inner_text() == "Saved “Main (mine)”."
    assert requests.get(f"{live_server.url}/api/engines/1", timeout=5).json()["title"] == "Main (mine)"
