"""The real thing: `python engines.py` serving over real HTTP on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import requests

import engines
from conftest import ROOT, LiveServer


def run_engines(*args, timeout=30):
    return subprocess.run([sys.executable, str(ROOT / "engines.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_serve_write_over_http_stop_with_sigterm_and_find_the_data_again(tmp_path):
    instance = tmp_path / "instance"
    server = LiveServer(instance)
    api = f"{server.url}/api/engines"
    assert requests.get(f"{server.url}/api/health", timeout=5).json()["status"] == "ok"
    main = requests.post(api, json={"title": "Main", "thrust": 100}, timeout=5)
    assert main.status_code == 201
    spare = requests.post(api, json={"title": "Spare"}, timeout=5).json()
    assert requests.patch(f"{api}/{main.json()['id']}", json={"thrust": 250}, timeout=5).status_code == 200
    assert requests.delete(f"{api}/{spare['id']}", timeout=5).status_code == 204
    assert "Main" in requests.get(server.url, timeout=5).text
    assert server.stop(signal.SIGTERM) == 0

    again = LiveServer(instance)
    try:
        body = requests.get(f"{again.url}/api/engines", timeout=5).json()
        assert [{name: e[name] for name in ("id", "title", "thrust", "version")} for e in body["engines"]] \
            == [{"id": 1, "title": "Main", "thrust": 250, "version": 2}]
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_a_port_in_use_is_a_one_line_error_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_engines("--serve", "--port", str(port), "--instance", str(tmp_path / "i"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_instance_folder_that_cannot_be_created_is_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_engines("--serve", "--port", "0", "--instance", str(blocker / "instance"))
    assert result.returncode == 2
    assert result.stderr.startswith("engines: cannot create the instance folder")
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag():
    result = run_engines("--help")
    assert result.returncode == 0
    for flag in ("--serve", "--browser", "--port", "--host", "--instance"):
        assert flag in result.stdout


def test_version_prints_the_version_and_starts_nothing(tmp_path):
    result = run_engines("--version", "--instance", str(tmp_path / "instance"))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"engines {engines.__version__}\n", "")
    assert not (tmp_path / "instance").exists()


def test_the_server_is_waitress_never_the_werkzeug_debugger(live_server):
    response = requests.get(f"{live_server.url}/api/health", timeout=5)
    assert response.headers["Server"] == "Engines"
    response = requests.get(f"{live_server.url}/console", timeout=5)
    assert response.status_code == 404
