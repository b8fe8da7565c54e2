"""The page in a real browser (headless Chromium): it looks right at 800x600
and on a wide screen, and its few lines of JavaScript work."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
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


# -- history: the chart, undo, restore ----------------------------------------------------

def spread_history_over_days(instance: Path, engine_id: int) -> None:
    """Date an engine's history records a day apart, the newest today, as
    if its changes had been made over the past days."""
    with closing(sqlite3.connect(instance / "engines.sqlite3")) as connection:
        ids = [row[0] for row in connection.execute(
            "SELECT id FROM engine_history WHERE engine_id = ? ORDER BY id DESC", (engine_id,))]
        for days, record_id in enumerate(ids):
            connection.execute("UPDATE engine_history SET changed_at = strftime('%Y-%m-%d %H:%M:%f000', changed_at,"
                               f" '-{days} days', '-{days * 37} minutes') WHERE id = ?", (record_id,))
        connection.commit()


@pytest.mark.parametrize("width, height", [(800, 600), (1280, 800)])
def test_the_history_page_charts_thrust_over_time_and_is_saved_as_a_screenshot(browser, live_server, width, height):
    seed(live_server.url)
    api = f"{live_server.url}/api/engines/1"
    for thrust in (1_650_000, 1_200_000, 1_800_000, 1_750_000):
        requests.patch(api, json={"thrust": thrust}, timeout=5)
    requests.delete(api, timeout=5)
    requests.post(f"{live_server.url}/api/deleted/1/restore", timeout=5)
    requests.post(f"{api}/revert", json={"version": 4}, timeout=5)
    spread_history_over_days(live_server.instance, 1)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))  # a CSP violation, too
    page.goto(live_server.url)
    page.locator("#engine-1").get_by_role("link", name="History").click()
    chart = page.get_by_role("img", name="Thrust of “Main” over time")
    expect(chart).to_be_visible()
    assert chart.locator("circle.mark").count() == page.locator("table.history tbody tr").count() == 8
    assert page.locator("table.history tbody tr").first.locator("td").nth(2).inner_text() == "revert"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    path = OUTPUT / f"history-{width}x{height}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    assert errors == []


def test_undo_in_the_message_takes_back_a_delete_in_the_browser(browser, live_server):
    seed(live_server.url)
    page = browser.new_page()
    page.goto(live_server.url)
    page.locator("#engine-1").locator("text=Delete").click()
    page.click("text=Delete engine")
    assert page.locator(".message").inner_text() == "Deleted “Main”."
    assert page.locator("#engine-1").count() == 0
    page.locator(".flash").get_by_role("button", name="Undo").click()
    assert page.locator(".message").inner_text() == "Restored “Main”."
    expect(page.locator("#engine-1 td.title")).to_have_text("Main")
    assert requests.get(f"{live_server.url}/api/engines/1", timeout=5).json()["version"] == 3


def test_quick_thrust_offers_undo_without_reloading_the_page(browser, live_server):
    seed(live_server.url)
    page = browser.new_page()
    page.goto(live_server.url)
    page.evaluate("window.notReloaded = true")
    row = page.locator("#engine-5")
    row.locator("input[name=thrust]").fill("70000")
    row.locator("button", has_text="Set").click()
    expect(row.locator("[data-thrust]")).to_have_text("70,000")
    row.get_by_role("button", name="Undo").click()
    expect(row.locator("[data-thrust]")).to_have_text("60,000")
    assert page.evaluate("window.notReloaded") is True
    history = requests.get(f"{live_server.url}/api/engines/5/history", timeout=5).json()["history"]
    assert [(h["version"], h["change"], h["thrust"]) for h in history] == \
        [(3, "revert", 60_000), (2, "update", 70_000), (1, "create", 60_000)]


def test_a_deleted_engine_is_restored_from_recently_deleted_in_the_browser(browser, live_server):
    seed(live_server.url)
    requests.delete(f"{live_server.url}/api/engines/2", timeout=5)
    page = browser.new_page()
    page.goto(live_server.url)
    page.get_by_role("link", name="Recently deleted").click()
    page.locator("#deleted-2").get_by_role("button", name="Restore").click()
    assert page.locator(".message").inner_text() == "Restored “Ракета-носитель”."
    assert requests.get(f"{live_server.url}/api/engines/2", timeout=5).json()["thrust"] == 820_000
