"""Regenerate the README's screenshots from a demo database.

    .venv/bin/python docs/make_screenshots.py

Starts Engines (`engines.py --serve`) on a free port, with a home folder and an
instance folder of its own in a temporary folder (so the page shows
`~/.local/share/Engines/…`, as on a user's machine, and no path of this
checkout), fills it with real engines over the JSON API, and takes the
screenshots with Debian's Chromium: docs/screenshot.png (light, 1100x760),
docs/screenshot-dark.png (dark) and docs/screenshot-narrow.png (390x844).
Then, where Xvfb and pywebview with GTK are installed (tests/run installs
them), it opens Engines' window on a screen of its own for docs/window.png,
driven by the window tests' tests/window_scripts/look_and_close.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
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
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def start_engines(home: Path) -> tuple[subprocess.Popen, str]:
    instance = home / ".local" / "share" / "Engines"
    process = subprocess.Popen([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                                "--instance", str(instance)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "HOME": str(home)})
    url = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline()).group(0)
    return process, url


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
            for title, thrust in DEMO_ENGINES:
                requests.post(f"{url}/api/engines", json={"title": title, "thrust": thrust}, timeout=10)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                shots = [("screenshot.png", "light", 1100, 760), ("screenshot-dark.png", "dark", 1100, 760),
                         ("screenshot-narrow.png", "light", 390, 844)]
                for name, scheme, width, height in shots:
                    page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=scheme)
                    page.goto(f"{url}/?sort=-thrust&q=")
                    page.screenshot(path=str(DOCS / name))
                    page.close()
                browser.close()
        finally:
            process.terminate()
            process.wait(15)
        wrote = [f"docs/{name}" for name, *_ in shots]
        if window_screenshot(Path(folder), DOCS / "window.png"):
            wrote.append("docs/window.png")
    print("wrote", ", ".join(wrote))


if __name__ == "__main__":
    main()
