"""Regenerate the README's screenshots from a demo database.

    .venv/bin/python docs/make_screenshots.py

Starts Engines (`engines.py --serve`) on a free port, with a home folder and an
instance folder of its own in a temporary folder (so the page shows
`~/.local/share/Engines/…`, as on a user's machine, and no path of this
checkout), fills it with real engines over the JSON API, and takes the
screenshots with Debian's Chromium: docs/screenshot.png (light, 1100x760),
docs/screenshot-dark.png (dark), docs/screenshot-narrow.png (390x844) and
docs/history.png (the History page of an engine whose thrust changed over
the years: its records are dated back in the demo database, since they are
all made in the same second here).
Then, where Xvfb and pywebview with GTK are installed (tests/run installs
them), it opens Engines' window on a screen of its own for docs/window.png,
driven by the window tests' tests/window_scripts/look_and_close.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Real engines (thrust in newtons, rounded), in the scripts of the countries that built them.
DEMO_ENGINES = [
    ("Merlin 1D", 845_000), ("Raptor 2", 2_300_000), ("RS-25", 2_279_000), ("F-1", 7_770_000),
    ("RD-180", 4_152_000), ("НК-33", 1_638_000), ("РД-171М", 7_904_000), ("长征五号 YF-100", 1_340_000),
    ("YF-77 氢氧发动机", 700_000), ("LE-9 エンジン", 1_471_000), ("Vulcain 2", 1_359_000), ("Vinci", 180_000),
    ("RL10", 110_000), ("BE-4", 2_400_000), ("محرك المرحلة الأولى", 420_000), ("מנוע ראשי", 330_000),
    ("Vikas", 805_000), ("CE-20", 200_000), ("Rutherford", 25_000), ("SuperDraco", 71_000), ("Draco", 400),
    ("R-4D", 490), ("MR-103 attitude thruster", 1), ("Cold-gas thruster (spare)", 0), ("Archimedes", 0),
    ("J-2", 1_033_000), ("RD-0124", 294_000), ("Aeon 1", 162_000),
]
# One engine's thrust over the years, oldest first (its last is its thrust in DEMO_ENGINES), and how many
# days before today each version was made.
HISTORY_ENGINE = "Raptor 2"
HISTORY_THRUSTS = [(1_700_000, 1400), (1_810_000, 1150), (1_850_000, 900), (2_000_000, 700), (1_900_000, 520),
                   (2_200_000, 300), (2_300_000, 90)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def start_engines(home: Path) -> tuple[subprocess.Popen, str]:
    instance = home / ".local" / "share" / "Engines"
    process = subprocess.Popen([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                                "--instance", str(instance)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "HOME": str(home)})
    url = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline()).group(0)
    return process, url


def add_demo_engines(url: str, instance: Path) -> int:
    """The demo engines, over the API; HISTORY_ENGINE changed through its
    HISTORY_THRUSTS, then its records dated back. Returns its id."""
    history_id = 0
    for title, thrust in DEMO_ENGINES:
        first = HISTORY_THRUSTS[0][0] if title == HISTORY_ENGINE else thrust
        engine = requests.post(f"{url}/api/engines", json={"title": title, "thrust": first}, timeout=10).json()
        if title == HISTORY_ENGINE:
            history_id = engine["id"]
            for later, _ in HISTORY_THRUSTS[1:]:
                requests.patch(f"{url}/api/engines/{history_id}", json={"thrust": later}, timeout=10)
    with closing(sqlite3.connect(instance / "engines.sqlite3")) as connection:
        ids = [row[0] for row in connection.execute(
            "SELECT id FROM engine_history WHERE engine_id = ? ORDER BY id", (history_id,))]
        for record_id, (_, days) in zip(ids, HISTORY_THRUSTS, strict=True):
            connection.execute("UPDATE engine_history SET changed_at = strftime('%Y-%m-%d %H:%M:%f000', changed_at,"
                               f" '-{days} days') WHERE id = ?", (record_id,))
        connection.commit()
    return history_id


def window_screenshot(home: Path, target: Path) -> bool:
    """Engines' window on the demo database, on an Xvfb screen of its own; False where it cannot open."""
    if shutil.which("Xvfb") is None or shutil.which("import") is None:
        return False
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        display = ready.readline().strip()
    try:
        env = {**os.environ, "HOME": str(home), "DISPLAY": f":{display}", "WINDOW_TEST_OUTPUT": str(home),
               "WINDOW_TEST_SCREENSHOT": str(target),
               "ENGINES_WINDOW_TEST_SCRIPT": str(ROOT / "tests" / "window_scripts" / "look_and_close.py")}
        env.pop("WAYLAND_DISPLAY", None)
        window = subprocess.run([sys.executable, str(ROOT / "engines.py"), "--window", "--port", "0",
                                 "--instance", str(home / ".local" / "share" / "Engines")],
                                env=env, capture_output=True, text=True, timeout=120)
        return window.returncode == 0 and (home / "seen.json").exists()
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="engines-demo-") as folder:
        process, url = start_engines(Path(folder))
        try:
            history_id = add_demo_engines(url, Path(folder) / ".local" / "share" / "Engines")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                shots = [("screenshot.png", "light", 1100, 760), ("screenshot-dark.png", "dark", 1100, 760),
                         ("screenshot-narrow.png", "light", 390, 844)]
                for name, scheme, width, height in shots:
                    page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=scheme)
                    page.goto(f"{url}/?sort=-thrust&q=")
                    page.screenshot(path=str(DOCS / name))
                    page.close()
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                page.goto(f"{url}/engines/{history_id}/history")
                page.screenshot(path=str(DOCS / "history.png"))
                page.close()
                browser.close()
        finally:
            process.terminate()
            process.wait(15)
        wrote = [f"docs/{name}" for name, *_ in shots] + ["docs/history.png"]
        if window_screenshot(Path(folder), DOCS / "window.png"):
            wrote.append("docs/window.png")
    print("wrote", ", ".join(wrote))


if __name__ == "__main__":
    main()
