"""Run inside `engines --window` as its WINDOW_TEST_SCRIPT, with `window`:
export the engines as CSV from the page, answering the system's Save dialog
as a person would (xdotool types the file's path and presses Return), read
the message the page shows; reload with F5; see an engine that a script adds
over the API appear without a reload; then resize and move the window and
close it.

Writes done.json into $WINDOW_TEST_OUTPUT.
"""

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

OUTPUT = Path(os.environ["WINDOW_TEST_OUTPUT"])


def report(name: str, data: dict) -> None:
    """Write data as JSON into $WINDOW_TEST_OUTPUT/name, all at once."""
    path = OUTPUT / name
    path.with_suffix(".tmp").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


def read(expression: str):
    """The value of a JavaScript expression in the page (run_js: evaluate_js needs eval(), which the CSP refuses)."""
    return json.loads(window.run_js(f"JSON.stringify({expression})"))


def xdotool(*args: str) -> str:
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=30).stdout.strip()


def until(condition, seconds: float = 30):
    """Wait until condition() is true (or give up); its last value."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


seen = {}
try:
    seen["loaded"] = window.events.loaded.wait(60)
    url = window.get_current_url()

    def save_as(link: str, target: Path, screenshot: str | None = None) -> tuple[bool, str, str]:
        """Click a download link; in the Save dialog, type the path and press Return.
        Whether the dialog came, then the page's message and what was read out."""
        window.run_js("document.querySelector('#messages')?.remove();"
                      f"document.querySelector('a[download][href$=\"{link}\"]').click()")
        dialog = until(lambda: xdotool("search", "--name", "^Save file$").split("\n")[0])
        if dialog and screenshot:
            time.sleep(1)  # painted
            subprocess.run(["import", "-window", "root", screenshot], timeout=30)
        if dialog:
            xdotool("windowactivate", "--sync", dialog)
            xdotool("windowfocus", "--sync", dialog)
        xdotool("key", "--clearmodifiers", "ctrl+a")
        xdotool("type", "--delay", "20", str(target))
        xdotool("key", "Return")
        message = until(lambda: read("document.querySelector('#messages')?.textContent.trim() || ''"))
        return bool(dialog), message, until(lambda: read("document.querySelector('#live').textContent"))

    # Export CSV and Download a backup: the Save dialog asks where.
    target = OUTPUT / "exported.csv"
    seen["dialog"], seen["message"], seen["announced"] = save_as(
        "engines.csv", target, os.environ.get("WINDOW_TEST_SCREENSHOT"))
    seen["saved"] = target.read_text(encoding="utf-8") if target.exists() else None
    backup = OUTPUT / "backup.sqlite3"
    seen["backup_dialog"], seen["backup_message"], _ = save_as("/api/backup", backup)
    seen["backup_saved"] = backup.read_bytes()[:16].decode("latin-1") if backup.exists() else None

    # F5 reloads the page.
    engines_window = xdotool("search", "--name", "^Engines$").split("\n")[0]
    window.run_js("window.notReloaded = true")
    window.events.loaded.clear()
    xdotool("windowactivate", "--sync", engines_window)
    xdotool("windowfocus", "--sync", engines_window)
    xdotool("key", "--window", engines_window, "F5")
    seen["reloaded"] = window.events.loaded.wait(30) and read("window.notReloaded === undefined")

    # A script adds an engine: it appears without a reload.
    window.run_js("window.notReloaded = true")
    request = urllib.request.Request(f"{url}api/engines", data=b'{"title": "Added by a script", "thrust": 7}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    seen["live"] = until(lambda: read("[...document.querySelectorAll('#rows .title')].map(c => c.textContent.trim())"
                                      ".includes('Added by a script')"))
    seen["live_without_reload"] = read("window.notReloaded === true")

    # Resized and moved: remembered for the next start.
    window.resize(900, 650)
    window.move(40, 30)
    time.sleep(1)
finally:
    report("done.json", seen)
    window.destroy()
