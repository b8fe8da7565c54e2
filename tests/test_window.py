"""The window: `python engines.py --window` under Xvfb, each run a process of
its own, driven by a script of tests/window_scripts/ (the test-only
WINDOW_TEST_SCRIPT setting) through pywebview's run_js."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests

import engines
from conftest import ROOT, WindowedEngines, add_engines, need, need_a_window

ENGINES = [sys.executable, str(ROOT / "engines.py")]


@pytest.fixture
def windowed(tmp_path, display):
    """Start `python engines.py --window` on the test's display, driven by a window script."""
    need_a_window()
    runs = []

    def start(script: str, screenshot: str | None = None, env: dict | None = None) -> WindowedEngines:
        command = [*ENGINES, "--window", "--port", "0", "--instance", str(tmp_path / "instance")]
        runs.append(WindowedEngines(command, script, display, tmp_path / f"run-{len(runs)}",
                                    screenshot=screenshot, env=env))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def process_ended(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` is gone (or a zombie no one has reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_the_window_opens_titled_engines_and_shows_the_engines(windowed, tmp_path):
    app = engines.create_app(instance_path=tmp_path / "instance")
    add_engines(app, [{"title": "Main", "thrust": 1_500_000}, {"title": "Ракета-носитель", "thrust": 820_000},
                      {"title": "Vernier", "thrust": 60_000}])
    with app.app_context():
        engines.db.engine.dispose()
    run = windowed("look_and_close.py", screenshot="window.png")
    seen = run.result("seen.json")
    assert run.wait() == 0
    assert seen["loaded"] is True
    assert seen["title"] == "3 engines · Engines"  # the window itself stays titled Engines
    assert seen["dark"] is False  # a desktop that says nothing of dark is light
    assert seen["heading"] == "Add an engine"
    assert seen["listed"] == ["Main", "Ракета-носитель", "Vernier"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", seen["url"])
    # The screenshot is of the X window named "Engines", at the default
    # size, once the page was painted on it (tests/output/window.png).
    assert seen["size"] == "1100x760"
    assert seen["colours"] > 100
    # It has the app's icon and cannot be made smaller than 800x600.
    assert "Icon (256 x 256)" in seen["properties"]
    assert "minimum size: 800 by 600" in seen["properties"]
    # Its class is the app id, the StartupWMClass of its desktop file.
    assert f'WM_CLASS(STRING) = "{engines.APP_ID}", "{engines.APP_ID}"' in seen["properties"]
    assert f"Engines is running at {seen['url']}" in run.output()[0]


def test_an_engine_added_in_the_window_is_in_the_database_file_once_it_is_closed(windowed, tmp_path):
    database = tmp_path / "instance" / "engines.sqlite3"
    app = engines.create_app(instance_path=tmp_path / "instance")
    with app.app_context():
        engines.db.engine.dispose()
    with closing(sqlite3.connect(database)) as db:  # WAL mode is kept in the file
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    run = windowed("add_engine_and_close.py")
    added = run.result("added.json")
    assert run.wait() == 0
    assert added["message"] == "Added “Ракета-носитель”."
    assert added["listed"] == "Ракета-носитель"
    # Every connection was closed, the last one checkpointing the WAL into the file.
    assert not Path(f"{database}-wal").exists()
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT title, thrust FROM engine").fetchall() == [("Ракета-носитель", 1200)]


def test_closing_the_window_ends_engines_with_exit_code_0_and_leaves_nothing_running(windowed):
    run = windowed("look_and_close.py")
    seen = run.result("seen.json")  # reported just before the script closes the window
    assert run.wait(timeout=15) == 0
    stdout, stderr = run.output()
    assert stdout.splitlines()[-1] == "Engines stopped."
    assert "Traceback" not in stderr
    port = int(re.search(r":(\d+)/$", seen["url"]).group(1))
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert seen["children"]  # WebKit's web and network processes...
    for pid in seen["children"]:
        assert process_ended(pid), f"process {pid} outlived Engines"  # ...ended with it


def test_export_asks_where_to_save_f5_reloads_a_script_s_engine_shows_and_the_window_is_remembered(
        windowed, tmp_path):
    need(shutil.which("xdotool") is not None, "xdotool is not installed (Debian package xdotool)")
    run = windowed("save_reload_and_resize.py", screenshot="window-save-dialog.png")
    done = run.result("done.json", timeout=180)
    assert run.wait() == 0
    # Export CSV opened the system's Save dialog; the file is where it was told, and the page says so.
    assert done["dialog"] is True
    saved_to = run.workdir / "exported.csv"
    assert done["message"] == f"Saved every engine as CSV to {saved_to}."
    assert done["announced"] == done["message"]
    assert done["saved"].startswith("id,title,thrust,version,updated_at\n")
    assert done["backup_dialog"] is True
    assert done["backup_message"] == f"Saved a backup to {run.workdir / 'backup.sqlite3'}."
    assert done["backup_saved"] == "SQLite format 3\x00"
    assert done["reloaded"] is True  # F5
    assert done["live"] is True and done["live_without_reload"] is True
    place = json.loads((tmp_path / "instance" / "window.json").read_text())
    assert (place["width"], place["height"], place["x"], place["y"]) == (900, 650, 40, 30)

    again = windowed("look_and_close.py", screenshot="window-remembered.png")
    seen = again.result("seen.json")
    assert again.wait() == 0
    assert seen["size"] == "900x650" and seen["corner"] == [40, 30]


def test_the_window_is_dark_when_the_desktop_prefers_dark(windowed, tmp_path):
    settings = tmp_path / "config" / "glib-2.0" / "settings"
    settings.mkdir(parents=True)
    (settings / "keyfile").write_text("[org/gnome/desktop/interface]\ncolor-scheme='prefer-dark'\n")
    run = windowed("look_and_close.py", screenshot="window-dark.png",
                   env={"GSETTINGS_BACKEND": "keyfile", "XDG_CONFIG_HOME": str(tmp_path / "config")})
    seen = run.result("seen.json")
    assert run.wait() == 0
    assert seen["dark"] is True
    assert seen["background"] == "rgb(18, 20, 24)"


def test_sigterm_closes_the_window_and_ends_engines_with_exit_code_0(windowed):
    run = windowed("wait_until_loaded.py")
    assert run.result("loaded.json") == {"loaded": True}
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(timeout=15) == 0
    assert run.output()[0].splitlines()[-1] == "Engines stopped."


# Where no window can be shown, --window says why in one line and serves in
# the browser. $BROWSER names the program Python's webbrowser starts: here
# one that notes the URL it was given.


def python_without(tmp_path: Path, display: str, *hidden: str) -> tuple[list[str], dict]:
    """A Python that cannot import the `hidden` packages, on `display`: the
    command, and an environment giving it this venv's packages less those."""
    packages = tmp_path / "site-packages"
    packages.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.split("-")[0].split(".")[0] not in hidden:
            (packages / entry.name).symlink_to(entry)
    return [sys.executable, "-S"], {**os.environ, "PYTHONPATH": str(packages), "DISPLAY": display}


@pytest.fixture
def no_display():
    env = {name: value for name, value in os.environ.items() if name not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return [sys.executable], env


@pytest.fixture
def no_gui_backend(tmp_path, display):
    return python_without(tmp_path, display, "gi", "pygtkcompat", "cairo")


@pytest.fixture
def no_pywebview(tmp_path, display):
    return python_without(tmp_path, display, "webview")


@pytest.mark.parametrize("situation, reason", [
    ("no_display", "there is no display (DISPLAY and WAYLAND_DISPLAY are not set)"),
    ("no_gui_backend", "You must have either QT or GTK with Python extensions installed"),
    ("no_pywebview", "pywebview is not installed"),
])
def test_without_a_window_engines_says_why_in_one_line_and_serves_in_the_browser(
        request, tmp_path, situation, reason):
    python, env = request.getfixturevalue(situation)
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\necho "$1" > "$0.opened"\n')
    browser.chmod(0o755)
    env["BROWSER"] = str(browser)
    process = subprocess.Popen(
        [*python, str(ROOT / "engines.py"), "--window", "--port", "0", "--instance", str(tmp_path / "instance")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)
        assert requests.get(f"{url}api/health", timeout=5).json()["status"] == "ok"
        opened = Path(f"{browser}.opened")
        deadline = time.monotonic() + 15
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().strip() == url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    stderr = process.stderr.read()
    assert stderr.count("\n") == 1
    assert stderr.startswith("engines: cannot open a window: ")
    assert reason in stderr and stderr.endswith("Opening the browser instead.\n")
    process.stdout.close()
    process.stderr.close()
