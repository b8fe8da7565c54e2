"""The page in a real browser (Debian's Chromium, headless), used with the
keyboard alone: each task a person does, where the focus lands after it and
what a screen reader is told; the layout at 1100x760, 800x600 and 390x844;
changes made elsewhere showing without a reload; and axe-core's WCAG 2.1 AA
rules on every state of every page, in the light and the dark theme.

One browser for the module; a context per viewport or theme. Screenshots of
every state go to tests/output/."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import requests
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

from conftest import ROOT, LiveServer, need

OUTPUT = ROOT / "tests" / "output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
ENGINES = [("Main", 1_500_000), ("Ракета-носитель", 820_000), ("火箭发动机", 400_000), ("<b>x</b>", 3),
           ("Vernier", 60_000), ("محرك المرحلة الأولى", 12_000)]


@pytest.fixture(scope="module")
def browser():
    need(CHROMIUM is not None, "Chromium is not installed (Debian package chromium)")
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A tab at 1100x760 on a fresh Engines, failing the test on any script
    error or Content-Security-Policy violation (a console error)."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    # A form refused with a 400 is said in the console too: not an error of the page.
    tab.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
           and tab.errors.append(msg.text))
    tab.url_of = lambda path="/": f"{live_server.url}{path}"
    yield tab
    errors = tab.errors
    context.close()
    assert errors == []


def seed(url: str, rows=ENGINES) -> None:
    for title, thrust in rows:
        assert requests.post(f"{url}/api/engines", json={"title": title, "thrust": thrust}, timeout=5).ok


def engine(url: str, engine_id: int) -> dict:
    return requests.get(f"{url}/api/engines/{engine_id}", timeout=5).json()


def focused(page) -> str:
    """What has the focus: the element's id, or its tag and text."""
    return page.evaluate("""(() => { const e = document.activeElement;
        return e.id || (e.tagName.toLowerCase() + ':' + e.textContent.trim()); })()""")


def tab_to(page, selector: str, limit: int = 60, back: bool = False) -> int:
    """Press Tab (or Shift+Tab) until `selector` has the focus; how many presses it took."""
    for presses in range(1, limit + 1):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return presses
    pytest.fail(f"{selector} not reached in {limit} presses of Tab; the focus is on {focused(page)}")


def spoken(page) -> str:
    """What the polite live region says now (screen readers read it out)."""
    return page.locator("#live")


# -- each task with the keyboard --------------------------------------------------------------

def test_adding_with_the_keyboard_puts_the_focus_back_in_title_and_says_so(page, live_server):
    seed(live_server.url)
    page.goto(page.url_of())
    assert tab_to(page, ".skip") == 1  # the skip link comes first
    page.keyboard.press("n")
    expect(page.locator("#title")).to_be_focused()
    page.keyboard.type("Nova")
    page.keyboard.press("Tab")
    page.keyboard.type("lots")
    page.keyboard.press("Enter")
    # A failed add: the focus is on the bad field, marked invalid and described by its error.
    expect(page.locator("#thrust-error")).to_have_text("Thrust must be a whole number.")
    expect(page.locator("#thrust")).to_be_focused()
    assert page.get_attribute("#thrust", "aria-invalid") == "true"
    assert page.get_attribute("#thrust", "aria-describedby") == "thrust-error"
    assert page.input_value("#title") == "Nova"
    page.keyboard.press("Control+A")
    page.keyboard.type("1 200")
    page.keyboard.press("Enter")
    expect(page.locator("#engine-7")).to_have_class("new")
    expect(page.locator("#title")).to_be_focused()
    expect(spoken(page)).to_have_text("Added “Nova”.")
    assert page.title() == "7 engines · Engines" == page.locator("#list-heading").inner_text() + " · Engines"
    assert engine(live_server.url, 7)["thrust"] == 1200
    page.screenshot(path=str(OUTPUT / "added.png"))


def test_setting_a_thrust_with_the_keyboard_says_saved_and_keeps_every_gauge_true(page, live_server):
    seed(live_server.url, [("Big", 7_600_000), ("Zero", 0), ("One", 1), ("Mid", 440), ("Small", 12_000)])
    page.goto(page.url_of())
    page.evaluate("window.notReloaded = true")
    tab_to(page, "#thrust-1")
    assert page.get_attribute("#engine-3 meter", "title") == "1 of 7,600,000, the strongest engine (log scale)"
    # On a log scale 0, 1, 440 and 12,000 look different.
    values = [page.evaluate(f"document.querySelector('#engine-{i} meter').value") for i in (2, 3, 4, 5)]
    assert values == sorted(values) and len(set(values)) == 4
    page.keyboard.press("Control+A")
    page.keyboard.type("123")
    page.keyboard.press("Enter")
    note = page.locator("#thrust-1-note")
    expect(note).to_have_text("Saved")
    expect(spoken(page)).to_have_text("Saved: Big, thrust 123.")
    expect(page.locator("#thrust-1")).to_be_focused()
    # The strongest engine is now Small: every row's gauge and label follow.
    expect(page.locator("#engine-3 meter")).to_have_attribute("title", "1 of 12,000, the strongest engine (log scale)")
    expect(page.locator("#engine-1 meter")).to_have_attribute("title",
                                                              "123 of 12,000, the strongest engine (log scale)")
    assert page.evaluate("document.querySelector('#engine-5 meter').value") == 1000
    page.screenshot(path=str(OUTPUT / "thrust-saved.png"))
    expect(note).to_have_count(0)  # "Saved" clears by itself
    assert page.get_attribute("#thrust-1", "aria-invalid") is None

    page.keyboard.press("Control+A")
    page.keyboard.type("-5")
    page.keyboard.press("Enter")
    expect(note).to_have_text("Thrust must be between 0 and 2,147,483,647.")
    expect(page.locator("#alert")).to_have_text("Thrust must be between 0 and 2,147,483,647.")
    assert page.get_attribute("#thrust-1", "aria-invalid") == "true"
    assert page.get_attribute("#thrust-1", "aria-describedby") == "thrust-1-note"
    page.screenshot(path=str(OUTPUT / "thrust-error.png"))
    page.keyboard.press("Escape")  # puts back the saved thrust
    assert page.input_value("#thrust-1") == "123"
    assert page.get_attribute("#thrust-1", "aria-invalid") is None
    page.keyboard.press("Control+A")
    page.keyboard.type("1,500")
    page.keyboard.press("Enter")
    expect(note).to_have_text("Saved")
    assert engine(live_server.url, 1)["thrust"] == 1500
    assert page.evaluate("window.notReloaded") is True


def test_search_sort_and_pages_with_the_keyboard_keep_the_focus_where_it_was(page, live_server):
    seed(live_server.url, [(f"Engine {i:03d}", i * 10) for i in range(1, 121)])
    page.goto(page.url_of())
    page.keyboard.press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("ENGINE 0")
    page.keyboard.press("Enter")
    expect(page.locator("#list-heading")).to_have_text("1–50 of 99 matching “ENGINE 0”")
    expect(page.locator("#q")).to_be_focused()
    assert page.locator("#engine-1 .title").inner_html().strip().endswith("><mark>Engine 0</mark>01</a>")
    assert page.title() == "1–50 of 99 matching “ENGINE 0” · Engines"
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.press("Enter")
    expect(page.locator("#list-heading")).to_have_text("1–50 of 120 engines")
    expect(page.locator("#q")).to_be_focused()  # placed once the page has loaded: Tab on from there
    # The sort menu changes nothing until asked: arrow keys do not load pages.
    tab_to(page, "#sort")
    page.evaluate("window.notReloaded = true")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("window.notReloaded") is True
    # Reaching the next page takes a few presses of Tab, not hundreds.
    assert tab_to(page, "#next-top") <= 5
    page.keyboard.press("Enter")
    expect(page.locator("#list-heading")).to_have_text("51–100 of 120 engines")
    expect(page.locator("#next-top")).to_be_focused()
    assert page.get_attribute("#next-top", "aria-describedby") == "list-heading"
    page.keyboard.press("Enter")
    expect(page.locator("#list-heading")).to_have_text("101–120 of 120 engines")
    expect(page.locator("#first-top")).to_be_focused()  # no next page: its place is taken, the focus stays nearby
    tab_to(page, "#sort-thrust")
    page.keyboard.press("Enter")
    expect(page.locator("th[aria-sort]")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#sort-thrust")).to_be_focused()
    assert page.locator("tbody tr").first.get_attribute("id") == "engine-120"
    page.keyboard.press("Enter")
    expect(page.locator("th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    expect(page.locator("#sort-thrust")).to_be_focused()  # the page has loaded and placed the focus
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_be_visible()
    page.screenshot(path=str(OUTPUT / "shortcuts.png"))
    page.keyboard.press("Escape")
    expect(page.locator("#shortcuts")).to_be_hidden()
    expect(page.locator("#sort-thrust")).to_be_focused()


def test_editing_and_resolving_a_conflict_with_the_keyboard(page, live_server):
    seed(live_server.url)
    page.goto(page.url_of())
    tab_to(page, "#engine-1 .title a")
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Edit engine #1")
    # Someone else saves the engine while this page is open: a new title and thrust.
    requests.patch(f"{live_server.url}/api/engines/1", json={"title": "Main (theirs)", "thrust": 7}, timeout=5)
    tab_to(page, "#title")
    page.keyboard.press("Control+A")
    page.keyboard.type("Main (mine)")
    page.keyboard.press("Enter")
    expect(page.locator(".conflict")).to_contain_text("Someone else changed this engine while you were editing it.")
    expect(page.locator("#title-theirs")).to_be_focused()  # the first choice
    assert page.input_value("#thrust") == "7"  # only they changed the thrust: theirs, merged by itself
    page.screenshot(path=str(OUTPUT / "edit-conflict.png"), full_page=True)
    assert engine(live_server.url, 1)["title"] == "Main (theirs)"
    page.keyboard.press("ArrowDown")  # "Yours: Main (mine)"
    tab_to(page, "button.primary")
    page.keyboard.press("Enter")
    expect(spoken(page)).to_have_text("Saved “Main (mine)”.")
    assert page.evaluate("document.activeElement.closest('tr').id") == "engine-1"  # the row just changed
    assert (engine(live_server.url, 1)["title"], engine(live_server.url, 1)["thrust"]) == ("Main (mine)", 7)


def test_deleting_with_the_keyboard_asks_first_then_says_what_was_deleted(page, live_server):
    seed(live_server.url)
    page.goto(page.url_of())
    tab_to(page, "#engine-2 a.danger")
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("Delete “Ракета-носитель”?")
    expect(page.locator("a.button", has_text="Cancel")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(spoken(page)).to_have_text("Deleted “Ракета-носитель”.")
    expect(page.locator("#messages")).to_be_focused()
    assert requests.get(f"{live_server.url}/api/engines/2", timeout=5).status_code == 404


def test_importing_shows_problems_at_the_top_and_a_reload_posts_nothing(page, live_server, tmp_path):
    seed(live_server.url)
    bad, good = tmp_path / "bad.csv", tmp_path / "good.csv"
    bad.write_text("title,thrust\nFine,1\nBroken,-1\n")
    good.write_text('title,thrust\nImported A,"1,200"\nImported B,1 500\n')
    page.goto(page.url_of())
    page.set_input_files("#import-file", str(bad))
    tab_to(page, ".import-form button")
    page.keyboard.press("Enter")
    expect(page.locator(".problems")).to_contain_text("Line 3, thrust: Thrust must be between 0 and 2,147,483,647.")
    expect(page.locator("#messages")).to_be_focused()
    expect(page.locator("#alert")).to_contain_text("Nothing was imported from “bad.csv”.")
    page.screenshot(path=str(OUTPUT / "import-problems.png"))
    page.reload()  # a GET: nothing is posted again, and the problems were said once
    expect(page.locator(".problems")).to_have_count(0)
    page.set_input_files("#import-file", str(good))
    tab_to(page, ".import-form button")
    page.keyboard.press("Enter")
    expect(page.locator("tr.new")).to_have_count(2)
    assert page.evaluate("document.activeElement.closest('tr').id") == "engine-7"
    assert page.locator("#list-heading").inner_text() == "7–8 of 8 engines"


def test_a_change_made_by_another_process_appears_without_a_reload_keeping_what_is_typed(page, live_server):
    seed(live_server.url)
    statuses = []
    page.on("response", lambda response: "/api/state" in response.url and statuses.append(response.status))
    page.goto(page.url_of())
    page.evaluate("window.notReloaded = true")
    tab_to(page, "#thrust-1")
    page.keyboard.press("Control+A")
    page.keyboard.type("99")  # typed, not saved
    for _ in range(50):  # idle, each poll is a 304
        if statuses.count(304) >= 2:
            break
        page.wait_for_timeout(200)
    assert statuses.count(304) >= 2 and set(statuses) == {304}
    other = LiveServer(live_server.instance)  # a second Engines on the same database file
    try:
        requests.post(f"{other.url}/api/engines", json={"title": "Added elsewhere", "thrust": 5}, timeout=5)
        requests.patch(f"{other.url}/api/engines/1", json={"thrust": 42}, timeout=5)
        requests.patch(f"{other.url}/api/engines/5", json={"title": "Vernier (renamed)"}, timeout=5)
    finally:
        other.stop()
    # The page polls every second, so these show within about that; the
    # test gives them 10 s, for a machine busy with other work.
    expect(page.locator("#engine-7 .title")).to_have_text("Added elsewhere", timeout=10_000)
    expect(page.locator("#engine-5 .title")).to_have_text("Vernier (renamed)", timeout=10_000)
    expect(page.locator("#list-heading")).to_have_text("7 engines")
    assert page.title() == "7 engines · Engines"
    assert page.input_value("#thrust-1") == "99" and focused(page) == "thrust-1"
    assert page.evaluate("window.notReloaded") is True
    page.keyboard.press("Escape")  # puts back the thrust saved now, which came meanwhile
    expect(page.locator("#thrust-1")).to_have_value("42")


# -- the layout ------------------------------------------------------------------------------

def rows_in_view(page) -> int:
    return page.evaluate("""[...document.querySelectorAll('#rows tr')].filter(row => {
        const box = row.getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight; }).length""")


def test_the_compact_list_shows_15_rows_at_1100x760_and_one_line_a_row_at_800x600(browser, live_server):
    seed(live_server.url, [(f"Engine {i:03d} with a title of a few words", i * 1000) for i in range(1, 41)])
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    assert rows_in_view(page) >= 15
    page.screenshot(path=str(OUTPUT / "list-1100x760.png"))
    page.set_viewport_size({"width": 800, "height": 600})
    # Every control of a row on one line: the thrust box, Set, Edit and Delete share a line.
    spreads = page.evaluate("""[...document.querySelectorAll('#rows tr')].map(row => {
        const middles = [...row.querySelectorAll('input[name=thrust], button, .row-actions a')]
            .map(e => e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2);
        return Math.max(...middles) - Math.min(...middles); })""")
    assert max(spreads) < 8  # a wrapped control would be a line (20 px or more) lower
    heights = page.evaluate("[...document.querySelectorAll('#rows tr')].map(r => r.getBoundingClientRect().height)")
    assert max(heights) < 40
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    assert rows_in_view(page) >= 8
    page.screenshot(path=str(OUTPUT / "list-800x600.png"))
    context.close()


def test_on_a_phone_rows_are_cards_and_nothing_overflows(browser, live_server):
    seed(live_server.url, ENGINES + [("Supercalifragilistic expialidocious engine", 10)])
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    outside = page.evaluate("""[...document.querySelectorAll('#rows tr')].flatMap(row => {
        const card = row.getBoundingClientRect();
        return [...row.querySelectorAll('a, input:not([type=hidden]), button')].filter(e => {
            const box = e.getBoundingClientRect();
            return box.left < card.left || box.right > card.right; }).map(e => row.id + ' ' + e.textContent); })""")
    assert outside == []
    # No word of a title is broken over two lines.
    broken = page.evaluate("""[...document.querySelectorAll('#rows .title a')].flatMap(link => {
        const words = [], text = link.firstChild, range = document.createRange();
        for (const match of text.textContent.matchAll(/\\S+/g)) {
            range.setStart(text, match.index); range.setEnd(text, match.index + match[0].length);
            if (range.getClientRects().length > 1) words.push(match[0]); }
        return words; })""")
    assert broken == []
    page.screenshot(path=str(OUTPUT / "list-390x844.png"), full_page=True)
    context.close()


def test_the_dark_theme_follows_the_system(browser, live_server):
    context = browser.new_context(viewport={"width": 1100, "height": 760}, color_scheme="dark")
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(18, 20, 24)"
    context.close()


# -- axe: WCAG 2.1 AA, every state, both themes, wide and narrow ---------------------------------

def states(page, url: str):
    """Visit each state of each page; yields its name once it is shown."""
    page.goto(f"{url}/?q=nothing-like-it")
    yield "search-without-matches"
    page.goto(f"{url}/?q=engine&per_page=25")
    yield "search-with-matches"
    page.goto(f"{url}/?sort=-thrust&per_page=100&new=3")
    yield "list-full"
    page.locator("#thrust-3").fill("-1")
    page.locator("#thrust-3").press("Enter")
    expect(page.locator("#thrust-3-note")).to_be_visible()
    page.locator("#thrust-2").fill("5")
    page.locator("#thrust-2").press("Enter")
    expect(page.locator("#thrust-2-note")).to_have_text("Saved")
    yield "thrust-error-and-saved"
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_be_visible()
    yield "shortcuts-open"
    page.goto(f"{url}/engines/1/edit")
    yield "edit"
    requests.patch(f"{url}/api/engines/1", json={"title": f"Theirs {page.viewport_size['width']}"}, timeout=5)
    page.fill("#title", "Mine")
    page.press("#title", "Enter")
    expect(page.locator(".conflict")).to_be_visible()
    yield "conflict"
    page.goto(f"{url}/engines/2/delete")
    yield "delete"
    page.goto(f"{url}/engines/1/history")
    yield "history"
    requests.delete(f"{url}/api/engines/4", timeout=5)  # a 404 after the first run: deleted already
    page.goto(f"{url}/engines/4/history")
    yield "history-of-a-deleted-engine"
    page.goto(f"{url}/deleted")
    yield "recently-deleted"
    page.goto(f"{url}/")
    page.set_input_files("#import-file", files=[{"name": "bad.csv", "mimeType": "text/csv",
                                                  "buffer": b"title,thrust\nA,-1\nB,x\n"}])
    page.click(".import-form button")
    expect(page.locator(".problems")).to_be_visible()
    yield "import-problems"
    page.goto(f"{url}/?sort=colour")
    yield "error-400"
    page.goto(f"{url}/engines/9999/edit")
    yield "error-404"


def test_axe_finds_no_wcag_21_aa_violation_in_any_state_theme_or_size(browser, tmp_path):
    axe = Axe()
    empty = LiveServer(tmp_path / "empty")
    full = LiveServer(tmp_path / "full")
    try:
        seed(full.url, ENGINES + [(f"Engine {i:03d}", i * 37) for i in range(1, 60)])
        violations = {}
        for scheme in ("light", "dark"):
            for width, height in [(1100, 760), (390, 844)]:
                # axe-core is injected into the page: a context that lets it past the CSP.
                context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                              bypass_csp=True)
                page = context.new_page()
                page.goto(f"{empty.url}/")
                for name in itertools.chain(["list-empty"], states(page, full.url)):
                    result = axe.run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}})
                    key = f"{name}-{scheme}-{width}x{height}"
                    passed = {rule["id"] for rule in result.response["passes"]}
                    assert {"color-contrast", "label", "document-title"} <= passed | {
                        rule["id"] for rule in result.response["inapplicable"]}, key
                    page.screenshot(path=str(OUTPUT / f"axe-{key}.png"), full_page=True)
                    if result.violations_count:
                        violations[key] = result.generate_report()
                context.close()
        assert violations == {}, "\n".join(violations.values())
    finally:
        empty.stop()
        full.stop()


def test_output_folder_is_ignored_by_git():
    assert "/tests/output/" in Path(ROOT / ".gitignore").read_text()


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


def test_undo_in_the_message_takes_back_a_delete_with_the_keyboard(page, live_server):
    seed(live_server.url)
    page.goto(page.url_of())
    tab_to(page, "#engine-1 a.danger")
    page.keyboard.press("Enter")
    expect(page.locator("#delete-heading")).to_be_visible()
    tab_to(page, "button.danger", back=True)
    page.keyboard.press("Enter")
    expect(page.locator(".flash .message")).to_have_text("Deleted “Main”.")
    expect(spoken(page)).to_contain_text("Deleted “Main”.")
    assert page.locator("#engine-1").count() == 0
    # The page puts the focus on the message once it has loaded: Tab from there, not from the top.
    expect(page.locator("#messages")).to_be_focused()
    assert tab_to(page, ".flash button") <= 2  # the Undo is next to the message, where the focus is
    page.keyboard.press("Enter")
    expect(page.locator(".flash .message")).to_have_text("Restored “Main”.")
    expect(page.locator("#engine-1 td.title")).to_have_text("Main")
    assert engine(live_server.url, 1)["version"] == 3


def test_a_thrust_set_in_its_row_offers_undo_at_the_top(page, live_server):
    seed(live_server.url)
    page.goto(page.url_of())
    tab_to(page, "#thrust-5")
    page.keyboard.press("Control+A")
    page.keyboard.type("70000")
    page.keyboard.press("Enter")
    expect(page.locator("#thrust-5-note")).to_have_text("Saved")
    expect(page.locator(".flash .message")).to_have_text("“Vernier” thrust set to 70,000.")
    page.locator(".flash").get_by_role("button", name="Undo").press("Enter")
    expect(page.locator(".flash .message")).to_have_text("“Vernier” is back to thrust 60,000, as at version 1.")
    expect(page.locator("#thrust-5")).to_have_value("60,000")
    history = requests.get(f"{live_server.url}/api/engines/5/history", timeout=5).json()["history"]
    assert [(h["version"], h["change"], h["thrust"]) for h in history] == \
        [(3, "revert", 60_000), (2, "update", 70_000), (1, "create", 60_000)]


def test_a_deleted_engine_is_restored_from_recently_deleted_with_the_keyboard(page, live_server):
    seed(live_server.url)
    requests.delete(f"{live_server.url}/api/engines/2", timeout=5)
    page.goto(page.url_of())
    tab_to(page, ".bar-nav a")
    page.keyboard.press("Enter")
    expect(page).to_have_title("Recently deleted · Engines")
    tab_to(page, "#deleted-2 button")
    page.keyboard.press("Enter")
    expect(page.locator(".flash .message")).to_have_text("Restored “Ракета-носитель”.")
    assert engine(live_server.url, 2)["thrust"] == 820_000
