"""The standalone binary, built by `pyinstaller build.spec` once per test
session and run as a person would: it keeps their engines in their user
data folder from one run to the next, and opens its window by default."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import WindowedEngines, need, need_a_window, start_onefile_build


@pytest.fixture(scope="session")
def binary() -> Path:
    """dist/engines, built from build.spec into a temporary folder (the build
    starts when the tests are collected: conftest.start_onefile_build)."""
    need(importlib.util.find_spec("PyInstaller") is not None, "PyInstaller is not installed (requirements-dev.txt)")
    need(shutil.which("objdump") is not None, "binutils is not installed (Debian package binutils)")
    need(shutil.which("patchelf") is not None, "patchelf is not installed (Debian package patchelf)")
    build = start_onefile_build()
    assert build["process"].wait(timeout=900) == 0, build["log"].read_text()[-5000:]
    return build["work"] / "dist" / "engines"


def user_env(tmp_path: Path, **extra: str) -> dict:
    """A user's environment whose data folder is under tmp_path."""
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), **extra}


class RunningBinary:
    """The binary serving (--serve, --browser) on a free port; `on` is a
    command prefix to run it with (minimal_debian)."""

    def __init__(self, binary: Path, mode: str, env: dict, cwd: Path, on: list[str] = ()):
        cwd.mkdir(exist_ok=True)
        self.process = subprocess.Popen([*on, str(binary), mode, "--port", "0"], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            self.process.kill()
            pytest.fail(f"no URL printed: {line!r} {self.process.stderr.read()}")
        self.url = match.group(0)

    def stop(self) -> int:
        """SIGTERM, then its exit code; what it said on stderr is then in self.errors."""
        self.process.send_signal(signal.SIGTERM)
        try:
            _, self.errors = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        return self.process.returncode


def test_the_binary_keeps_engines_in_the_user_data_folder_from_one_run_to_the_next(binary, tmp_path):
    env = user_env(tmp_path)
    first = RunningBinary(binary, "--serve", env, cwd=tmp_path / "here")
    created = requests.post(f"{first.url}/api/engines", json={"title": "Main", "thrust": 1200}, timeout=5)
    assert created.status_code == 201
    assert first.stop() == 0
    assert (tmp_path / "data" / "Engines" / "engines.sqlite3").is_file()
    assert list((tmp_path / "here").iterdir()) == []  # nothing in the current folder

    second = RunningBinary(binary, "--serve", env, cwd=tmp_path / "elsewhere")
    try:
        found = requests.get(f"{second.url}/api/engines", timeout=5).json()["engines"]
        assert found == [created.json()]
        assert (found[0]["id"], found[0]["title"], found[0]["thrust"]) == (1, "Main", 1200)
    finally:
        assert second.stop() == 0


def test_the_binary_opens_its_window_by_default_with_the_engines_of_the_last_run(binary, display, tmp_path):
    need_a_window()
    server = RunningBinary(binary, "--serve", user_env(tmp_path), cwd=tmp_path)
    requests.post(f"{server.url}/api/engines", json={"title": "Main", "thrust": 1200}, timeout=5)
    assert server.stop() == 0

    run = WindowedEngines([str(binary)], "look_and_close.py", display, tmp_path / "run",
                          env=user_env(tmp_path), screenshot="binary-window.png")
    try:
        seen = run.result("seen.json")
        assert run.wait() == 0
    finally:
        run.close()
    assert seen["loaded"] is True
    assert seen["title"] == "1 engine · Engines"
    assert seen["heading"] == "Add an engine"
    assert seen["listed"] == ["Main"]
    assert seen["size"] == "1100x760"
    assert seen["colours"] > 100
    assert "Icon (256 x 256)" in seen["properties"]  # static/engines.png, from the bundle


def test_the_binary_without_stdout_and_stderr_starts_and_logs_to_its_file(binary, tmp_path):
    """As a windowed build is started on Windows or macOS: sys.stdout and
    sys.stderr are None (here: file descriptors 1 and 2 are closed)."""
    log = tmp_path / "data" / "Engines" / "engines.log"
    process = subprocess.Popen(["sh", "-c", 'exec "$0" --serve --port 0 >&- 2>&-', str(binary)],
                               env=user_env(tmp_path), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "running at" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        url = re.search(r"http://127\.0\.0\.1:\d+", log.read_text()).group(0)
        assert requests.get(f"{url}/api/health", timeout=5).json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert log.read_text().splitlines()[-1].endswith("INFO engines: Engines stopped.")


def test_the_browser_started_by_the_binary_gets_the_users_library_path(binary, tmp_path):
    """PyInstaller's bootloader points LD_LIBRARY_PATH into the bundle; the
    browser must load its own libraries, with the user's path."""
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\necho "$1 ${LD_LIBRARY_PATH-unset}" > "$0.opened"\n')
    browser.chmod(0o755)
    env = user_env(tmp_path, BROWSER=str(browser), LD_LIBRARY_PATH="/opt/users/lib")
    running = RunningBinary(binary, "--browser", env, cwd=tmp_path)
    try:
        opened = Path(f"{browser}.opened")
        deadline = time.monotonic() + 15
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().split() == [f"{running.url}/", "/opt/users/lib"]
    finally:
        assert running.stop() == 0


# The smallest Debian has no WebKitGTK, GTK or GLib, nor SQLite or libffi
# (which WebKitGTK links, and which the binary therefore carries).


def test_without_webkitgtk_the_binary_serves(binary, minimal_debian, tmp_path):
    running = RunningBinary(binary, "--serve", user_env(tmp_path), cwd=tmp_path / "here", on=minimal_debian)
    try:
        assert requests.get(f"{running.url}/api/health", timeout=5).json()["status"] == "ok"
        created = requests.post(f"{running.url}/api/engines", json={"title": "Main", "thrust": 1200}, timeout=5)
        assert created.status_code == 201
        assert "Main" in requests.get(running.url, timeout=5).text
    finally:
        assert running.stop() == 0
    assert running.errors == ""


def test_without_webkitgtk_the_window_says_so_in_one_line_and_opens_the_browser(
        binary, minimal_debian, display, tmp_path):
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\necho "$1" > "$0.opened"\n')
    browser.chmod(0o755)
    env = user_env(tmp_path, DISPLAY=display, BROWSER=str(browser))
    running = RunningBinary(binary, "--window", env, cwd=tmp_path / "here", on=minimal_debian)
    try:
        assert requests.get(f"{running.url}/api/health", timeout=5).json()["status"] == "ok"
        opened = Path(f"{browser}.opened")
        deadline = time.monotonic() + 15
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().strip() == f"{running.url}/"
    finally:
        assert running.stop() == 0
    assert running.errors == (
        "engines: cannot open a window: WebKitGTK is not installed "
        "(Debian, Ubuntu: sudo apt-get install gir1.2-webkit2-4.1). Opening the browser instead.\n")
