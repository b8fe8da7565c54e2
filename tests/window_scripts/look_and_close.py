"""Run inside `engines --window` as its WINDOW_TEST_SCRIPT, with `window`:
wait for the page, note what the window shows, take a screenshot of the
window once it is painted, then close the window as its close button does.

Writes seen.json into $WINDOW_TEST_OUTPUT; the screenshot goes to
$WINDOW_TEST_SCREENSHOT. Only the standard library: the frozen binary runs
this script too.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path


def report(name: str, data: dict) -> None:
    """Write data as JSON into $WINDOW_TEST_OUTPUT/name, all at once."""
    path = Path(os.environ["WINDOW_TEST_OUTPUT"]) / name
    path.with_suffix(".tmp").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


def read(expression: str):
    """The value of a JavaScript expression in the page. Not evaluate_js:
    pywebview runs that through eval(), which the app's Content-Security-Policy
    (no 'unsafe-eval') rightly refuses; run_js is not subject to it."""
    return json.loads(window.run_js(f"JSON.stringify({expression})"))


def child_processes() -> list[int]:
    """The processes this one started (WebKit's web and network processes)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.append(int(entry.name))
    return children


def window_id() -> str | None:
    """The X id of the window titled Engines, once it is on the screen."""
    # Not `import -window Engines`: that may pick GTK's hidden window named "engines".
    found = subprocess.run(["xwininfo", "-name", "Engines"], capture_output=True, text=True).stdout
    match = re.search(r"Window id: (0x[0-9a-f]+)", found)
    return match.group(1) if match else None


def screenshot_once_painted(path: str) -> tuple[int, str]:
    """Screenshot the window titled Engines until the page shows on it (a
    blank window has a colour or two, a page with text hundreds); returns
    the number of colours and the size, as WIDTHxHEIGHT."""
    colours, size = 0, ""
    for _ in range(150):
        xid = window_id()
        if xid and subprocess.run(["import", "-window", xid, path], capture_output=True).returncode == 0:
            colours, size = subprocess.run(["identify", "-format", "%k %wx%h", path],
                                           capture_output=True, text=True, check=True).stdout.split()
            if int(colours) > 100:
                break
        time.sleep(0.2)
    return int(colours), size


def window_properties() -> str:
    """What the window tells the window manager: its icon, size hints and class."""
    xid = window_id()
    icon = subprocess.run(["xprop", "-id", xid, "-len", "8", "_NET_WM_ICON"], capture_output=True, text=True)
    hints = subprocess.run(["xprop", "-id", xid, "WM_NORMAL_HINTS", "WM_CLASS"], capture_output=True, text=True)
    return icon.stdout + hints.stdout


def mapped_files(pids: list[int]) -> list[str]:
    """The files these processes have mapped into memory: every library and
    typelib they loaded, whether linked or opened at run time."""
    files = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                files.add(fields[5].removesuffix(" (deleted)"))
    return sorted(files)


seen = {}
try:
    seen["loaded"] = window.events.loaded.wait(60)
    seen["title"] = read("document.title")
    seen["heading"] = read("document.querySelector('h2').textContent")
    seen["listed"] = read(
        "[...document.querySelectorAll('table.engines td.title')].map(cell => cell.textContent.trim())")
    seen["url"] = window.get_current_url()
    seen["dark"] = read("matchMedia('(prefers-color-scheme: dark)').matches")
    seen["background"] = read("getComputedStyle(document.documentElement).backgroundColor")
    seen["children"] = child_processes()
    seen["mapped"] = mapped_files([os.getpid(), *seen["children"]])
    if os.environ.get("WINDOW_TEST_SCREENSHOT"):
        seen["colours"], seen["size"] = screenshot_once_painted(os.environ["WINDOW_TEST_SCREENSHOT"])
        seen["properties"] = window_properties()
        corner = subprocess.run(["xwininfo", "-id", window_id()], capture_output=True, text=True).stdout
        seen["corner"] = [int(n) for n in re.findall(r"Absolute upper-left [XY]:\s+(-?\d+)", corner)]
finally:
    report("seen.json", seen)
    window.destroy()
